"""The experiment schema: every TAO ReIdentificationNet spec field with TAO's default, and its rules.

A TAO spec file is merged over these dataclasses (see ``loader.py``), so an unknown key or a value of
the wrong type is caught before any work starts. Each field carries its help, choices, bounds and status
(:func:`~reid_tao.config.fields.spec_field`); validation, ``reid TASK --help`` and docs/spec_fields.md read
them from here. Choices written as "module:TABLE" are the keys of that implementation's table.
"""

from dataclasses import dataclass, field
from typing import Any

from reid_tao.config.fields import Bounds, spec_field

AT_LEAST_1 = Bounds(low=1)
NON_NEGATIVE = Bounds(low=0)
POSITIVE = Bounds(low=0, low_open=True)
PROBABILITY = Bounds(low=0, high=1)
MAX_INPUT_SIDE = 4096  # a spec or a checkpoint's stored config must not make the model allocate without limit
INPUT_SIDE = Bounds(low=1, high=MAX_INPUT_SIDE)
# Learning rates, their factors and weight decays: no schedule wants more than 10, and a value past float32
# (1e300) made the optimiser step raise a traceback instead of a one-line error.
RATE = Bounds(low=0, low_open=True, high=10)
RATE_OR_0 = Bounds(low=0, high=10)
MAX_FEAT_DIM = 65536
# Images are scaled to [0, 1]; a smaller std is a mistake (1e-320 passes "> 0" and is 0 in float32).
MIN_PIXEL_STD = 1e-6

BACKBONES = "reid_tao.model.backbones:BACKBONES"
ACCELERATORS = "reid_tao.engine.devices:ACCELERATORS"
PRECISIONS = "reid_tao.engine.precision:PRECISIONS"
TAO_B4 = "TAO declares it but never uses it"


def _unused_by_tao(default, what: str, instead: str | None = None):
    """A TransReID/SOLIDER option that TAO declares but never wires (TAO bug B4): rejected when changed."""
    return spec_field(default, help=what, status="unsupported", why=TAO_B4, instead=instead)


