"""Domain adaptation: unlabeled readers, the cluster memory, clustering, and `reid train` with adaptation."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reid_tao.data.layouts import read_unlabeled
from reid_tao.data.records import ImageRecord
from reid_tao.data.samplers import PKSampler, SubsetSampler
from reid_tao.data.tracklets import track_groups
from reid_tao.evaluation.clustering import agreement, cluster_features, purity
from reid_tao.model.losses import CameraProxyLoss, ClusterMemoryLoss, LossSettings, build_reid_loss

from helpers import TINY_BACKBONE, tiny_adaptation_overrides

_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "cluster_purity.py"
_spec = importlib.util.spec_from_file_location("cluster_purity", _SCRIPT)
cluster_purity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cluster_purity)


def write_image(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 8, 3), value, np.uint8)).save(path)


def test_unlabeled_folder_with_camera_subfolders(tmp_path):
    write_image(tmp_path / "lobby" / "a.jpg")
    write_image(tmp_path / "lobby" / "day2" / "b.jpg")  # any depth inside a camera folder
    write_image(tmp_path / "entrance" / "x_y.png")
    write_image(tmp_path / "loose.jpg")
    (tmp_path / "empty").mkdir()
    records = read_unlabeled(str(tmp_path), "dataset.train_dataset_dir")
    cameras = {Path(r.path).name: r.camid for r in records}
    # subfolders in name order: entrance=1, lobby=2; the empty one is no camera; top-level images one more
    assert cameras == {"x_y.png": 1, "a.jpg": 2, "b.jpg": 2, "loose.jpg": 3}
    assert {r.pid for r in records} == {0}


def test_unlabeled_flat_folder_cameras_from_names_else_one(tmp_path):
    write_image(tmp_path / "named" / "0007_c3s1_000001_00.jpg")
    write_image(tmp_path / "named" / "0000_000_05_0303morning_0015_0.jpg")  # MSMT17 camera 5
    assert sorted(r.camid for r in read_unlabeled(str(tmp_path / "named"), "f")) == [3, 5]
    write_image(tmp_path / "plain" / "frame_a.jpg")
    write_image(tmp_path / "plain" / "0007_c3s1_000001_00.jpg")
    assert [r.camid for r in read_unlabeled(str(tmp_path / "plain"), "f")] == [1, 1]


def test_unlabeled_list_file(tmp_path):
    write_image(tmp_path / "imgs" / "p.jpg")
    write_image(tmp_path / "imgs" / "0001_c4s1_000001_00.jpg")
    write_image(tmp_path / "imgs" / "q.jpg")
    (tmp_path / "list.txt").write_text("imgs/p.jpg\nimgs/0001_c4s1_000001_00.jpg\nimgs/q.jpg 12 2\n")
    records = read_unlabeled(str(tmp_path / "list.txt"), "f")
    assert [(Path(r.path).name, r.camid) for r in records] == [
        ("p.jpg", 1),
        ("0001_c4s1_000001_00.jpg", 4),
        ("q.jpg", 2),
    ]


def test_a_layout_registered_in_the_table_reaches_adaptation_without_other_edits(tmp_path, monkeypatch):
    """docs/contributing.md's "Add a dataset layout": one LAYOUTS entry with an unlabeled reader is read by
    adaptation's datamodule (and the cameras it gives are the ones training sees), by the spec's layout check and
    by inference's image lister."""
    from reid_tao.builders import build_datamodule, load_experiment
    from reid_tao.data.layouts import LAYOUTS, Layout, resolve_layout, split_images
    from reid_tao.data.records import ImageRecord

    from helpers import tiny_overrides

    def rows(path, field):  # "image,camera" lines, relative to the file's folder
        return [
            (str(Path(path).parent / name), int(camera))
            for name, camera in (line.split(",") for line in Path(path).read_text().split())
        ]

    monkeypatch.setitem(
        LAYOUTS,
        "toy_csv",
        Layout(
            reader=lambda path, field: [ImageRecord(image, 1, camera) for image, camera in rows(path, field)],
            detect=lambda path: Path(path).suffix == ".csv",
            description="a toy .csv of 'image,camera' lines",
            images=lambda path, field: [image for image, _ in rows(path, field)],
            unlabeled=lambda path, field: [ImageRecord(image, 0, camera) for image, camera in rows(path, field)],
        ),
    )
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        write_image(tmp_path / "crops" / name)
    crops = tmp_path / "crops" / "crops.csv"
    crops.write_text("a.jpg,7\nb.jpg,9\nc.jpg,7\n")
    assert resolve_layout(str(crops), "dataset.train_dataset_dir") == "toy_csv"
    config = load_experiment(
        None,
        tiny_overrides(
            tmp_path,
            tmp_path / "results",
            **{
                "dataset.train_dataset_dir": str(crops),
                "dataset.query_dataset_dir": "null",
                "dataset.test_dataset_dir": "null",
                "adaptation.enable": "true",
                "adaptation.source_checkpoint": str(tmp_path / "source.pth"),
            },
        ),
    )  # (only the data module is built here)
    datamodule = build_datamodule(config)
    datamodule.setup()
    assert [(Path(r.path).name, r.pid, r.camid) for r in datamodule.train_records] == [
        ("a.jpg", 0, 7),
        ("b.jpg", 0, 9),
        ("c.jpg", 0, 7),
    ]
    assert datamodule.train_labels == [-1, -1, -1]  # no labels until the first clustering
    assert [Path(p).name for p in split_images(str(crops), "inference.query_dataset")] == ["a.jpg", "b.jpg", "c.jpg"]


def test_a_layout_without_an_unlabeled_reader_is_refused_for_adaptation_in_one_line(tmp_path, monkeypatch):
    from reid_tao.data.layouts import LAYOUTS, Layout
    from reid_tao.errors import DataError

    monkeypatch.setitem(
        LAYOUTS,
        "labelled_only",
        Layout(
            reader=lambda path, field: [],
            images=lambda p, f: [],
            detect=lambda path: path.endswith(".lab"),
            description="a labelled-only toy file",
        ),
    )
    with pytest.raises(DataError, match="a labelled-only toy file, which domain adaptation cannot read"):
        read_unlabeled(str(tmp_path / "x.lab"), "dataset.train_dataset_dir")


def test_a_named_layout_applies_to_the_unlabeled_split_too(tmp_path):
    from reid_tao.errors import DataError

    write_image(tmp_path / "imgs" / "p.jpg")
    (tmp_path / "list.txt").write_text("imgs/p.jpg\n")
    assert len(read_unlabeled(str(tmp_path / "list.txt"), "f", "list_file")) == 1
    with pytest.raises(DataError, match="looks like a .txt list.*set dataset.layout=list_file"):
        read_unlabeled(str(tmp_path / "list.txt"), "dataset.train_dataset_dir", "market1501")


