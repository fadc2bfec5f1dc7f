"""The experiment schema: every TAO ReIdentificationNet spec field with TAO's default.

A TAO spec file is merged over these dataclasses (see ``loader.py``), so an unknown key or a value of
the wrong type is caught before any work starts. Fields added by reid_tao are marked "new".
"""
from dataclasses import dataclass, field
from typing import List, Optional


@dataclass
class ModelConfig:
    backbone: str = "resnet_50"
    last_stride: int = 1
    pretrain_choice: str = "imagenet"  # imagenet | self | "" (random init)
    pretrained_model_path: Optional[str] = None
    # new: load weight/checkpoint files that need full unpickling; runs code from the file (trusted files only)
    trust_weights_file: bool = False
    input_channels: int = 3
    input_width: int = 128
    input_height: int = 256
    neck: str = "bnneck"  # bnneck | ""
    feat_dim: int = 256
    neck_feat: str = "after"  # after | before
    metric_loss_type: str = "triplet"  # triplet | center | triplet_center
    with_center_loss: bool = False
    with_flip_feature: bool = False
    label_smooth: bool = True
    id_loss_type: str = "softmax"
    id_loss_weight: float = 1.0
    triplet_loss_weight: float = 1.0
    no_margin: bool = False
    gem_pooling: bool = False
    # Swin regularisation
    dropout_rate: float = 0.0
    drop_path: float = 0.1
    drop_out: float = 0.0
    att_drop_rate: float = 0.0
    reduce_feat_dim: bool = False
    # TransReID / SOLIDER extras that TAO declares but never wires (rejected when changed)
    pretrain_hw_ratio: float = 2.0
    stride_size: List[int] = field(default_factory=lambda: [16, 16])
    jpm: bool = False
    shift_num: int = 5
    shuffle_group: int = 2
    devide_length: int = 4
    re_arrange: bool = True
    sie_coe: float = 3.0
    sie_camera: bool = False
    sie_view: bool = False
    semantic_weight: float = 1.0
    cos_layer: bool = False
    stem_conv: bool = False


@dataclass
class DatasetConfig:
    train_dataset_dir: Optional[str] = None
    test_dataset_dir: Optional[str] = None
    query_dataset_dir: Optional[str] = None
    num_classes: int = 751
    batch_size: int = 64
    val_batch_size: int = 128
    num_workers: int = 8
    pixel_mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    pixel_std: List[float] = field(default_factory=lambda: [0.226, 0.226, 0.226])
    padding: int = 10
    prob: float = 0.5
    re_prob: float = 0.5
    sampler: str = "softmax_triplet"  # softmax | triplet | softmax_triplet
    num_instances: int = 4
    interpolation: str = "bilinear"  # new: resize filter, bilinear | bicubic (train AND eval)
    synthetic: bool = False  # new: generate the bundled synthetic dataset into the folders when missing
    pipeline: str = "auto"  # new: auto | gpu | cpu; gpu = decoded-image cache + batched on-device augmentation


@dataclass
class ReRankingConfig:
    re_ranking: bool = False
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    max_rank: int = 10
    num_query: int = 10


@dataclass
class OptimConfig:
    name: str = "Adam"
    lr_monitor: str = "val_loss"
    lr_steps: List[int] = field(default_factory=lambda: [40, 70])
    gamma: float = 0.1
    bias_lr_factor: float = 1.0
    weight_decay: float = 0.0005
    weight_decay_bias: float = 0.0005
    warmup_factor: float = 0.01
    warmup_iters: int = 10
    warmup_epochs: int = 20
    warmup_method: str = "linear"  # linear | constant | cosine
    base_lr: float = 0.00035
    momentum: float = 0.9
    center_loss_weight: float = 0.0005
    center_lr: float = 0.5
    triplet_loss_margin: float = 0.3
    large_fc_lr: bool = False
    # TAO 7.3: margin-head settings (cosine_*) and triplet L2; the margin heads are not implemented (B4)
    cosine_margin: float = 0.5
    cosine_scale: float = 30.0
    trp_l2: bool = False


@dataclass
class CheckpointerConfig:
    """TAO 7.3: best-k checkpoints ranked by a monitored metric, beside the periodic and latest files."""
    enable_topk: bool = False
    replace_periodic: bool = False  # true: no model_epoch_* history, only the best-k files (and the latest)
    monitor: Optional[str] = None  # None: mAP (validation)
    mode: Optional[str] = None  # min | max; None: max for accuracies and mAP, min for losses
    save_top_k: int = 1
    filename: str = "model_best_{epoch:03d}"
    dirpath: Optional[str] = None  # None: the train results folder
    auto_insert_metric_name: bool = False


@dataclass
class WandbConfig:
    """TAO 7.3: Weights & Biases logging (used when the wandb package is installed)."""
    enable: bool = True
    project: str = "TAO Toolkit"
    entity: str = ""
    group: str = ""
    tags: List[str] = field(default_factory=lambda: ["training", "tao-toolkit"])
    reinit: bool = False
    sync_tensorboard: bool = False
    save_code: bool = False
    name: str = "TAO Toolkit training experiment"
    run_id: str = ""


@dataclass
class CudnnConfig:
    """TAO 7.3's train.cudnn section, mapped onto Lightning's ``benchmark`` / ``deterministic``."""
    benchmark: bool = False  # autotune convolution algorithms (fast; chosen per run, so not bit-reproducible)
    deterministic: bool = False  # deterministic algorithms where torch has them (warns where it has none)


