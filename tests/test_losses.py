"""Losses: values on hand-checked cases, gradient routing, autocast behaviour, component selection."""

import math
import pickle

import pytest
import torch
import torch.nn.functional as F

from reid_tao.builders import loss_terms
from reid_tao.engine.optim import build_center_optimizer
from reid_tao.errors import ConfigError
from reid_tao.model.losses import LOSS_TERMS, LossSettings, LossTerm, PseudoLabelTerm, build_reid_loss
from reid_tao.model.losses.center import CenterLoss
from reid_tao.model.losses.combined import ReidLoss
from reid_tao.model.losses.cross_entropy import IdLoss
from reid_tao.model.losses.triplet import TripletLoss, pairwise_euclidean

# Four 2-D points, two identities. Distances: a0-a1 = 1, b0-b1 = 4, a0-b0 = 3, a0-b1 = 5,
# a1-b0 = sqrt(10), a1-b1 = sqrt(18).
POINTS = torch.tensor([[0.0, 0.0], [0.0, 1.0], [3.0, 0.0], [3.0, 4.0]])
LABELS = torch.tensor([0, 0, 1, 1])
# Per anchor (d_ap, d_an): a0 (1, 3); a1 (1, sqrt 10); b0 (4, 3); b1 (4, min(5, sqrt 18) = sqrt 18).
D_AP = torch.tensor([1.0, 1.0, 4.0, 4.0])
D_AN = torch.tensor([3.0, math.sqrt(10.0), 3.0, math.sqrt(18.0)])


def make_loss(names=("id", "triplet"), num_classes=4, feat_dim=6, triplet_margin=0.3, **weights) -> ReidLoss:
    return build_reid_loss(names, LossSettings(num_classes, feat_dim, triplet_margin=triplet_margin), weights)


def test_pairwise_distances_match_cdist_with_exact_zero_diagonal():
    x = torch.randn(7, 5) * 30 + 100  # large norms: the expansion leaves noise on the diagonal
    d = pairwise_euclidean(x)
    torch.testing.assert_close(d, torch.cdist(x, x), atol=2e-2, rtol=1e-3)
    assert torch.equal(torch.diagonal(d), torch.zeros(7))


def test_triplet_hard_mining_with_margin():
    loss, d_ap, d_an = TripletLoss(margin=1.5)(POINTS, LABELS, return_distances=True)
    torch.testing.assert_close(d_ap, D_AP)
    torch.testing.assert_close(d_an, D_AN)
    # Margin 1.5: a0 (-0.5) and a1 (1 - 3.16 + 1.5) are clipped to 0; b0 gives 2.5, b1 4 - 4.24 + 1.5.
    assert loss.item() == pytest.approx((2.5 + 5.5 - math.sqrt(18.0)) / 4, rel=1e-6)
    assert TripletLoss(margin=0.0)(POINTS, LABELS).item() == pytest.approx(0.25, rel=1e-6)  # only b0
    # A margin large enough to make every anchor active: mean(d_ap - d_an + m).
    big = TripletLoss(margin=4.0)(POINTS, LABELS)
    torch.testing.assert_close(big, (D_AP - D_AN + 4.0).mean())
    by_hand = (1 - 3) + (1 - math.sqrt(10)) + (4 - 3) + (4 - math.sqrt(18))
    assert big.item() == pytest.approx(by_hand / 4 + 4.0, abs=1e-5)


def test_triplet_soft_margin():
    loss = TripletLoss(margin=None)(POINTS, LABELS)
    expected = sum(math.log1p(math.exp(a - n)) for a, n in zip(D_AP.tolist(), D_AN.tolist())) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_triplet_gradients_finite_on_degenerate_batches():
    # Duplicate points (distance 0) and a batch with one identity must not give NaN gradients.
    x = torch.tensor([[1.0, 1.0], [1.0, 1.0], [2.0, 0.0], [5.0, 5.0]], requires_grad=True)
    for margin in (0.3, None):
        TripletLoss(margin)(x, torch.tensor([0, 0, 1, 2])).backward()
        assert torch.isfinite(x.grad).all()
        x.grad = None
    single = TripletLoss(0.3)(x, torch.tensor([3, 3, 3, 3]))
    single.backward()
    assert single.item() == 0.0 and torch.isfinite(x.grad).all()
    # the values too: anchors 0 and 1 coincide (d_ap 0); nearest negatives sqrt 2, sqrt 2, sqrt 2 (from
    # point 2); anchors 2 and 3 have no positive (d_ap 0) and nearest negatives sqrt 2 and sqrt 32
    d_an = torch.tensor([2.0, 2.0, 2.0, 32.0]).sqrt()
    torch.testing.assert_close(TripletLoss(2.0)(x, torch.tensor([0, 0, 1, 2])), F.relu(2.0 - d_an).mean())
    torch.testing.assert_close(TripletLoss(None)(x, torch.tensor([0, 0, 1, 2])), F.softplus(-d_an).mean())