def test_camera_folders_are_a_layout_that_inference_embeds_and_training_refuses(tmp_path):
    from reid_tao.data.layouts import detect_layout, read_split, split_images
    from reid_tao.errors import DataError

    write_image(tmp_path / "cams" / "lobby" / "day2" / "b.jpg")
    write_image(tmp_path / "cams" / "lobby" / "a.jpg")
    write_image(tmp_path / "cams" / "entrance" / "x.png")
    (tmp_path / "cams" / "notes.txt").write_text("not a list\n")
    cams = str(tmp_path / "cams")
    assert detect_layout(cams) == "camera_folders"
    # inference: every image, camera folder by camera folder in name order (a Market lister saw none)
    assert [Path(p).relative_to(cams).as_posix() for p in split_images(cams, "inference.query_dataset")] == [
        "entrance/x.png",
        "lobby/a.jpg",
        "lobby/day2/b.jpg",
    ]
    assert [r.camid for r in read_unlabeled(cams, "dataset.train_dataset_dir")] == [1, 2, 2]
    with pytest.raises(DataError, match="holds folders \\(entrance, lobby\\).*carries no person ids"):
        read_split(cams, "dataset.train_dataset_dir")
    write_image(tmp_path / "cams" / "loose.jpg")  # images of its own: a Market folder (subfolders ignored)
    assert detect_layout(cams) == "market1501"


def test_cluster_memory_loss_and_momentum_update():
    memory = ClusterMemoryLoss(feat_dim=2, temperature=0.5, momentum=0.5)
    memory.reset(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    features = torch.tensor([[2.0, 0.0], [0.0, 3.0]], requires_grad=True)
    loss = memory.value(None, features, torch.tensor([0, 1]))
    expected = torch.nn.functional.cross_entropy(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 1]))
    assert torch.isclose(loss, expected)
    loss.backward()  # the in-place memory update must not break the backward pass
    assert features.grad is not None
    memory.value(None, torch.tensor([[0.0, 1.0]]), torch.tensor([0]))  # cluster 0 pulled half-way towards (0, 1)
    assert torch.allclose(memory.centroids[0], torch.nn.functional.normalize(torch.tensor([0.5, 0.5]), dim=0))
    assert torch.allclose(memory.centroids[1], torch.tensor([0.0, 1.0]))
    memory.eval()
    memory.value(None, torch.tensor([[1.0, 0.0]]), torch.tensor([1]))  # no update outside training
    assert torch.allclose(memory.centroids[1], torch.tensor([0.0, 1.0]))


def test_memory_momentum_keeps_the_old_centroid_share():
    # momentum 0.8 is the share of the OLD centroid kept: c <- 0.8 c + 0.2 f (the other order would give 0.2 c)
    memory = ClusterMemoryLoss(feat_dim=2, momentum=0.8)
    memory.reset(torch.tensor([[1.0, 0.0]]))
    memory.value(None, torch.tensor([[0.0, 1.0]]), torch.tensor([0]))
    assert torch.allclose(memory.centroids[0], torch.nn.functional.normalize(torch.tensor([0.8, 0.2]), dim=0))


def test_adaptation_terms_sum_with_the_triplet_loss_and_take_cameras():
    settings = LossSettings(num_classes=1, feat_dim=4, label_smooth=False, triplet_margin=0.3)
    total = build_reid_loss(["memory", "camera", "triplet"], settings, {"memory": 0.5, "camera": 2.0})
    features, labels, cameras = torch.randn(4, 4), torch.tensor([0, 0, 1, 1]), torch.tensor([1, 2, 1, 2])
    for term in total.pseudo_label_terms():
        term.reset_pseudo_labels(features, labels, cameras)
    parts = total(None, features, labels, cameras)
    assert set(parts) == {"loss", "memory_loss", "camera_loss", "triplet_loss"}
    assert torch.isclose(
        parts["loss"], 0.5 * parts["memory_loss"] + 2.0 * parts["camera_loss"] + parts["triplet_loss"], atol=1e-5
    )
    assert not total.needs_logits and total.own_parameters() == []
    assert [type(term) for term in total.pseudo_label_terms()] == [ClusterMemoryLoss, CameraProxyLoss]


def test_camera_proxies_per_cluster_and_camera():
    term = CameraProxyLoss(feat_dim=2)
    features = torch.tensor([[1.0, 0.0], [1.0, 0.2], [0.0, 1.0], [0.2, 1.0], [1.0, 1.0]])
    term.reset_pseudo_labels(features, torch.tensor([0, 0, 1, 1, -1]), torch.tensor([3, 7, 3, 3, 7]))
    # cluster 0 on cameras 3 and 7, cluster 1 on camera 3 only; the outlier has no proxy
    assert term.proxies.shape == (3, 2) and term.active
    assert term.proxy_of.tolist() == [[0, 1], [2, -1]]
    normalize = torch.nn.functional.normalize
    mean_of_normalised = torch.tensor([0.0, 1.0]) + normalize(torch.tensor([0.2, 1.0]), dim=0)
    assert torch.allclose(term.proxies[2], normalize(mean_of_normalised, dim=0))


def test_inter_camera_term_pulls_an_image_to_its_cluster_proxy_on_another_camera():
    # cluster 0 is seen by cameras 1 and 2; the image from camera 1 starts far from its camera-2 proxy
    term = CameraProxyLoss(feat_dim=3, inter_weight=1.0, temperature=0.5)
    features = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.3, 1.0]])
    labels, cameras = torch.tensor([0, 0, 1, 1]), torch.tensor([1, 2, 1, 2])
    term.reset_pseudo_labels(features, labels, cameras)
    term.eval()  # no proxy update: look at the gradient only
    image = features[:1].clone().requires_grad_(True)
    term.value(None, image, labels[:1], cameras[:1]).backward()
    towards_other_camera = torch.dot(-image.grad[0], term.proxies[term.proxy_of[0, 1]])
    assert towards_other_camera > 0
    term.inter_weight = 0.0  # the intra-camera term alone does not pull across cameras
    image.grad = None
    term.value(None, image, labels[:1], cameras[:1]).backward()
    assert torch.dot(-image.grad[0], term.proxies[term.proxy_of[0, 1]]) <= 1e-6


def test_camera_term_is_off_with_one_camera():
    term = CameraProxyLoss(feat_dim=2)
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    term.reset_pseudo_labels(features.detach(), torch.tensor([0, 1]), torch.tensor([4, 4]))
    assert not term.active
    loss = term.value(None, features, torch.tensor([0, 1]), torch.tensor([4, 4]))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(features.grad, torch.zeros(2, 2))