@dataclass
class TrainConfig:
    num_gpus: int = 1
    gpu_ids: List[int] = field(default_factory=lambda: [0])
    num_nodes: int = 1
    seed: int = 1234
    num_epochs: int = 10
    checkpoint_interval: int = 1
    checkpoint_interval_unit: str = "epoch"  # epoch | step
    validation_interval: int = 1
    resume_training_checkpoint_path: Optional[str] = None
    results_dir: Optional[str] = None
    grad_clip: float = 0.0
    precision: str = "auto"  # new: auto | 32 | 16-mixed | bf16-mixed
    accelerator: str = "auto"  # new: auto | gpu | cpu (with cpu, num_gpus = number of CPU processes)
    sync_bn: bool = False  # new: SyncBatchNorm with several GPU processes (per-GPU batches under ~16 images)
    compile: bool = False  # new: torch.compile the model for training
    channels_last: bool = True  # new: channels_last memory format on GPU
    checkpointer: CheckpointerConfig = field(default_factory=CheckpointerConfig)
    cudnn: CudnnConfig = field(default_factory=CudnnConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class EvaluateConfig:
    checkpoint: Optional[str] = None
    test_dataset: Optional[str] = None
    query_dataset: Optional[str] = None
    output_cmc_curve_plot: Optional[str] = None
    output_sampled_matches_plot: Optional[str] = None
    sampled_matches: str = "random"  # new: random (seeded) | worst (lowest AP first)
    gpu_ids: List[int] = field(default_factory=lambda: [0])
    num_gpus: int = 1
    num_nodes: int = 1
    batch_size: int = -1  # -1: dataset.val_batch_size
    trt_engine: Optional[str] = None  # TensorRT engines are built from the exported ONNX outside reid_tao
    accelerator: str = "auto"  # new: auto | gpu | cpu
    precision: str = "32"  # new: 32 (TF32 matmuls allowed) | 16-mixed | bf16-mixed | auto, for the features
    results_dir: Optional[str] = None


@dataclass
class InferenceConfig:
    checkpoint: Optional[str] = None
    test_dataset: Optional[str] = None
    query_dataset: Optional[str] = None
    output_file: Optional[str] = None
    gpu_ids: List[int] = field(default_factory=lambda: [0])
    num_gpus: int = 1
    num_nodes: int = 1
    batch_size: int = -1  # -1: dataset.val_batch_size
    trt_engine: Optional[str] = None  # TensorRT engines are built from the exported ONNX outside reid_tao
    accelerator: str = "auto"  # new: auto | gpu | cpu
    precision: str = "32"  # new: as evaluate.precision
    results_dir: Optional[str] = None


@dataclass
class ExportConfig:
    checkpoint: Optional[str] = None
    onnx_file: Optional[str] = None
    gpu_id: int = 0
    opset: int = 17  # new
    overwrite: bool = False  # new
    results_dir: Optional[str] = None


@dataclass
class CropsConfig:
    """new: `reid crops`, training crops from tracker output (docs/own_cameras.md)."""
    format: str = "mot"  # mot (MOTChallenge text file) | kitti (DeepStream kitti-track-output-dir)
    input: Optional[str] = None  # MOTChallenge sequence folder, folder of frames, or video file
    tracks_file: Optional[str] = None  # mot: result file (None: <input>/gt/gt.txt); kitti: the dump folder
    output_dir: Optional[str] = None  # where the Market-named crops are written
    camera: int = 1  # camera number written into the names (one camera per sequence or stream)
    stream: Optional[int] = None  # kitti: the stream of a multi-stream dump folder
    labels: List[str] = field(default_factory=list)  # kitti: keep these object classes only (empty: all)
    frame_step: int = 1  # crop every K-th frame
    min_height: int = 0  # skip boxes lower than this (pixels, once clipped to the frame)
    min_inside: float = 0.9  # skip boxes with less of their area inside the frame (cut off by the edge)
    results_dir: Optional[str] = None


@dataclass
class AdaptationConfig:
    """new: unsupervised domain adaptation in `reid train` (pseudo labels by clustering + cluster memory)."""
    enable: bool = False  # true: dataset.train_dataset_dir is read as UNLABELED images
    source_checkpoint: Optional[str] = None  # the model to adapt: a reid_tao or TAO checkpoint
    cluster_interval: int = 1  # re-cluster every N epochs
    eps: float = 0.6  # DBSCAN radius on the k-reciprocal Jaccard distance
    min_samples: int = 4  # DBSCAN core-point neighbours (images closer than eps, itself included)
    k1: int = 30  # k-reciprocal neighbourhood of the Jaccard distance
    k2: int = 6  # query expansion of the Jaccard distance
    momentum: float = 0.2  # cluster-memory update: centroid <- momentum * centroid + (1 - momentum) * feature
    temperature: float = 0.05  # of the contrastive loss over the cluster centroids
    memory_loss_weight: float = 1.0  # weight of the cluster-memory loss in the total


@dataclass
class ExperimentConfig:
    model_name: Optional[str] = None  # TAO 7.3 writes re_identification here
    results_dir: str = "results"
    encryption_key: Optional[str] = None
    wandb: WandbConfig = field(default_factory=WandbConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    re_ranking: ReRankingConfig = field(default_factory=ReRankingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    crops: CropsConfig = field(default_factory=CropsConfig)
    adaptation: AdaptationConfig = field(default_factory=AdaptationConfig)