def test_triplet_takes_the_hardest_of_several_positives():
    """Three positives per anchor at different distances: the farthest one is mined, not the nearest."""
    points = torch.tensor(
        [
            [0.0, 0.0],
            [1.0, 0.0],
            [0.0, 2.0],
            [3.0, 0.0],  # id 0
            [10.0, 0.0],
            [10.0, 1.0],
            [12.0, 0.0],
            [10.0, 4.0],
        ]
    )  # id 1
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    loss, d_ap, _ = TripletLoss(margin=100.0)(points, labels, return_distances=True)
    expected_ap = torch.cdist(points, points).masked_fill(labels[:, None] != labels[None, :], 0).amax(dim=1)
    torch.testing.assert_close(d_ap, expected_ap)
    assert d_ap[0].item() == pytest.approx(3.0) and d_ap[4].item() == pytest.approx(4.0)
    negatives = torch.cdist(points, points).masked_fill(labels[:, None] == labels[None, :], float("inf"))
    torch.testing.assert_close(loss, (expected_ap - negatives.amin(dim=1) + 100.0).mean())


def test_triplet_loss_trains_features_apart():
    torch.manual_seed(0)
    x = torch.randn(8, 4, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    criterion = TripletLoss(0.3)
    first = criterion(x, labels).item()
    opt = torch.optim.SGD([x], lr=0.1)
    for _ in range(50):
        opt.zero_grad()
        criterion(x, labels).backward()
        opt.step()
    assert criterion(x, labels).item() < 0.1 * first


def test_negative_margin_is_a_value_error():
    with pytest.raises(ValueError, match="margin"):
        TripletLoss(margin=-0.1)


def test_label_smoothing_equals_bot_formula():
    torch.manual_seed(0)
    logits, targets, eps, k = torch.randn(6, 5), torch.tensor([0, 4, 2, 2, 1, 3]), 0.1, 5
    smoothed = (1 - eps) * F.one_hot(targets, k).float() + eps / k
    expected = (-smoothed * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    torch.testing.assert_close(IdLoss(label_smooth=True)(logits, targets), expected)
    plain = IdLoss(label_smooth=False)(logits, targets)
    torch.testing.assert_close(plain, F.cross_entropy(logits, targets))
    assert not torch.allclose(plain, expected)


def test_center_loss_value():
    criterion = CenterLoss(num_classes=3, feat_dim=2)
    with torch.no_grad():
        criterion.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [10.0, 10.0]]))
    features = torch.tensor([[3.0, 4.0], [1.0, 1.0], [1.0, 2.0]])
    # squared distances: 25, 0 (clamped to 1e-12), 1 -> mean 26/3
    assert criterion(features, torch.tensor([0, 1, 1])).item() == pytest.approx(26 / 3, rel=1e-6)
    assert criterion.centers.shape == (3, 2) and criterion.centers.requires_grad