@dataclass
class ModelConfig:
    backbone: str = spec_field(
        "resnet_50",
        choices=BACKBONES,
        help=("feature extractor: ResNet 18/34 (BasicBlock, 512 channels), 50/101/152, or Swin tiny/small/base"),
    )
    last_stride: int = spec_field(1, bounds=AT_LEAST_1, help="stride of the last ResNet stage (1 doubles the map)")
    pretrain_choice: str = spec_field(
        "imagenet",
        choices="reid_tao.builders.pretrained:PRETRAINED_LOADERS",
        help=(
            "initial weights: imagenet (the backbone's official ImageNet weights), self (a reid_tao checkpoint in "
            'pretrained_model_path), "" (random)'
        ),
    )
    pretrained_model_path: str | None = spec_field(
        None, help=("local weights file; the load reports matched / missing tensors and fails when almost none match")
    )
    trust_weights_file: bool = spec_field(
        False,
        new=True,
        help=("load weight/checkpoint files that need full unpickling: runs code from the file (trusted files only)"),
    )
    input_channels: int = spec_field(3, choices=(3,), hint=" (images are RGB)", help="image channels")
    input_width: int = spec_field(128, bounds=INPUT_SIDE, help="network input width in pixels")
    input_height: int = spec_field(256, bounds=INPUT_SIDE, help="network input height in pixels")
    neck: str = spec_field(
        "bnneck",
        choices="reid_tao.model.baseline:NECKS",
        help=('bnneck: BatchNorm1d with frozen bias before the classifier; "": none'),
    )
    feat_dim: int = spec_field(
        256,
        bounds=Bounds(low=1, high=MAX_FEAT_DIM),
        help=(
            "embedding size (ResNet: a 1x1 reduction when it differs from the backbone's width; Swin: with "
            "reduce_feat_dim)"
        ),
    )
    neck_feat: str = spec_field(
        "after",
        choices="reid_tao.model.baseline:NECK_FEATURES",
        help=("test-time feature: after (post-BN) or before (pre-BN) the neck"),
    )
    metric_loss_type: str = spec_field(
        "triplet",
        choices="reid_tao.builders.spec:METRIC_LOSSES",
        help=(
            "metric loss: triplet; center replaces the sampler's triplet loss by the center loss; triplet_center "
            "adds it"
        ),
    )
    with_center_loss: bool = spec_field(False, help="add the center loss to whatever else is selected")
    with_flip_feature: bool = spec_field(
        False, help=("test time: average the features of each image and its mirror image")
    )
    label_smooth: bool = spec_field(True, help="cross entropy with label smoothing (epsilon 0.1)")
    id_loss_type: str = spec_field(
        "softmax",
        choices="reid_tao.model.losses:ID_LOSSES",
        hint=" (margin heads are broken in TAO and not implemented here)",
        help="identity loss head",
    )
    id_loss_weight: float = spec_field(1.0, bounds=NON_NEGATIVE, help="weight of the identity loss")
    triplet_loss_weight: float = spec_field(1.0, bounds=NON_NEGATIVE, help="weight of the triplet loss")
    no_margin: bool = spec_field(False, help="soft-margin triplet loss instead of train.optim.triplet_loss_margin")
    gem_pooling: bool = spec_field(False, help="generalised-mean (GeM) pooling instead of average pooling")
    # Swin regularisation (check_spec rejects them for backbones that do not have the option)
    dropout_rate: float = spec_field(
        0.0, bounds=PROBABILITY, help="Swin: dropout after the patch embedding and in the MLPs / projections"
    )
    drop_path: float = spec_field(0.1, bounds=PROBABILITY, help="Swin: stochastic depth rate")
    drop_out: float = _unused_by_tao(0.0, "Swin dropout (a second name)", instead="use model.dropout_rate")
    att_drop_rate: float = spec_field(0.0, bounds=PROBABILITY, help="Swin: attention dropout")
    reduce_feat_dim: bool = spec_field(False, help="Swin: a linear layer to feat_dim before the neck")
    # TransReID / SOLIDER extras that TAO declares but never wires (rejected when changed)
    pretrain_hw_ratio: float = _unused_by_tao(2.0, "TransReID/SOLIDER: height/width ratio of the pretraining")
    stride_size: list[int] = _unused_by_tao([16, 16], "TransReID: patch embedding stride")
    jpm: bool = _unused_by_tao(False, "TransReID: jigsaw patch module")
    shift_num: int = _unused_by_tao(5, "TransReID: JPM shift")
    shuffle_group: int = _unused_by_tao(2, "TransReID: JPM shuffle groups")
    devide_length: int = _unused_by_tao(4, "TransReID: JPM groups")
    re_arrange: bool = _unused_by_tao(True, "TransReID: JPM re-arrangement")
    sie_coe: float = _unused_by_tao(3.0, "TransReID: side-information embedding weight")
    sie_camera: bool = _unused_by_tao(False, "TransReID: camera side-information embedding")
    sie_view: bool = _unused_by_tao(False, "TransReID: view side-information embedding")
    semantic_weight: float = _unused_by_tao(1.0, "SOLIDER: semantic weight")
    cos_layer: bool = _unused_by_tao(False, "TransReID: cosine classifier layer")
    stem_conv: bool = _unused_by_tao(False, "SOLIDER: convolutional stem")