def test_camera_balanced_pk_batches_span_the_cameras_of_each_identity():
    # identity 0: 4 images on camera 1 and 4 on camera 2; identity 1 only on camera 3; K = 2
    labels = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    cameras = np.array([1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 1, 2, 1, 2])
    for seed in range(5):
        sampler = PKSampler(labels, batch_size=4, num_instances=2, seed=seed, cameras=cameras)
        for epoch in range(3):
            chunks = sampler.global_batches(epoch).reshape(-1, 2)
            for chunk in chunks:
                if labels[chunk[0]] in (0, 2):
                    assert cameras[chunk[0]] != cameras[chunk[1]]
    plain = PKSampler(labels, batch_size=4, num_instances=2, seed=0).global_batches(0).reshape(-1, 2)
    assert any(cameras[a] == cameras[b] for a, b in plain if labels[a] == 0)  # without cameras: no such rule


def test_reclustering_schedule():
    from reid_tao.engine.adaptation import reclusters_before

    # interval 2 over 7 epochs: the start's clustering serves epochs 0-1, then before epochs 2, 4 and 6
    assert [epoch for epoch in range(8) if reclusters_before(epoch, 2, 7)] == [2, 4, 6]
    assert [epoch for epoch in range(5) if reclusters_before(epoch, 1, 4)] == [1, 2, 3]


def test_outliers_as_instances():
    from reid_tao.engine.adaptation import with_outliers

    labels = np.array([0, -1, 1, -1, 0])
    assert with_outliers(labels, "drop").tolist() == [0, -1, 1, -1, 0]
    assert with_outliers(labels, "instances").tolist() == [0, 2, 1, 3, 0]


def test_outlier_instances_are_memory_negatives_not_pk_identities(monkeypatch):
    """An outlier is one image: as a PK identity it would be drawn K times per epoch and outnumber the clusters
    (84 instead of 14 batches an epoch on CUHK01), so it is a memory row but never a batch identity."""
    from types import SimpleNamespace

    from reid_tao.engine import adaptation

    found = np.array([0, -1, 1, -1, 0, 1])
    received = []
    datamodule = SimpleNamespace(
        train_records=[SimpleNamespace(camid=index % 2) for index in range(6)], set_pseudo_labels=received.append
    )
    trainer = SimpleNamespace(
        is_global_zero=True,
        datamodule=datamodule,
        callbacks=[],
        strategy=SimpleNamespace(broadcast=lambda value, src: value),
    )
    monkeypatch.setattr(adaptation, "training_images", lambda *args: [None])
    features = torch.nn.functional.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    memory = ClusterMemoryLoss(4)
    callback = adaptation.PseudoLabelCallback([memory], eps=0.5, outliers="instances")
    monkeypatch.setattr(callback, "embed_training_images", lambda trainer, module: features)
    monkeypatch.setattr(adaptation, "cluster_features", lambda *a, **k: SimpleNamespace(labels=found, eps=0.5))
    callback.recluster(trainer, SimpleNamespace(device=torch.device("cpu")))
    assert memory.num_clusters == 4  # two clusters and two outlier instances
    assert torch.allclose(memory.centroids[2:], features[[1, 3]], atol=1e-6)
    assert received == [[0, -1, 1, -1, 0, 1]]  # batches come from the clusters only
    assert callback.stats["images_used"] == 4


def test_auto_eps_is_the_mean_of_the_smallest_share_of_pairs():
    from scipy.sparse import csr_matrix

    from reid_tao.evaluation.clustering import auto_eps

    distance = np.ones((5, 5)) - np.eye(5)
    distance[0, 1] = distance[1, 0] = 0.1
    distance[2, 3] = distance[3, 2] = 0.3
    distance = csr_matrix(np.where(distance < 1, distance, 0))  # a graph: the pairs not stored are 1 apart
    # 10 pairs; the smallest 2 (a share of 0.2) are 0.1 and 0.3
    assert auto_eps(distance, 0.2) == pytest.approx(0.2)
    assert auto_eps(distance, 0.1) == pytest.approx(0.1)
    assert auto_eps(distance, 1.0) == pytest.approx((0.1 + 0.3 + 8) / 10)


def test_subset_sampler_draws_only_clustered_images():
    labels = np.array([0, -1, 0, 1, 1, -1, 2, 2, 0, 1, 2, -1])
    clustered = np.flatnonzero(labels >= 0)
    sampler = SubsetSampler(PKSampler(labels[clustered], batch_size=4, num_instances=2, seed=1), clustered)
    drawn = np.array(list(sampler))
    assert len(drawn) == len(sampler) > 0 and (labels[drawn] >= 0).all()
    batches = labels[drawn].reshape(-1, 2, 2)  # P=2 clusters x K=2 per batch
    assert (batches[:, :, 0] == batches[:, :, 1]).all()


def test_clustering_finds_identities_and_drops_outliers():
    generator = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(6, 32, generator=generator), dim=1)
    identities = np.repeat(np.arange(6), 8)
    features = centres[identities] + 0.05 * torch.randn(48, 32, generator=generator)
    outliers = torch.nn.functional.normalize(torch.randn(3, 32, generator=generator), dim=1)
    result = cluster_features(torch.cat([features, outliers]), eps=0.3, min_samples=4, k1=10, k2=1)
    assert result.num_clusters == 6 and set(result.labels[-3:]) == {-1}
    assert purity(result.labels[:-3], identities) == 1.0
    assert torch.allclose(result.centroids.norm(dim=1), torch.ones(6))


# ---------------------------------------------------------------------------------------- end to end
def colour_shift(image: Image.Image) -> Image.Image:
    """The target domain: channels rotated, contrast lowered, brightened (the same for every camera)."""
    pixels = np.asarray(image).astype(np.float32)
    return Image.fromarray(np.clip(pixels[..., [2, 0, 1]] * 0.7 + 40, 0, 255).astype(np.uint8))


def make_target_domain(source: Path, target: Path) -> dict:
    """Colour-shifted copy: labelled query/gallery for measuring, the training images UNLABELED (random names,
    one subfolder per camera). Returns file name -> true identity of the unlabeled images."""
    for split in ("query", "bounding_box_test"):
        (target / split).mkdir(parents=True)
        for path in (source / split).glob("*.jpg"):
            colour_shift(Image.open(path)).save(target / split / path.name)
    identities = {}
    for index, path in enumerate(sorted((source / "bounding_box_train").glob("*.jpg"))):
        camera_folder = target / "unlabeled" / f"door_{path.name.split('_c')[1][0]}"
        camera_folder.mkdir(parents=True, exist_ok=True)
        name = f"img{(index * 7919) % 100003:06d}.jpg"
        colour_shift(Image.open(path)).save(camera_folder / name)
        identities[name] = int(path.name[:4])
    return identities