def test_center_sgd_moves_centers_and_loss_drops():
    torch.manual_seed(0)
    criterion = CenterLoss(num_classes=4, feat_dim=8)
    features = torch.randn(16, 8)
    labels = torch.arange(4).repeat(4)
    opt = build_center_optimizer(criterion.parameters(), center_lr=0.5)
    before = criterion.centers.detach().clone()
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = criterion(features, labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert not torch.allclose(criterion.centers, before)
    assert all(b < a for a, b in zip(losses, losses[1:]))
    assert losses[-1] < 0.6 * losses[0]


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_losses_are_fp32_under_autocast(dtype):
    torch.manual_seed(0)
    net = torch.nn.Linear(6, 4)
    x = torch.randn(8, 6)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    criterion = make_loss(("id", "triplet", "center"), feat_dim=4)
    with torch.autocast(device_type="cpu", dtype=dtype):
        features = net(x)
        assert features.dtype == dtype  # autocast really is active
        out = criterion(features, features, labels)
        triplet = TripletLoss(None)(features, labels)
        center = criterion.center_loss(features, labels)
    for value in (*out.values(), triplet, center):
        assert value.dtype == torch.float32 and torch.isfinite(value)
    out["loss"].backward()
    assert net.weight.grad is not None and torch.isfinite(net.weight.grad).all()


def test_reid_loss_components_and_weights():
    torch.manual_seed(0)
    logits, features = torch.randn(8, 4), torch.randn(8, 6)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    full = make_loss(("id", "triplet", "center"), id=0.5, triplet=2.0, center=0.01)
    out = full(logits, features, labels)
    assert set(out) == {"loss", "id_loss", "triplet_loss", "center_loss"}
    torch.testing.assert_close(out["id_loss"], IdLoss(True)(logits, labels))
    torch.testing.assert_close(out["triplet_loss"], TripletLoss(0.3)(features, labels))
    torch.testing.assert_close(out["center_loss"], full.center_loss(features, labels))
    expected = 0.5 * out["id_loss"] + 2.0 * out["triplet_loss"] + 0.01 * out["center_loss"]
    torch.testing.assert_close(out["loss"], expected)
    assert full.own_parameters() == [full.center_loss.centers]

    id_only = make_loss(("id",))
    out = id_only(logits, features, labels)
    assert set(out) == {"loss", "id_loss"} and id_only.own_parameters() == []
    torch.testing.assert_close(out["loss"], out["id_loss"])

    triplet_only = make_loss(("triplet",), triplet_margin=None)
    out = triplet_only(None, features, labels)
    assert set(out) == {"loss", "triplet_loss"}
    torch.testing.assert_close(out["loss"], TripletLoss(None)(features, labels))

    with pytest.raises(ValueError, match="cannot train alone"):
        make_loss(("center",))
    with pytest.raises(ValueError, match="triplet loss must be >= 0"):
        make_loss(triplet=-1.0)


def test_center_gradient_routing_matches_bot():
    """Features get weight * dL/df; centers get the unweighted dL/dc (BoT's 1/weight rescale)."""
    torch.manual_seed(0)
    weight = 0.0005
    features = torch.randn(8, 6, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    criterion = make_loss(("triplet", "center"), center=weight)
    # Reference: plain center loss on copies.
    ref_features = features.detach().clone().requires_grad_(True)
    ref = CenterLoss(4, 6)
    with torch.no_grad():
        ref.centers.copy_(criterion.center_loss.centers)
    ref(ref_features, labels).backward()

    criterion.triplet_loss.margin = -100.0  # switch the triplet term's gradient off (relu inactive)
    criterion(None, features, labels)["loss"].backward()
    torch.testing.assert_close(features.grad, weight * ref_features.grad)
    torch.testing.assert_close(criterion.center_loss.centers.grad, ref.centers.grad)


# Every dataset.sampler x model.metric_loss_type x model.with_center_loss -> TAO's terms (None: refused).
EXPECTED_TERMS = {
    ("softmax", "triplet", False): ("id",),
    ("softmax", "triplet", True): ("id", "center"),
    ("softmax", "center", False): ("id", "center"),
    ("softmax", "center", True): ("id", "center"),
    ("softmax", "triplet_center", False): ("id", "center"),
    ("softmax", "triplet_center", True): ("id", "center"),
    ("triplet", "triplet", False): ("triplet",),
    ("triplet", "triplet", True): ("triplet", "center"),
    ("triplet", "center", False): None,
    ("triplet", "center", True): None,
    ("triplet", "triplet_center", False): ("triplet", "center"),
    ("triplet", "triplet_center", True): ("triplet", "center"),
    ("softmax_triplet", "triplet", False): ("id", "triplet"),
    ("softmax_triplet", "triplet", True): ("id", "triplet", "center"),
    ("softmax_triplet", "center", False): ("id", "center"),
    ("softmax_triplet", "center", True): ("id", "center"),
    ("softmax_triplet", "triplet_center", False): ("id", "triplet", "center"),
    ("softmax_triplet", "triplet_center", True): ("id", "triplet", "center"),
}


@pytest.mark.parametrize("combination", list(EXPECTED_TERMS))
def test_each_sampler_and_metric_loss_yields_taos_terms(combination):
    expected = EXPECTED_TERMS[combination]
    if expected is None:
        with pytest.raises(
            ConfigError,
            match="dataset.sampler 'triplet' with model.metric_loss_type 'center' leaves only the center loss",
        ):
            loss_terms(*combination)
    else:
        assert loss_terms(*combination) == expected


def test_build_loss_takes_each_weight_from_the_field_its_term_names():
    from reid_tao.builders import build_loss, load_experiment

    config = load_experiment(
        None,
        [
            "model.with_center_loss=true",
            "model.id_loss_weight=0.5",
            "model.triplet_loss_weight=2.0",
            "train.optim.center_loss_weight=0.01",
            "model.no_margin=true",
            "model.label_smooth=false",
        ],
    )
    loss = build_loss(config, num_classes=5, feat_dim=6)
    assert loss.names == ("id", "triplet", "center")
    assert loss.weights == {"id": 0.5, "triplet": 2.0, "center": 0.01}
    assert loss.term("triplet").margin is None and loss.term("id").epsilon == 0.0
    assert tuple(loss.term("center").centers.shape) == (5, 6)


def test_loss_terms_mapping_rejects_unknown_names():
    with pytest.raises(ConfigError, match="dataset.sampler"):
        loss_terms("random", "triplet", False)
    with pytest.raises(ConfigError, match="metric_loss_type"):
        loss_terms("softmax", "arcface", False)


def test_losses_pickle_and_state_dict():
    criterion = make_loss(("id", "triplet", "center"))
    clone = pickle.loads(pickle.dumps(criterion))
    torch.testing.assert_close(clone.center_loss.centers, criterion.center_loss.centers)
    assert list(criterion.state_dict()) == ["center_loss.centers"]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_reid_loss_runs_on_the_device_of_its_inputs(device):
    torch.manual_seed(0)
    criterion = make_loss(("id", "triplet", "center")).to(device)
    logits = torch.randn(8, 4, device=device, requires_grad=True)
    features = torch.randn(8, 6, device=device, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3], device=device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        out = criterion(logits, features, labels)
    out["loss"].backward()
    assert all(v.device.type == device and v.dtype == torch.float32 for v in out.values())
    assert features.grad.device.type == device and criterion.center_loss.centers.grad is not None


class SpreadTerm(LossTerm):
    """A made-up term for the tests: mean squared feature norm (needs nothing but the features)."""

    def value(self, logits, features, targets):
        return features.float().pow(2).sum(dim=1).mean()


def test_a_term_registered_in_the_table_is_summed_and_returned_by_name(monkeypatch):
    monkeypatch.setitem(LOSS_TERMS, "spread", SpreadTerm)
    torch.manual_seed(0)
    logits, features = torch.randn(8, 4), torch.randn(8, 6)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    criterion = make_loss(("id", "spread"), spread=0.25)
    out = criterion(logits, features, labels)
    assert set(out) == {"loss", "id_loss", "spread_loss"}
    torch.testing.assert_close(out["spread_loss"], features.pow(2).sum(dim=1).mean())
    torch.testing.assert_close(out["loss"], out["id_loss"] + 0.25 * out["spread_loss"])


@pytest.mark.slow
def test_a_registered_term_is_trained_logged_and_monitorable_without_other_edits(tiny_market, tmp_path, monkeypatch):
    """One table entry (plus the spec value that selects it) is all a new loss needs."""
    import pytorch_lightning as pl

    from reid_tao.builders import METRIC_LOSSES, MetricLoss, build_datamodule, build_module, load_experiment
    from reid_tao.engine.metric_names import metric_modes
    from reid_tao.engine.status import kpi_from

    from helpers import tiny_overrides

    monkeypatch.setitem(LOSS_TERMS, "spread", SpreadTerm)
    monkeypatch.setitem(METRIC_LOSSES, "triplet_spread", MetricLoss(drops=(), adds=("spread",)))
    config = load_experiment(
        None,
        tiny_overrides(
            tiny_market,
            tmp_path,
            **{
                "model.metric_loss_type": "triplet_spread",
                "train.checkpointer.monitor": "train_spread_loss",
                "dataset.query_dataset_dir": "null",
                "dataset.test_dataset_dir": "null",
                "dataset.pipeline": "cached",
            },
        ),
    )
    assert metric_modes()["train_spread_loss"] == "min"
    pl.seed_everything(0, verbose=False)
    datamodule = build_datamodule(config)
    datamodule.setup("fit")
    module = build_module(config, datamodule.num_classes)
    assert module.loss.names == ("id", "triplet", "spread")
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=datamodule)
    logged = trainer.callback_metrics
    assert {"train_loss", "train_id_loss", "train_triplet_loss", "train_spread_loss"} <= set(logged)
    assert float(logged["train_spread_loss"]) > 0
    # weight 1 (the term names no weight field): the total is the sum of the three epoch means
    total = sum(float(logged[name]) for name in ("train_id_loss", "train_triplet_loss", "train_spread_loss"))
    assert float(logged["train_loss"]) == pytest.approx(total, rel=1e-5)
    assert "train_loss" in kpi_from(dict(logged))


class ClusterSpreadTerm(PseudoLabelTerm):
    """A made-up adaptation term: the mean squared distance of each feature to its pseudo identity's mean."""

    def reset_pseudo_labels(self, features, labels, cameras):
        self.resets = getattr(self, "resets", 0) + 1
        count = int(labels.max()) + 1
        kept = labels >= 0
        sums = torch.zeros(count, features.shape[1]).index_add_(0, labels[kept], features[kept])
        self.means = sums / torch.bincount(labels[kept], minlength=count).clamp(min=1)[:, None]

    def value(self, logits, features, targets):
        return (features - self.means[targets]).pow(2).sum(dim=1).mean()


@pytest.mark.slow
def test_a_registered_adaptation_term_is_reset_by_each_clustering_and_logged(tiny_market, tmp_path, monkeypatch):
    """One table entry (plus the adaptation terms' list) is all a new pseudo-label loss needs."""
    from reid_tao.builders import spec
    from reid_tao.engine.metric_names import metric_modes
    from reid_tao.tasks import train

    from helpers import tiny_adaptation_overrides, tiny_overrides, write_untrained_checkpoint

    monkeypatch.setitem(LOSS_TERMS, "spread", ClusterSpreadTerm)
    adds = spec.ADAPTATION_TERMS.adds + ("spread",)
    monkeypatch.setattr(spec, "ADAPTATION_TERMS", spec.ADAPTATION_TERMS._replace(adds=adds))
    built = []
    original = ClusterSpreadTerm.reset_pseudo_labels
    monkeypatch.setattr(
        ClusterSpreadTerm, "reset_pseudo_labels", lambda self, *a: (built.append(self), original(self, *a))[1]
    )
    source = write_untrained_checkpoint(tiny_market, tmp_path / "source.pth")
    config = spec.load_experiment(
        None,
        tiny_overrides(
            tiny_market, tmp_path, **{"dataset.query_dataset_dir": "null", "dataset.test_dataset_dir": "null"}
        )
        + [
            *tiny_adaptation_overrides(source),
            "adaptation.tracklets=off",
            "train.num_epochs=2",
            "train.checkpointer.monitor=train_spread_loss",
        ],
    )
    assert metric_modes()["train_spread_loss"] == "min"
    results = train.run(config)
    assert len(built) == 2 and built[0] is built[1]  # the start's clustering and the one before epoch 1
    metrics = next(results.rglob("metrics.csv")).read_text()
    assert "train_spread_loss" in metrics and "train_memory_loss" in metrics and "train_camera_loss" in metrics


def test_every_registered_term_takes_the_batch_cameras():
    """ReidLoss hands every term the batch's cameras (terms that override weighted() must accept them)."""
    settings = LossSettings(num_classes=3, feat_dim=4)
    loss = build_reid_loss(["id", "triplet", "center"], settings)
    features, targets = torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])
    out = loss(torch.randn(6, 3), features, targets, torch.tensor([1, 2, 1, 2, 1, 2]))
    assert set(out) == {"loss", "id_loss", "triplet_loss", "center_loss"}