@dataclass
class DatasetConfig:
    train_dataset_dir: str | None = spec_field(None, help="training images (Market-1501 layout or list files)")
    test_dataset_dir: str | None = spec_field(None, help="gallery images")
    query_dataset_dir: str | None = spec_field(None, help="query images")
    num_classes: int = spec_field(
        751,
        help=(
            "identities; training counts them in train_dataset_dir, evaluate/inference/export read them from the "
            "checkpoint (a different value is logged)"
        ),
    )
    batch_size: int = spec_field(64, bounds=AT_LEAST_1, help="training batch per process")
    val_batch_size: int = spec_field(128, bounds=AT_LEAST_1, help="evaluation batch per process")
    num_workers: int = spec_field(8, bounds=NON_NEGATIVE, help="data-loading worker processes (0: in-process)")
    pixel_mean: list[float] = spec_field([0.485, 0.456, 0.406], help="normalisation mean per channel")
    pixel_std: list[float] = spec_field(
        [0.226, 0.226, 0.226], bounds=Bounds(low=MIN_PIXEL_STD), help=("normalisation standard deviation per channel")
    )
    padding: int = spec_field(10, bounds=NON_NEGATIVE, help="padding before the random crop (pixels)")
    prob: float = spec_field(0.5, bounds=PROBABILITY, help="horizontal flip probability")
    re_prob: float = spec_field(
        0.5,
        bounds=PROBABILITY,
        help=("random erasing probability (area 0.02-0.4, aspect 0.3-3.33, filled with pixel_mean)"),
    )
    sampler: str = spec_field(
        "softmax_triplet",
        choices="reid_tao.builders.spec:BATCH_RECIPES",
        help=(
            "softmax: shuffled batches, identity loss; triplet / softmax_triplet: PK batches (batch_size / "
            "num_instances identities x num_instances images), triplet loss / both"
        ),
    )
    num_instances: int = spec_field(4, bounds=AT_LEAST_1, help="images per identity in a PK batch")
    interpolation: str = spec_field(
        "bilinear",
        choices="reid_tao.data.transforms:INTERPOLATIONS",
        new=True,
        help=("resize filter, the same in training, evaluation and the ONNX sidecar (bicubic for Swin)"),
    )
    synthetic: bool = spec_field(
        False, new=True, help=("generate the bundled synthetic dataset into the folders when they are missing")
    )
    pipeline: str = spec_field(
        "auto",
        choices="reid_tao.data.cached_pipeline:PIPELINES",
        new=True,
        renamed={"gpu": "cached", "cpu": "workers"},
        help=(
            "training images: cached = decoded once into a cache, augmented in batches on the training device (GPU "
            "or CPU); workers = decoded and augmented (torchvision) in loader workers every epoch; auto = cached on "
            "a GPU, and on a CPU when the cache fits in half the available memory"
        ),
    )
    layout: str = spec_field(
        "auto",
        choices="reid_tao.data.layouts:LAYOUT_CHOICES",
        new=True,
        help=(
            "how the dataset paths are stored: auto (a .txt path is a list file, a folder of subfolders only camera "
            "folders, else a Market-1501 folder), market1501, list_file, camera_folders; see docs/datasets.md"
        ),
    )


@dataclass
class ReRankingConfig:
    re_ranking: bool = spec_field(
        False, help=("k-reciprocal re-ranking at evaluation (reported beside the plain metrics)")
    )
    k1: int = spec_field(20, bounds=AT_LEAST_1, help="re-ranking: k of the k-reciprocal neighbours")
    k2: int = spec_field(6, bounds=AT_LEAST_1, help="re-ranking: neighbours of the local query expansion")
    lambda_value: float = spec_field(
        0.3, bounds=PROBABILITY, help=("re-ranking: weight of the original distance against the Jaccard distance")
    )
    max_rank: int = spec_field(
        10, bounds=AT_LEAST_1, help=("length of the reported CMC and columns of the sampled-matches plot")
    )
    num_query: int = spec_field(10, help="rows of the sampled-matches plot (not the number of queries)")


@dataclass
class OptimConfig:
    name: str = spec_field("Adam", help="any torch.optim optimiser by name, case-insensitive (SGD uses momentum)")
    lr_monitor: str = spec_field(
        "val_loss",
        help="metric for an lr-on-plateau schedule",
        status="inert",
        why="the lr follows the epoch schedule (TAO does not read it either)",
    )
    lr_steps: list[int] = spec_field(
        [40, 70],
        help=("epochs (strictly increasing) at which the lr is multiplied by gamma; TAO's docs also write `steps`"),
    )
    gamma: float = spec_field(0.1, bounds=RATE, help="lr factor at each of lr_steps")
    bias_lr_factor: float = spec_field(1.0, bounds=RATE_OR_0, help="biases train at base_lr x this")
    weight_decay: float = spec_field(
        0.0005,
        bounds=RATE_OR_0,
        help=("weight decay of the weights (not of norm/position tables a backbone declares, which get none)"),
    )
    weight_decay_bias: float = spec_field(0.0005, bounds=RATE_OR_0, help="weight decay of the biases")
    warmup_factor: float = spec_field(
        0.01, bounds=RATE, help=("warmup starts at base_lr x this (0 would train the first epoch(s) at lr 0)")
    )
    warmup_iters: int = spec_field(10, bounds=NON_NEGATIVE, help="warmup epochs of linear / constant")
    warmup_epochs: int = spec_field(20, bounds=NON_NEGATIVE, help="warmup epochs of cosine")
    warmup_method: str = spec_field(
        "linear",
        choices="reid_tao.engine.optim:WARMUP_METHODS",
        help=("linear / constant warmup then steps at lr_steps, or cosine: linear warmup then cosine decay"),
    )
    base_lr: float = spec_field(0.00035, bounds=RATE, help="learning rate after the warmup")
    momentum: float = spec_field(0.9, bounds=NON_NEGATIVE, help="SGD momentum (other optimisers keep their own)")
    center_loss_weight: float = spec_field(0.0005, bounds=NON_NEGATIVE, help="weight of the center loss")
    center_lr: float = spec_field(0.5, bounds=RATE, help="lr of the center-loss centers (their own SGD)")
    triplet_loss_margin: float = spec_field(0.3, bounds=NON_NEGATIVE, help="triplet loss margin")
    large_fc_lr: bool = spec_field(False, help="the classifier trains at twice its lr")
    # TAO 7.3: margin-head settings (cosine_*) and triplet L2; the margin heads are not implemented (B4)
    cosine_margin: float = spec_field(
        0.5,
        help="margin of the margin heads",
        status="inert",
        why=("it belongs to the margin heads (arcface, cosface, ...), not implemented (TAO bug B4)"),
    )
    cosine_scale: float = spec_field(
        30.0,
        help="scale of the margin heads",
        status="inert",
        why=("it belongs to the margin heads (arcface, cosface, ...), not implemented (TAO bug B4)"),
    )
    trp_l2: bool = spec_field(
        False,
        help="L2-normalise the triplet loss features",
        status="inert",
        why=("the triplet loss uses the features as they are (TAO does not read it either)"),
    )