def adaptation_common(results: Path):
    # the test-only backbone (tiny_overrides'): adaptation's gain shows on it as on resnet_18, in a fifth of the time
    return [
        f"results_dir={results}",
        f"model.backbone={TINY_BACKBONE}",
        "model.pretrain_choice=''",
        "model.input_height=64",
        "model.input_width=32",
        "dataset.batch_size=32",
        "dataset.num_instances=4",
        "dataset.num_workers=0",
        "dataset.val_batch_size=64",
        "dataset.pipeline=cpu",
        "train.accelerator=cpu",
        "wandb.enable=false",
        "train.checkpoint_interval=100",
        "train.optim.warmup_iters=1",
    ]


def clustering_quality(checkpoint: Path, unlabeled: Path, identities: dict, **cluster_args) -> dict:
    """How well the model's own features (no camera centring) cluster the unlabeled images into their people:
    scripts/cluster_purity.py's row (purity, agreement)."""
    records = read_unlabeled(str(unlabeled), "unlabeled")
    features = cluster_purity.embed(str(checkpoint), records, batch_size=128)
    truth = np.array([identities[Path(r.path).name] for r in records])
    return cluster_purity.purity_rows(features, truth, [cluster_args.pop("eps")], **cluster_args)[0]


def test_purity_rows_per_eps():
    generator = torch.Generator().manual_seed(0)  # the clustering test's data: 6 people x 8 images + 3 strays
    centres = torch.nn.functional.normalize(torch.randn(6, 32, generator=generator), dim=1)
    identities = np.repeat(np.arange(6), 8)
    features = torch.cat(
        [
            centres[identities] + 0.05 * torch.randn(48, 32, generator=generator),
            torch.nn.functional.normalize(torch.randn(3, 32, generator=generator), dim=1),
        ]
    )
    truth = np.concatenate([identities, [7, 8, 9]])
    tight, loose = cluster_purity.purity_rows(features, truth, [0.3, 0.99], k1=10, k2=1)
    assert (tight["eps"], tight["clusters"], tight["outliers"], tight["purity"]) == (0.3, 6, 3, 1.0)
    assert tight["labelled_correctly"] == pytest.approx(48 / 51)
    assert tight["agreement"] == pytest.approx(1.0)  # the strays are people of their own
    assert loose["clusters"] < 6 and loose["purity"] < 1.0 and loose["agreement"] < 1.0  # a radius that merges people


def test_agreement_counts_split_people_that_purity_ignores():
    identities = np.repeat(np.arange(4), 6)
    split = np.repeat(np.arange(8), 3)  # every person in two pure clusters
    assert purity(split, identities) == 1.0 and agreement(split, identities) < 0.7
    assert agreement(identities.copy(), identities) == 1.0
    assert agreement(np.full(24, -1), identities) == 0.0  # all outliers: no pair joined


@pytest.mark.slow
def test_adaptation_beats_direct_transfer_on_a_colour_shifted_domain(tmp_path):
    from reid_tao.builders import load_experiment
    from reid_tao.data.synthetic import generate_synthetic_market
    from reid_tao.tasks import evaluate, train

    source = generate_synthetic_market(tmp_path / "source", height=64, width=32, seed=0)
    target = tmp_path / "target"
    identities = make_target_domain(source, target)
    train.run(
        load_experiment(
            None,
            adaptation_common(tmp_path / "src")
            + [
                f"dataset.train_dataset_dir={source / 'bounding_box_train'}",
                "train.num_epochs=6",
                "train.optim.lr_steps=[6]",
                "train.optim.base_lr=0.0007",
            ],
        )
    )
    source_model = tmp_path / "src" / "train" / "reid_model_latest.pth"
    cluster_args = dict(eps=0.5, min_samples=4, k1=10, k2=6)
    adapt = [
        f"dataset.train_dataset_dir={target / 'unlabeled'}",
        "adaptation.enable=true",
        f"adaptation.source_checkpoint={source_model}",
        "train.num_epochs=6",
        "train.optim.lr_steps=[6]",
        # gentle on 384 images: at BoT's 3.5e-4 (without AdaBN and camera centring) the few, noisy pseudo
        # identities pulled mAP below direct
        "train.optim.base_lr=0.0001",
        "adaptation.target_batch_norm=true",
        "adaptation.camera_centring=true",
        *(f"adaptation.{key}={value}" for key, value in cluster_args.items()),
    ]
    train.run(load_experiment(None, adaptation_common(tmp_path / "adapted") + adapt))
    adapted_model = tmp_path / "adapted" / "train" / "reid_model_latest.pth"

    def target_map(checkpoint, name):
        metrics = evaluate.run(
            load_experiment(
                None,
                adaptation_common(tmp_path / name)
                + [
                    f"evaluate.checkpoint={checkpoint}",
                    f"dataset.query_dataset_dir={target / 'query'}",
                    f"dataset.test_dataset_dir={target / 'bounding_box_test'}",
                ],
            )
        )
        return metrics.shown.mAP

    direct, adapted = target_map(source_model, "ev_direct"), target_map(adapted_model, "ev_adapted")
    # measured on an AVX2 CPU (train.seed 1234, 0, 1): 0.288 -> 0.435, 0.247 -> 0.397, 0.205 -> 0.372
    assert adapted > direct + 0.03
    # the per-epoch pseudo-label figures reach status.json
    lines = [json.loads(line) for line in (tmp_path / "adapted" / "train" / "status.json").read_text().splitlines()]
    kpi = [line["kpi"] for line in lines if line.get("status") == "RUNNING" and "epoch" in line]
    assert len(kpi) == 6 and all({"clusters", "outliers", "images_used"} <= set(k) for k in kpi)
    assert all(k["clusters"] >= 8 and k["clusters"] + k["outliers"] <= len(identities) for k in kpi)
    unlabeled = target / "unlabeled"
    before = clustering_quality(source_model, unlabeled, identities, **cluster_args)
    after = clustering_quality(adapted_model, unlabeled, identities, **cluster_args)
    # The model's own features, not the camera-centred ones adaptation clusters: with resnet_18, centring alone
    # already made the source's clusters nearly pure, and their purity fell in two of five seeds. The features'
    # own clusters gain: here (seeds 1234, 0, 1) purity 0.494 -> 0.623, 0.470 -> 0.586, 0.494 -> 0.667,
    # adjusted Rand index 0.177 -> 0.297, 0.167 -> 0.253, 0.194 -> 0.297.
    assert after["purity"] > before["purity"]
    assert after["agreement"] > before["agreement"] + 0.05


