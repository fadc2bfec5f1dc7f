"""Domain adaptation: unlabeled readers, the cluster memory, clustering, and `reid train` with adaptation."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reid_tao.data.samplers import PKSampler, SubsetSampler
from reid_tao.data.unlabeled import read_unlabeled
from reid_tao.evaluation.clustering import cluster_features, purity
from reid_tao.model.losses import ClusterMemoryLoss, MemoryLossSum, ReidLoss


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
    assert [(Path(r.path).name, r.camid) for r in records] == [("p.jpg", 1), ("0001_c4s1_000001_00.jpg", 4),
                                                               ("q.jpg", 2)]


def test_cluster_memory_loss_and_momentum_update():
    memory = ClusterMemoryLoss(feat_dim=2, temperature=0.5, momentum=0.5)
    memory.reset(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    features = torch.tensor([[2.0, 0.0], [0.0, 3.0]], requires_grad=True)
    loss = memory(features, torch.tensor([0, 1]))
    expected = torch.nn.functional.cross_entropy(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 1]))
    assert torch.isclose(loss, expected)
    loss.backward()  # the in-place memory update must not break the backward pass
    assert features.grad is not None
    memory(torch.tensor([[0.0, 1.0]]), torch.tensor([0]))  # cluster 0 pulled half-way towards (0, 1)
    assert torch.allclose(memory.centroids[0], torch.nn.functional.normalize(torch.tensor([0.5, 0.5]), dim=0))
    assert torch.allclose(memory.centroids[1], torch.tensor([0.0, 1.0]))
    memory.eval()
    memory(torch.tensor([[1.0, 0.0]]), torch.tensor([1]))  # no update outside training
    assert torch.allclose(memory.centroids[1], torch.tensor([0.0, 1.0]))


def test_memory_loss_sum_adds_the_triplet_loss():
    memory = ClusterMemoryLoss(feat_dim=4)
    memory.reset(torch.eye(4)[:2])
    triplet = ReidLoss(num_classes=1, feat_dim=4, use_id=False, use_triplet=True)
    total = MemoryLossSum(memory, 0.5, triplet)
    features, labels = torch.randn(4, 4), torch.tensor([0, 0, 1, 1])
    parts = total(None, features, labels)
    assert set(parts) == {"loss", "memory_loss", "triplet_loss"}
    assert torch.isclose(parts["loss"], 0.5 * parts["memory_loss"] + parts["triplet_loss"], atol=1e-5)
    assert total.id_loss is None and total.center_parameters() == []


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