@dataclass
class CheckpointerConfig:
    """TAO 7.3: best-k checkpoints ranked by a monitored metric, beside the periodic and latest files."""

    enable_topk: bool = spec_field(False, help="keep the best save_top_k checkpoints by monitor")
    replace_periodic: bool = spec_field(
        False, help=("true: no model_epoch_* history, only the best-k files (and the latest)")
    )
    monitor: str | None = spec_field(
        None,
        choices="reid_tao.engine.metric_names:metric_modes",
        help=("metric that ranks the checkpoints; None: mAP (validation)"),
    )
    mode: str | None = spec_field(
        None, choices=("min", "max"), help=("None: max for accuracies and mAP, min for losses")
    )
    save_top_k: int = spec_field(1, bounds=Bounds(low=1, special=(-1, "keep all")), help="best files kept")
    filename: str = spec_field("model_best_{epoch:03d}", help="name of the best-k files")
    dirpath: str | None = spec_field(None, help="folder of the best-k files; None: the train results folder")
    auto_insert_metric_name: bool = spec_field(False, help="Lightning's metric name in the file name")


@dataclass
class WandbConfig:
    """TAO 7.3: Weights & Biases logging (used when the wandb package is installed)."""

    enable: bool = spec_field(True, help="log to Weights & Biases when the wandb package is installed")
    project: str = spec_field("TAO Toolkit", help="wandb project")
    entity: str = spec_field("", help="wandb entity (team or user)")
    group: str = spec_field("", help="wandb run group")
    tags: list[str] = spec_field(["training", "tao-toolkit"], help="wandb run tags")
    reinit: bool = spec_field(False, help="wandb.init's reinit")
    sync_tensorboard: bool = spec_field(False, help="wandb.init's sync_tensorboard")
    save_code: bool = spec_field(False, help="wandb.init's save_code")
    name: str = spec_field("TAO Toolkit training experiment", help="wandb run name")
    run_id: str = spec_field("", help="wandb run id (resume that run)")


@dataclass
class CudnnConfig:
    """TAO 7.3's train.cudnn section, mapped onto Lightning's ``benchmark`` / ``deterministic``."""

    benchmark: bool = spec_field(
        False, help=("autotune convolution algorithms (fast; chosen per run, so not bit-reproducible)")
    )
    deterministic: bool = spec_field(
        False, help=("deterministic algorithms where torch has them (warns where it has none)")
    )