@pytest.mark.parametrize(
    "overrides,message",
    [
        ([], "adaptation.source_checkpoint"),
        (["adaptation.source_checkpoint=x.pth", "dataset.sampler=softmax"], "PK batches"),
        (["adaptation.source_checkpoint=x.pth", "model.with_center_loss=true"], "center loss"),
        (["adaptation.source_checkpoint=x.pth", "adaptation.eps=0"], "adaptation.eps"),
    ],
)
def test_adaptation_spec_errors(overrides, message):
    from reid_tao.builders import load_experiment
    from reid_tao.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_experiment(None, ["adaptation.enable=true", *overrides])


def test_adaptation_fields_without_enable_are_noticed():
    from reid_tao.builders import load_experiment
    from reid_tao.config.notices import field_notices

    lines = field_notices(load_experiment(None, ["adaptation.eps=0.5"]), "train")
    assert any("adaptation.eps=0.5 has no effect: adaptation.enable is false" in line for line in lines)
    lines = field_notices(
        load_experiment(
            None, ["adaptation.enable=true", "adaptation.source_checkpoint=x.pth", "model.label_smooth=false"]
        ),
        "train",
    )
    assert any(line.startswith("model.label_smooth=False has no effect") for line in lines)


# ---------------------------------------------------------------------------------------- source interpolation
def test_source_interpolation_blends_floating_tensors_only():
    from reid_tao.engine.adaptation import FinalWeights

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    source = {
        name: torch.full_like(tensor, 4.0) if tensor.is_floating_point() else tensor + 5
        for name, tensor in model.state_dict().items()
    }
    source["0.bias"] = torch.zeros(3)  # shaped differently (like the unused classifier): left alone
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.fill_(0) if tensor.is_floating_point() else None
    callback = FinalWeights(source, 0.25)
    assert callback.interpolate(model) == 5  # 0.weight; the BN layer's weight, bias, running mean and var
    state = model.state_dict()
    assert torch.equal(state["0.weight"], torch.full((2, 2), 1.0))  # 0.25 x 4 + 0.75 x 0
    assert torch.equal(state["0.bias"], torch.zeros(2))
    assert int(state["1.num_batches_tracked"]) == 0  # integer buffers are counts, not weights
    with pytest.raises(ValueError, match="source_weight"):
        FinalWeights(source, 1.5)


def test_batch_norm_statistics_are_measured_on_all_batches():
    from reid_tao.engine.adaptation import measure_batch_norm

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3)).eval()
    batches = [torch.randn(5, 3) * 3 + 1, torch.randn(7, 3) - 2]
    measure_batch_norm(model, batches)
    with torch.no_grad():
        means = [model[0](batch).mean(0) for batch in batches]
        variances = [model[0](batch).var(0) for batch in batches]
    # the plain average of the per-batch statistics (momentum None), not a momentum average
    assert torch.allclose(model[1].running_mean, (means[0] + means[1]) / 2, atol=1e-5)
    assert torch.allclose(model[1].running_var, (variances[0] + variances[1]) / 2, atol=1e-5)
    assert not model.training and model[1].momentum == 0.1  # mode and momentum restored


def adapt_tiny(market: Path, results: Path, source: Path, *extra: str) -> Path:
    from reid_tao.builders import load_experiment
    from reid_tao.tasks import train

    from helpers import tiny_overrides

    train.run(
        load_experiment(
            None,
            tiny_overrides(market, results, **{"dataset.query_dataset_dir": "null", "dataset.test_dataset_dir": "null"})
            + [
                *tiny_adaptation_overrides(source),
                "adaptation.min_samples=2",
                "train.optim.base_lr=0.01",
                "adaptation.tracklets=off",
                *extra,
            ],
        )
    )
    return results / "train" / "reid_model_latest.pth"


def model_weights(checkpoint: Path) -> dict:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    return {
        key: value
        for key, value in state.items()
        if key.startswith("model.") and value.is_floating_point() and "classifier" not in key
    }


def test_source_weight_sets_the_final_weights(tiny_market, tmp_path):
    """source_weight 1 ends the run on the source's weights with batch-norm statistics measured on the training
    images; 0 keeps what training made of them."""
    from torch.optim.swa_utils import update_bn

    from reid_tao.builders import load_trained_model
    from reid_tao.data.datamodule import eval_dataset, eval_loader

    from helpers import write_untrained_checkpoint

    source = write_untrained_checkpoint(tiny_market, tmp_path / "source.pth")
    source_state = model_weights(source)
    adapted = model_weights(adapt_tiny(tiny_market, tmp_path / "plain", source))
    assert any(not torch.equal(adapted[key], source_state[key]) for key in source_state)
    anchored = model_weights(adapt_tiny(tiny_market, tmp_path / "anchored", source, "adaptation.source_weight=1.0"))
    statistics = [key for key in source_state if key.endswith(("running_mean", "running_var"))]
    assert statistics and all(
        torch.equal(anchored[key], value) for key, value in source_state.items() if key not in statistics
    )
    trained = load_trained_model(str(source), "checkpoint")
    records = read_unlabeled(str(tiny_market / "bounding_box_train"), "train")
    update_bn(
        (batch.images for batch in eval_loader(eval_dataset(records, trained.preprocessing.eval_transform()), 16, 0)),
        trained.model,
    )
    measured = trained.model.state_dict()
    assert all(torch.allclose(anchored[key], measured[key[len("model.") :]], atol=1e-5) for key in statistics)
    assert not all(torch.allclose(anchored[key], source_state[key]) for key in statistics)


def test_a_resumed_run_interpolates_with_the_source_file(tiny_market, tmp_path):
    from reid_tao.builders import ADAPTATION_NUM_CLASSES, build_module, load_experiment
    from reid_tao.builders.adaptation import final_weights

    from helpers import tiny_overrides, write_untrained_checkpoint

    source = write_untrained_checkpoint(tiny_market, tmp_path / "source.pth")
    config = load_experiment(
        None,
        tiny_overrides(tiny_market, tmp_path)
        + ["adaptation.enable=true", f"adaptation.source_checkpoint={source}", "adaptation.source_weight=0.5"],
    )
    module = build_module(config, ADAPTATION_NUM_CLASSES, load_pretrained=False)  # as when resuming
    callback = final_weights(config, module, resuming=True)
    expected = model_weights(source)
    assert all(torch.equal(callback.source_state[key[len("model.") :]], value) for key, value in expected.items())
    assert (
        final_weights(
            load_experiment(
                None,
                tiny_overrides(tiny_market, tmp_path)
                + ["adaptation.enable=true", f"adaptation.source_checkpoint={source}"],
            ),
            module,
            resuming=False,
        ).source_state
        == {}
    )