@dataclass
class TrainConfig:
    num_gpus: int = spec_field(1, bounds=AT_LEAST_1, help="processes (GPUs, or CPU processes with accelerator cpu)")
    gpu_ids: list[int] = spec_field([0], help="GPUs to use (with num_gpus: the larger count wins)")
    num_nodes: int = spec_field(1, bounds=AT_LEAST_1, help="machines")
    seed: int = spec_field(1234, help="seeds python, numpy and torch; negative: unseeded")
    num_epochs: int = spec_field(10, bounds=AT_LEAST_1, help="training epochs")
    checkpoint_interval: int = spec_field(
        1,
        bounds=AT_LEAST_1,
        help=("save model_epoch_NNN.pth every this many epochs (or steps), beside reid_model_latest.pth"),
    )
    checkpoint_interval_unit: str = spec_field(
        "epoch",
        choices="reid_tao.engine.checkpoint:INTERVAL_UNITS",
        help=("unit of checkpoint_interval (step writes model_step_NNNNNN.pth)"),
    )
    validation_interval: int = spec_field(
        1, bounds=AT_LEAST_1, help=("evaluate on query/gallery every this many epochs (when those folders are given)")
    )
    resume_training_checkpoint_path: str | None = spec_field(
        None, help=("resume from this file; None: from results_dir/train/reid_model_latest.pth when it exists")
    )
    results_dir: str | None = spec_field(None, help="None: results_dir/train")
    grad_clip: float = spec_field(0.0, bounds=NON_NEGATIVE, help="clip the gradient norm to this (0: off)")
    precision: str = spec_field(
        "auto",
        choices=PRECISIONS,
        new=True,
        help=("auto: bf16-mixed on GPUs with native bf16, 16-mixed on older GPUs, 32 on the CPU"),
    )
    accelerator: str = spec_field(
        "auto", choices=ACCELERATORS, new=True, help=("with cpu, num_gpus is the number of CPU processes")
    )
    sync_bn: bool = spec_field(
        False, new=True, help=("SyncBatchNorm with several GPU processes (per-GPU batches under ~16 images)")
    )
    compile: bool = spec_field(False, new=True, help="torch.compile the model for training")
    channels_last: bool = spec_field(True, new=True, help="channels_last memory format on GPU")
    checkpointer: CheckpointerConfig = field(default_factory=CheckpointerConfig)
    cudnn: CudnnConfig = field(default_factory=CudnnConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


TRT_ENGINE_WHY = (
    "reid_tao runs the PyTorch checkpoint; TensorRT engines are built from the exported ONNX "
    "(reid export) outside reid_tao, e.g. with trtexec"
)


@dataclass
class EvaluateConfig:
    checkpoint: str | None = spec_field(
        None, help=("model to evaluate (.pth or exported .onnx); None: results_dir/train/reid_model_latest.pth")
    )
    test_dataset: str | None = spec_field(None, help="gallery folder; None: dataset.test_dataset_dir")
    query_dataset: str | None = spec_field(None, help="query folder; None: dataset.query_dataset_dir")
    output_cmc_curve_plot: str | None = spec_field(None, help="CMC plot path; None: in the results folder")
    output_sampled_matches_plot: str | None = spec_field(
        None, help=("sampled-matches plot path; None: in the results folder")
    )
    sampled_matches: str = spec_field(
        "random",
        choices="reid_tao.evaluation.plots:QUERY_CHOICES",
        new=True,
        help=("queries shown in the sampled-matches plot: random (seeded) or worst (lowest AP first)"),
    )
    gpu_ids: list[int] = spec_field([0], help="GPUs to use")
    num_gpus: int = spec_field(1, bounds=AT_LEAST_1, help="processes")
    num_nodes: int = spec_field(1, bounds=AT_LEAST_1, help="machines")
    batch_size: int = spec_field(
        -1, bounds=Bounds(low=1, special=(-1, "dataset.val_batch_size")), help=("feature-extraction batch")
    )
    trt_engine: str | None = spec_field(None, help="TensorRT engine", status="inert", why=TRT_ENGINE_WHY)
    accelerator: str = spec_field("auto", choices=ACCELERATORS, new=True, help="device for the features")
    precision: str = spec_field(
        "32",
        choices=PRECISIONS,
        new=True,
        help=("precision of the features; 32 (TF32 matmuls allowed) keeps metrics equal across devices"),
    )
    results_dir: str | None = spec_field(None, help="None: results_dir/evaluate")


@dataclass
class InferenceConfig:
    checkpoint: str | None = spec_field(
        None, help=("model (.pth or exported .onnx); None: results_dir/train/reid_model_latest.pth")
    )
    test_dataset: str | None = spec_field(None, help="folder to embed; None: dataset.test_dataset_dir")
    query_dataset: str | None = spec_field(None, help="folder to embed; None: dataset.query_dataset_dir")
    output_file: str | None = spec_field(
        None, help=("JSON list of {img_path, embedding} for every image; None: inference.json in the results folder")
    )
    gpu_ids: list[int] = spec_field([0], help="GPUs to use")
    num_gpus: int = spec_field(1, bounds=AT_LEAST_1, help="processes")
    num_nodes: int = spec_field(1, bounds=AT_LEAST_1, help="machines")
    batch_size: int = spec_field(
        -1, bounds=Bounds(low=1, special=(-1, "dataset.val_batch_size")), help=("feature-extraction batch")
    )
    trt_engine: str | None = spec_field(None, help="TensorRT engine", status="inert", why=TRT_ENGINE_WHY)
    accelerator: str = spec_field("auto", choices=ACCELERATORS, new=True, help="device for the features")
    precision: str = spec_field("32", choices=PRECISIONS, new=True, help="as evaluate.precision")
    results_dir: str | None = spec_field(None, help="None: results_dir/inference")


@dataclass
class ExportConfig:
    checkpoint: str | None = spec_field(None, help=("model to export; None: results_dir/train/reid_model_latest.pth"))
    onnx_file: str | None = spec_field(
        None, help=("ONNX path (a .json sidecar with the preprocessing goes beside it); None: in the results folder")
    )
    gpu_id: int = spec_field(0, help="export runs on the CPU; a different value is logged")
    opset: int = spec_field(17, bounds=AT_LEAST_1, new=True, help="ONNX opset")
    overwrite: bool = spec_field(False, new=True, help="replace an existing ONNX file")
    data_type: str = spec_field(
        "fp32",
        choices="reid_tao.deploy.precision:DATA_TYPES",
        help=("TAO's deploy name: fp32, fp16, or int8 (calibrated on calibration_dataset; its form: int8_target)"),
    )
    int8_target: str = spec_field(
        "tensorrt",
        choices="reid_tao.deploy.precision:INT8_TARGETS",
        new=True,
        help=(
            "int8: tensorrt (symmetric signed QDQ, the form TensorRT/DeepStream accept; slow in onnxruntime on x86 "
            "CPUs) or cpu (unsigned activations, the form onnxruntime's x86 CPU kernels run fastest; TensorRT refuses "
            "it, so no DeepStream config is written)"
        ),
    )
    calibration_dataset: str | None = spec_field(
        None,
        help=(
            "int8: calibration images (any image folder or list file, e.g. the training folder); fp16/int8: the "
            "parity images"
        ),
    )
    calibration_images: int = spec_field(
        200, bounds=AT_LEAST_1, new=True, help=("int8: images calibrated on; up to 64 others check the parity")
    )
    results_dir: str | None = spec_field(None, help="None: results_dir/export")


@dataclass
class TuneConfig:
    """`reid tune`: a hyperparameter search over spec fields (Optuna); see docs/tune.md."""

    space: dict[str, Any] = spec_field(
        {},
        new=True,
        help=(
            "spec field -> {log: [low, high]} | {range: [low, high]} | {int: [low, high]} | {choice: [a, b, ...]}; "
            "empty: the default space of lr, weight decay, erasing, margin, label smoothing, warm-up (reid tune --help)"
        ),
    )
    trials: int = spec_field(
        20,
        bounds=AT_LEAST_1,
        new=True,
        help=("finished (complete or pruned) trials to reach; running again continues the study"),
    )
    time_budget_minutes: float = spec_field(
        0.0,
        bounds=NON_NEGATIVE,
        new=True,
        help=("0: no limit; the finished trials' training minutes, checked between trials"),
    )
    metric: str = spec_field(
        "mAP",
        choices="reid_tao.engine.metric_names:VALIDATION_METRICS",
        new=True,
        help=("the validation metric to optimise, in its direction"),
    )
    sampler: str = spec_field(
        "tpe",
        choices="reid_tao.engine.tuning:OPTUNA_SAMPLERS",
        new=True,
        help=("Optuna sampler, seeded with tune.seed"),
    )
    pruner: str = spec_field(
        "median",
        choices="reid_tao.engine.tuning:PRUNERS",
        new=True,
        help=("stop trials that fall behind, on the per-epoch validation metric"),
    )
    num_val_ids: int = spec_field(
        100, bounds=AT_LEAST_1, new=True, help=("training identities held out as the validation split")
    )
    seed: int = spec_field(0, new=True, help="the validation split's and the sampler's seed")
    query_dataset: str | None = spec_field(
        None,
        new=True,
        help=("validation query folder of your own (with test_dataset); None: carved from the training identities"),
    )
    test_dataset: str | None = spec_field(None, new=True, help="validation gallery folder of your own")
    spec_values_first: bool = spec_field(
        True,
        new=True,
        help=(
            "a new study's first trial trains the spec's own values of the searched fields (when inside the space), "
            "so the table shows whether any trial beats the spec"
        ),
    )
    keep_checkpoints: bool = spec_field(False, new=True, help="keep each finished trial's reid_model_latest.pth")
    results_dir: str | None = spec_field(None, new=True, help="None: results_dir/tune")


@dataclass
class CropsConfig:
    """`reid crops`: training crops from tracker output (docs/own_cameras.md)."""

    format: str = spec_field(
        "mot",
        choices="reid_tao.data.tracks:TRACK_FORMATS",
        new=True,
        help=("mot (MOTChallenge text file) or kitti (DeepStream kitti-track-output-dir)"),
    )
    input: str | None = spec_field(None, new=True, help="MOTChallenge sequence folder, folder of frames, or video")
    tracks_file: str | None = spec_field(
        None, new=True, help=("mot: result file (None: <input>/gt/gt.txt); kitti: the dump folder")
    )
    output_dir: str | None = spec_field(None, new=True, help="where the Market-named crops are written")
    camera: int = spec_field(
        1,
        bounds=AT_LEAST_1,
        new=True,
        help=("camera number written into the names (one camera per sequence or stream)"),
    )
    stream: int | None = spec_field(None, new=True, help="kitti: the stream of a multi-stream dump folder")
    labels: list[str] = spec_field([], new=True, help="kitti: keep these object classes only (empty: all)")
    frame_step: int = spec_field(1, bounds=AT_LEAST_1, new=True, help="crop every K-th frame")
    min_height: int = spec_field(
        0, bounds=NON_NEGATIVE, new=True, help=("skip boxes lower than this (pixels, once clipped to the frame)")
    )
    min_inside: float = spec_field(
        0.9,
        bounds=PROBABILITY,
        new=True,
        help=("skip boxes with less of their area inside the frame (cut off by the edge)"),
    )
    results_dir: str | None = spec_field(None, new=True, help="None: results_dir/crops")


@dataclass
class AdaptationConfig:
    """Unsupervised domain adaptation in `reid train`: pseudo labels by clustering + a cluster memory."""

    enable: bool = spec_field(False, new=True, help="true: dataset.train_dataset_dir is read as UNLABELED images")
    source_checkpoint: str | None = spec_field(
        None, new=True, help=("the model to adapt: a reid_tao or TAO checkpoint")
    )
    cluster_interval: int = spec_field(1, bounds=AT_LEAST_1, new=True, help="re-cluster every N epochs")
    eps: Any = spec_field(
        "auto",
        bounds=Bounds(
            low=0, low_open=True, special=("auto", "from the distances of the first clustering, see eps_share")
        ),
        new=True,
        help=(
            "DBSCAN radius on the k-reciprocal Jaccard distance; auto: the mean of the smallest eps_share of all "
            "pairwise distances of the first clustering (MMT's rule), kept for the rest of the run"
        ),
    )
    eps_share: float = spec_field(
        0.0016,
        bounds=Bounds(low=0, high=1, low_open=True),
        new=True,
        help=(
            "eps auto: the share of image pairs taken as the same person (about images per person / images; when "
            "tracks are clustered, tracks per person / tracks)"
        ),
    )
    min_samples: int = spec_field(
        2,
        bounds=AT_LEAST_1,
        new=True,
        help=(
            "DBSCAN core-point neighbours (images closer than eps, itself included); 2 lets a person seen twice "
            "form a cluster"
        ),
    )
    k1: int = spec_field(
        10,
        bounds=AT_LEAST_1,
        new=True,
        help=("k-reciprocal neighbourhood of the Jaccard distance; about twice the images of a person on few cameras"),
    )
    k2: int = spec_field(6, bounds=AT_LEAST_1, new=True, help="query expansion of the Jaccard distance")
    outliers: str = spec_field(
        "drop",
        choices=("drop", "instances"),
        new=True,
        help=(
            "images no cluster takes: drop (not trained on until a later clustering takes them) or instances (each "
            "also its own memory entry, a negative for every batch, as SpCL's hybrid memory; batches come from the "
            "clusters either way)"
        ),
    )
    momentum: float = spec_field(
        0.2,
        bounds=PROBABILITY,
        new=True,
        help=("cluster-memory update: centroid <- momentum * centroid + (1 - momentum) * feature"),
    )
    temperature: float = spec_field(
        0.05, bounds=POSITIVE, new=True, help=("of the contrastive loss over the cluster centroids")
    )
    memory_loss_weight: float = spec_field(
        1.0, bounds=NON_NEGATIVE, new=True, help=("weight of the cluster-memory loss in the total")
    )
    tracklets: str = spec_field(
        "auto",
        choices=("auto", "off"),
        new=True,
        help=(
            "auto: when every image name carries its track (`reid crops` names: <track>_c<camera>s<seq>_...), a track "
            "is clustered as one point and never split; a track is one person only on its own camera"
        ),
    )
    camera_loss_weight: float = spec_field(
        1.0,
        bounds=NON_NEGATIVE,
        new=True,
        help=(
            "weight of the camera-aware proxy loss (one proxy per cluster and camera: intra-camera and inter-camera "
            "terms, CAP); 0 turns it off; it is off by itself with one camera"
        ),
    )
    camera_temperature: float = spec_field(
        0.07, bounds=POSITIVE, new=True, help=("of the softmax over the camera proxies")
    )
    camera_inter_weight: float = spec_field(
        0.5, bounds=NON_NEGATIVE, new=True, help=("weight of the inter-camera term inside the camera loss")
    )
    camera_hard_negatives: int = spec_field(
        50,
        bounds=AT_LEAST_1,
        new=True,
        help=("proxies of other clusters in the inter-camera term (the most similar ones)"),
    )
    camera_balanced_batches: bool = spec_field(
        True, new=True, help=("a pseudo identity's K images in a batch come from as many of its cameras as it has")
    )
    camera_centring: bool = spec_field(
        True,
        new=True,
        help=(
            "cluster features minus their camera's mean feature, so a person's views on several cameras join "
            "one cluster rather than one per camera"
        ),
    )
    same_camera_penalty: float = spec_field(
        0.0,
        bounds=Bounds(low=0, high=4),
        new=True,
        help=(
            "added to the squared distance (0-4 between unit features) of two images from one camera before the "
            "k-reciprocal neighbours are found, so a person's views on other cameras enter them (CA-Jaccard's aim); "
            "0: off; off by itself with one camera"
        ),
    )
    target_batch_norm: bool = spec_field(
        True,
        new=True,
        help=("before the first clustering, measure the batch-norm statistics on the unlabeled images (AdaBN)"),
    )
    teacher_momentum: float = spec_field(
        0.0,
        bounds=Bounds(low=0, high=0.9999),
        new=True,
        help=(
            "mean teacher: an average of the weights, teacher <- m * teacher + (1 - m) * model after every step, "
            "embeds for the clustering and is the final model; 0: off. It lags by about 1 / (1 - m) steps: 0.99 "
            "suits runs of thousands of steps, not a few hundred"
        ),
    )
    source_weight: float = spec_field(
        0.0,
        bounds=PROBABILITY,
        new=True,
        help=(
            "share of the source model in the final weights (WiSE-FT): w * source + (1 - w) * adapted, set after "
            "the last step; 0 keeps the adapted model"
        ),
    )
    source_dataset_dir: str | None = spec_field(
        None,
        new=True,
        help=(
            "a labelled source split (e.g. Market-1501's bounding_box_train, any layout dataset.layout reads): each "
            "step also trains on a PK batch of it (ID + triplet loss, forwarded apart from the target batch), which "
            "anchors the model to what its labels taught; null: source-free adaptation"
        ),
    )
    source_loss_weight: float = spec_field(
        1.0,
        bounds=NON_NEGATIVE,
        new=True,
        help=("weight of the source batch's loss (ID + triplet) in the total, with adaptation.source_dataset_dir"),
    )


@dataclass
class ExperimentConfig:
    model_name: str | None = spec_field(
        None,
        help="TAO 7.3 writes re_identification here",
        status="inert",
        why="reid_tao only trains re-identification models",
    )
    results_dir: str = spec_field("results", help="each task writes to results_dir/<task> unless <task>.results_dir")
    encryption_key: str | None = spec_field(
        None, help=("TAO's checkpoint encryption key; accepted, checkpoints stay unencrypted (the log says so)")
    )
    wandb: WandbConfig = field(default_factory=WandbConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    re_ranking: ReRankingConfig = field(default_factory=ReRankingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    crops: CropsConfig = field(default_factory=CropsConfig)
    adaptation: AdaptationConfig = field(default_factory=AdaptationConfig)