def test_shift_domain_script_keeps_names_and_changes_the_camera(tmp_path):
    spec = importlib.util.spec_from_file_location("shift_domain", _SCRIPT.parent / "shift_domain.py")
    shift_domain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shift_domain)
    write_image(tmp_path / "in" / "0001_c1s1_000001_00.jpg", 200)
    Image.fromarray(np.tile(np.array([255, 0, 0], np.uint8), (16, 8, 1))).save(tmp_path / "in" / "red.png")
    shift_domain.main([str(tmp_path / "in"), str(tmp_path / "out")])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0001_c1s1_000001_00.jpg", "red.png"]
    red = np.asarray(Image.open(tmp_path / "out" / "red.png")).astype(int)
    assert red.shape == (16, 8, 3)
    # desaturated, cast and lifted: pure red becomes a dull grey-red, far from (255, 0, 0)
    assert 60 < red[..., 0].mean() < 200 and red[..., 1].mean() > 20 and red[..., 2].mean() > 20


def test_camera_centring_joins_a_person_across_cameras():
    from reid_tao.evaluation.clustering import camera_centred

    generator = torch.Generator().manual_seed(1)
    people = torch.nn.functional.normalize(torch.randn(5, 32, generator=generator), dim=1)
    camera_looks = 1.5 * torch.nn.functional.normalize(torch.randn(2, 32, generator=generator), dim=1)
    identities = np.tile(np.repeat(np.arange(5), 6), 2)  # 5 people x 6 images on each of 2 cameras
    cameras = torch.repeat_interleave(torch.tensor([1, 2]), 30)
    features = people[identities] + camera_looks[cameras - 1] + 0.05 * torch.randn(60, 32, generator=generator)
    plain = cluster_features(features, eps=0.3, min_samples=4, k1=11, k2=1)
    centred = cluster_features(features, eps=0.3, min_samples=4, k1=11, k2=1, cameras=cameras)
    # the cameras' looks split people and merge others: measured 8 clusters, 18 outliers, purity 0.86
    assert plain.num_clusters > 5 and plain.num_outliers > 0 and purity(plain.labels, identities) < 0.9
    assert centred.num_clusters == 5 and centred.num_outliers == 0 and purity(centred.labels, identities) == 1.0
    # the centroids stay means of the features as given (the memory compares them with the model's output)
    first = torch.nn.functional.normalize(
        torch.nn.functional.normalize(features, dim=1)[centred.labels == 0].sum(0), dim=0
    )
    assert torch.allclose(centred.centroids[0], first, atol=1e-5)
    shifted = camera_centred(torch.nn.functional.normalize(features, dim=1), cameras)
    assert torch.allclose(shifted.norm(dim=1), torch.ones(60))


def test_target_batch_norm_is_measured_before_the_first_clustering_of_a_new_run(tiny_market, tmp_path, monkeypatch):
    from reid_tao.engine import adaptation

    from helpers import write_untrained_checkpoint

    calls = []
    measure, cluster = adaptation.measure_batch_norm, adaptation.cluster_features
    monkeypatch.setattr(adaptation, "measure_batch_norm", lambda *a: (calls.append("bn"), measure(*a))[1])
    monkeypatch.setattr(
        adaptation,
        "cluster_features",
        lambda *a, **k: (
            calls.append("cameras" if k["cameras"] is not None and k["centring"] else "plain"),
            cluster(*a, **k),
        )[1],
    )
    source = write_untrained_checkpoint(tiny_market, tmp_path / "source.pth")
    adapt_tiny(
        tiny_market,
        tmp_path / "run",
        source,
        "train.num_epochs=1",
        "adaptation.target_batch_norm=true",
        "adaptation.camera_centring=true",
    )
    assert calls == ["bn", "cameras", "bn"]  # and again for the final weights, after the last step
    calls.clear()
    adapt_tiny(
        tiny_market,
        tmp_path / "run",
        source,
        "train.num_epochs=2",
        "adaptation.target_batch_norm=true",
        "adaptation.camera_centring=true",
    )  # resumes the finished epoch: its statistics are kept
    assert calls == ["cameras", "bn"]
    calls.clear()
    adapt_tiny(
        tiny_market,
        tmp_path / "off",
        source,
        "train.num_epochs=1",
        "adaptation.target_batch_norm=false",
        "adaptation.camera_centring=false",
    )
    assert calls == ["plain"]


def test_batch_norm_measurement_skips_a_one_image_batch():
    from reid_tao.engine.adaptation import measure_batch_norm
    from reid_tao.errors import DataError

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    batches = [torch.randn(4, 3), torch.randn(1, 3)]  # e.g. 5 images at val_batch_size 4
    measure_batch_norm(model, batches)
    with torch.no_grad():
        expected = model[0](batches[0]).mean(0)
    assert torch.allclose(model[1].running_mean, expected, atol=1e-5)
    with pytest.raises(DataError, match="at least 2 training images"):
        measure_batch_norm(model, [torch.randn(1, 3)])


def test_a_stop_signal_ends_the_clustering_between_batches(monkeypatch):
    import signal
    from types import SimpleNamespace

    from reid_tao.data.batch import Batch
    from reid_tao.engine import adaptation
    from reid_tao.engine.preemption import PreemptionCheckpoint

    stopper = PreemptionCheckpoint(Path("unused.pth"))
    embedded = []

    def images(*args):
        for index in range(5):
            embedded.append(index)
            if index == 1:
                stopper.received = signal.SIGTERM  # arrives while the second batch is embedded
            yield Batch(torch.randn(2, 3, 8, 4), None, None, None)

    monkeypatch.setattr(adaptation, "training_images", images)
    monkeypatch.setattr(adaptation, "cluster_features", lambda *a, **k: pytest.fail("clustered after a stop"))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(96, 4))
    model.neck_feature = model.forward
    module = SimpleNamespace(model=model, device=torch.device("cpu"))
    trainer = SimpleNamespace(callbacks=[stopper])
    callback = adaptation.PseudoLabelCallback([ClusterMemoryLoss(4)])
    assert callback._cluster(trainer, module, torch.zeros(10)) is None
    assert embedded == [0, 1]  # stopped at the batch the signal came in, not after all five


def test_track_groups_from_crop_names():
    from reid_tao.data.records import ImageRecord
    from reid_tao.data.tracklets import track_groups

    names = [
        "0007_c1s1_000010_00.jpg",
        "0007_c1s1_000011_00.jpg",
        "0007_c2s1_000010_00.jpg",  # track 7, 2 cameras
        "0008_c1s1_000010_00.jpg",
        "0007_c1s2_000500_00.jpg",
    ]  # another track; track 7 of another sequence
    groups = track_groups([ImageRecord(f"/crops/{name}", 0, 1) for name in names])
    assert groups[0] == groups[1] and len(set(groups.tolist())) == 4  # the same number elsewhere is another track
    assert track_groups([ImageRecord("/crops/a8f3.jpg", 0, 1), ImageRecord(f"/crops/{names[0]}", 0, 1)]) is None


def test_tracks_are_never_split_and_a_lone_track_is_an_identity():
    from reid_tao.engine.adaptation import cluster_tracks

    generator = torch.Generator().manual_seed(3)
    people = torch.nn.functional.normalize(torch.randn(4, 16, generator=generator), dim=1)
    # people 0-2: two tracks each (cameras 1 and 2); person 3: one track; every track has 3 images
    track_person = torch.tensor([0, 0, 1, 1, 2, 2, 3])
    groups = np.repeat(np.arange(7), 3)
    features = people[track_person[groups]] + 0.05 * torch.randn(21, 16, generator=generator)
    features[1] = -people[0]  # one image of track 0 looks like nobody: alone it would not join its track's cluster
    cameras = torch.tensor([1, 2, 1, 2, 1, 2, 1]).repeat_interleave(3)
    labels, clustering = cluster_tracks(features, groups, cameras, eps=0.5, min_samples=2, k1=2, k2=1)
    for track in range(7):
        assert len(set(labels[groups == track].tolist())) == 1  # never split
    assert labels[0] == labels[3] != labels[6]  # person 0's tracks on two cameras joined
    assert (labels >= 0).all() and len(set(labels.tolist())) == 4  # person 3's lone track is an identity


def test_the_mean_teacher_is_a_moving_average_of_the_weights():
    from types import SimpleNamespace

    from reid_tao.engine.adaptation import MeanTeacher

    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.constant_(model.weight, 1.0)
    teacher, module = MeanTeacher(momentum=0.75), SimpleNamespace(model=model)
    teacher.on_train_start(None, module)
    for value in (3.0, 5.0):
        torch.nn.init.constant_(model.weight, value)
        teacher.on_train_batch_end(None, module, None, None, 0)
    # the first step's weights start the average (AveragedModel), then 0.75 * 3 + 0.25 * 5: momentum is the
    # teacher's own share (the other order would give 4.5)
    assert torch.allclose(teacher.model.weight, torch.full((1, 2), 3.5))
    restored = MeanTeacher(momentum=0.75)
    restored.load_state_dict(teacher.state_dict())
    restored.on_train_start(None, SimpleNamespace(model=torch.nn.Linear(2, 1, bias=False)))
    assert torch.allclose(restored.model.weight, teacher.model.weight)  # resumed from the checkpoint's state


# ---------------------------------------------------------------------------- the labelled source stream
def source_datamodule(target: Path, source: Path, **loader):
    from reid_tao.data.datamodule import LoaderSettings, ReidDataModule
    from reid_tao.data.preprocessing import Preprocessing

    settings = LoaderSettings(**{"batch_size": 4, "num_instances": 2, "num_workers": 0, "seed": 3, **loader})
    datamodule = ReidDataModule(
        str(target / "bounding_box_train"),
        loader=settings,
        pipeline="workers",
        unlabeled=True,
        source_dir=str(source / "bounding_box_train"),
        preprocessing=Preprocessing((32, 16), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
    )
    datamodule.setup("fit")
    return datamodule


def batches_of(loader) -> list:
    """(target batch, source batch) per step of a CombinedLoader."""
    return [(batch["target"], batch["source"]) for batch, _, _ in iter(loader)]


def test_the_source_stream_gives_pk_batches_for_as_many_steps_as_the_target(tiny_market, tmp_path):
    from helpers import make_market

    # one source PK epoch is a single batch (3 identities x 2 images, P = 2); the target's epoch has several
    source = make_market(tmp_path / "source", train_ids=range(1, 4), test_ids=(), cams=(1,), per_cam=2)
    datamodule = source_datamodule(tiny_market, source)
    assert datamodule.num_source_classes == 3
    datamodule.set_pseudo_labels([index // 6 for index in range(36)])  # 6 pseudo identities x 6 images
    loader = datamodule.train_dataloader()
    target_batches = len(
        datamodule.train_pipeline.loader(
            datamodule.train_records, datamodule.train_labels, loader.iterables["target"].sampler, 4
        )
    )
    steps = batches_of(loader)
    assert target_batches > 1 and len(loader) == len(steps) == target_batches  # the target's epoch length
    for target, source_batch in steps:
        assert target.images.shape == source_batch.images.shape == (4, 3, 32, 16)
        pids, counts = source_batch.pids.unique(return_counts=True)
        assert len(pids) == 2 and counts.tolist() == [2, 2]  # P source identities x K images
        assert set(pids.tolist()) <= {0, 1, 2}
    # the source stream cycles through fresh PK epochs: not the same batch at every step
    assert len({tuple(source_batch.pids.tolist()) for _, source_batch in steps}) > 1
    # resuming inside the epoch: both streams skip the batches already trained on
    datamodule.start_epoch_at(0, 1)
    resumed = batches_of(datamodule.train_dataloader())
    assert len(resumed) == target_batches - 1
    assert all(
        torch.equal(a.pids, b.pids) and torch.equal(c.pids, d.pids) for (a, c), (b, d) in zip(resumed, steps[1:])
    )


def test_the_cycling_sampler_plays_the_epochs_of_its_sampler_one_after_the_other():
    from reid_tao.data.samplers import CyclingSampler

    inner = PKSampler([0, 0, 1, 1, 2, 2], batch_size=4, num_instances=2, seed=5)  # 4 indices per epoch
    stream = [index for epoch in range(4) for index in (inner.set_epoch(epoch) or list(inner))]
    cycling = CyclingSampler(PKSampler([0, 0, 1, 1, 2, 2], batch_size=4, num_instances=2, seed=5), length=6)
    for epoch in range(2):
        cycling.set_epoch(epoch)
        assert len(cycling) == 6 and list(cycling) == stream[6 * epoch : 6 * (epoch + 1)]


def source_config(market: Path, results: Path, source: Path, checkpoint: Path, *extra: str):
    from reid_tao.builders import load_experiment

    from helpers import tiny_overrides

    return load_experiment(
        None,
        tiny_overrides(market, results)
        + [
            "adaptation.enable=true",
            f"adaptation.source_checkpoint={checkpoint}",
            f"adaptation.source_dataset_dir={source / 'bounding_box_train'}",
            *extra,
        ],
    )


def test_a_source_step_trains_the_classifier_and_logs_its_loss(tiny_market, tmp_path):
    import pytorch_lightning as pl

    from reid_tao.builders import build_datamodule, build_module, training_num_classes

    from helpers import write_untrained_checkpoint

    checkpoint = write_untrained_checkpoint(tiny_market, tmp_path / "source.pth")

    def one_step(*extra):
        config = source_config(tiny_market, tmp_path, tiny_market, checkpoint, "train.seed=1", *extra)
        datamodule = build_datamodule(config, with_validation=False)
        datamodule.setup("fit")
        datamodule.set_pseudo_labels([index // 6 for index in range(36)])
        module = build_module(config, training_num_classes(config, datamodule))
        memory = module.loss.term("memory")
        memory.reset_pseudo_labels(torch.randn(36, 32), torch.tensor(datamodule.train_labels), torch.ones(36))
        before = module.model.classifier.weight.detach().clone()
        grads = []
        if module.model.classifier.weight.requires_grad:
            module.model.classifier.weight.register_hook(lambda grad: grads.append(grad.abs().sum().item()))
        trainer = pl.Trainer(
            max_steps=1,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
        )
        trainer.fit(module, datamodule=datamodule)
        return module, before, grads, trainer.callback_metrics

    module, before, grads, metrics = one_step()
    assert module.model.classifier.weight.shape[0] == 6  # one row per source identity
    assert grads and grads[0] > 0 and not torch.equal(module.model.classifier.weight, before)
    assert "train_source_loss" in metrics and float(metrics["train_source_loss"]) > 0
    assert float(metrics["train_loss"]) > float(metrics["train_memory_loss"])  # the source term is in the total
    # source-free: the 1-row classifier gets no gradient and stays as it was
    module, before, grads, metrics = one_step("adaptation.source_dataset_dir=null")
    assert module.model.classifier.weight.shape[0] == 1 and not module.model.classifier.weight.requires_grad
    assert not grads and torch.equal(module.model.classifier.weight, before)
    assert "train_source_loss" not in metrics


def test_the_source_checkpoint_classifier_is_loaded_when_the_identities_match(tiny_market, tmp_path, caplog):
    from reid_tao.builders import build_model

    from helpers import write_untrained_checkpoint

    checkpoint = write_untrained_checkpoint(tiny_market, tmp_path / "source.pth", num_classes=6)
    stored = torch.load(checkpoint, weights_only=True)["state_dict"]["model.classifier.weight"]
    config = source_config(tiny_market, tmp_path, tiny_market, checkpoint)
    assert torch.equal(build_model(config, 6).classifier.weight, stored)  # ready-made class centres
    with caplog.at_level("INFO"):
        fresh = build_model(config, 7).classifier.weight
    assert fresh.shape == (7, 32) and not torch.equal(fresh[:6], stored)
    assert any(
        "holds 6 classifier rows for the 7 identities" in r.getMessage() and "afresh" in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.parametrize("case", ["missing", "one identity"])
def test_a_bad_source_dataset_dir_is_one_line(tiny_market, tmp_path, capsys, case):
    from reid_tao.cli import main

    from helpers import make_market, tiny_overrides, write_untrained_checkpoint

    checkpoint = write_untrained_checkpoint(tiny_market, tmp_path / "source.pth")
    source = tmp_path / "missing" if case == "missing" else make_market(tmp_path / "one", train_ids=(1,), test_ids=())
    code = main(
        [
            "train",
            *tiny_overrides(tiny_market, tmp_path / "results"),
            "adaptation.enable=true",
            f"adaptation.source_checkpoint={checkpoint}",
            f"adaptation.source_dataset_dir={source / 'bounding_box_train'}",
            "wandb.enable=false",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and "Traceback" not in "\n".join(err)
    assert len(err) == 1 and "adaptation.source_dataset_dir" in err[0]
    assert ("does not exist" if case == "missing" else "1 identity") in err[0]


@pytest.mark.slow
def test_a_source_anchored_run_trains_and_resumes(tiny_market, tmp_path):
    from reid_tao.cli import main

    from helpers import make_market, tiny_overrides, write_untrained_checkpoint

    checkpoint = write_untrained_checkpoint(tiny_market, tmp_path / "source.pth")
    source = make_market(tmp_path / "source", train_ids=range(1, 9), test_ids=())
    results = tmp_path / "results"
    args = [
        "train",
        *tiny_overrides(
            tiny_market,
            results,
            **{
                "dataset.query_dataset_dir": "null",
                "dataset.test_dataset_dir": "null",
                "train.num_epochs": 1,
                "wandb.enable": "false",
            },
        ),
        *tiny_adaptation_overrides(checkpoint),
        "adaptation.tracklets=off",
        f"adaptation.source_dataset_dir={source / 'bounding_box_train'}",
    ]
    assert main(args) == 0
    latest = results / "train" / "reid_model_latest.pth"
    state = torch.load(latest, weights_only=True)
    assert state["state_dict"]["model.classifier.weight"].shape[0] == 8 and state["reid_tao"]["num_classes"] == 8
    header = (results / "train" / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "train_source_loss" in header
    assert main([*args, "train.num_epochs=2"]) == 0  # resumes from the latest checkpoint: one more epoch
    resumed = torch.load(latest, weights_only=True)
    assert (state["epoch"], resumed["epoch"]) == (0, 1) and resumed["global_step"] == 2 * state["global_step"]


def test_resuming_a_source_free_run_with_a_source_stream_names_the_source_field(tiny_market, tmp_path):
    from reid_tao.builders import check_resumable
    from reid_tao.errors import DataError

    from helpers import write_untrained_checkpoint

    latest = write_untrained_checkpoint(tiny_market, tmp_path / "latest.pth", num_classes=1)  # source-free: 1 row
    torch.save({**torch.load(latest, weights_only=True), "optimizer_states": []}, latest)
    config = source_config(tiny_market, tmp_path, tiny_market, latest)
    with pytest.raises(DataError, match="trained on 1 identities but adaptation.source_dataset_dir has 6"):
        check_resumable(str(latest), "train.resume_training_checkpoint_path", config, 6)


def test_adapt_protocol_names_market_images_as_tracks_per_person_camera_and_sequence(tmp_path):
    spec = importlib.util.spec_from_file_location("adapt_protocol", _SCRIPT.parent / "adapt_protocol.py")
    adapt_protocol = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(adapt_protocol)
    names = ["0002_c1s1_000451_03", "0002_c1s1_000551_01", "0002_c2s1_000100_01", "0002_c1s2_000700_01"]
    names += ["0007_c1s1_000451_02", "0007_c1s1_000460_02"]
    for name in names:
        write_image(tmp_path / "market" / "bounding_box_train" / f"{name}.jpg", 100)
    folder = adapt_protocol.market_tracks(tmp_path / "market", 6, tmp_path / "tracks")
    records = [ImageRecord(str(path), -1, 0) for path in sorted(folder.iterdir())]
    groups = track_groups(records)
    assert groups is not None and len(set(groups.tolist())) == 4  # (person, camera, sequence): 3 for 0002, 1 for 0007
    stems = {path.name.split("_", 1)[1].rsplit(".", 1)[0] for path in folder.iterdir()}
    assert stems == {name.split("_", 1)[1] for name in names}  # camera, sequence, frame and box kept
    assert not any(path.name.startswith(("0002_", "0007_")) for path in folder.iterdir())  # no identity shown
