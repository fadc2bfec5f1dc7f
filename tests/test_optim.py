"""Optimiser parameter groups and the per-epoch learning-rate schedule."""

import math
import pickle

import pytest
import torch
from torch import nn

from reid_tao.engine.optim import WarmupSchedule, build_center_optimizer, build_optimizer, build_scheduler

BASE_LR = 3.5e-4
TAO_SCHEDULE = dict(
    method="linear",
    warmup_factor=0.01,
    warmup_iters=10,
    milestones=[40, 70],
    gamma=0.1,
    warmup_epochs=20,
    num_epochs=120,
)
# Hand values for the TAO defaults: epoch -> multiplier.
TAO_FACTORS = {0: 0.01, 5: 0.01 * 0.5 + 0.5, 9: 0.01 * 0.1 + 0.9, 10: 1.0, 39: 1.0, 40: 0.1, 69: 0.1, 70: 0.01}


class TinyReid(nn.Module):
    """Backbone conv + BN, BNNeck with frozen bias, bias-free classifier (like model/baseline.py)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.bottleneck = nn.BatchNorm1d(4)
        self.bottleneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(4, 5, bias=False)


def _groups(optimizer):
    return {g["name"]: g for g in optimizer.param_groups}


def _build(model=None, **overrides):
    args = dict(
        name="Adam",
        base_lr=BASE_LR,
        weight_decay=5e-4,
        weight_decay_bias=1e-4,
        bias_lr_factor=2.0,
        momentum=0.9,
        large_fc_lr=False,
    )
    args.update(overrides)
    return build_optimizer(model or TinyReid(), **args)


def test_two_groups_with_bias_lr_and_weight_decay():
    model = TinyReid()
    optimizer = _build(model)
    assert len(optimizer.param_groups) == 2
    groups = _groups(optimizer)
    weights, biases = groups["weights"], groups["biases"]
    assert weights["lr"] == BASE_LR and weights["weight_decay"] == 5e-4
    assert biases["lr"] == pytest.approx(2 * BASE_LR) and biases["weight_decay"] == 1e-4

    def ids(params):
        return {id(p) for p in params}

    assert ids(weights["params"]) == ids(
        [model.conv.weight, model.bn.weight, model.bottleneck.weight, model.classifier.weight]
    )
    assert ids(biases["params"]) == ids([model.conv.bias, model.bn.bias])
    # the frozen BNNeck bias is in no group
    assert id(model.bottleneck.bias) not in ids(p for g in optimizer.param_groups for p in g["params"])


def test_large_fc_lr_puts_classifier_in_its_own_group_at_double_lr():
    model = TinyReid()
    optimizer = _build(model, large_fc_lr=True)
    groups = _groups(optimizer)
    assert set(groups) == {"weights", "biases", "classifier_weights"}
    assert groups["classifier_weights"]["params"] == [model.classifier.weight]
    assert groups["classifier_weights"]["lr"] == pytest.approx(2 * BASE_LR)
    assert groups["classifier_weights"]["weight_decay"] == 5e-4
    assert all(p is not model.classifier.weight for p in groups["weights"]["params"])
    # a classifier with a bias: the bias gets its own group at 2 x the bias lr
    model.classifier = nn.Linear(4, 5)
    groups = _groups(_build(model, large_fc_lr=True))
    assert groups["classifier_biases"]["lr"] == pytest.approx(2 * 2 * BASE_LR)
    assert groups["classifier_biases"]["weight_decay"] == 1e-4


@pytest.mark.parametrize(
    "name,cls",
    [
        ("sgd", torch.optim.SGD),
        ("ADAMW", torch.optim.AdamW),
        ("Adamax", torch.optim.Adamax),
        ("rmsprop", torch.optim.RMSprop),
    ],
)
def test_optimizer_by_name(name, cls):
    optimizer = _build(name=name)
    assert type(optimizer) is cls and len(optimizer.param_groups) == 2


def test_sgd_gets_momentum_and_rprop_gets_no_weight_decay():
    sgd = _build(name="SGD", momentum=0.9)
    assert all(g["momentum"] == 0.9 for g in sgd.param_groups)
    adam = _build(name="Adam")
    assert "momentum" not in adam.param_groups[0]
    rprop = _build(name="Rprop")  # has no weight_decay argument: must still build and step
    assert "weight_decay" not in rprop.param_groups[0]
    model = TinyReid()
    optimizer = _build(model, name="SGD")
    model.conv(torch.randn(1, 3, 5, 5)).sum().backward()
    before = model.conv.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, model.conv.weight)


def test_unknown_or_unsupported_optimizer_is_a_value_error():
    with pytest.raises(ValueError, match=r"optimizer 'adamx'.*AdamW.*SGD"):
        _build(name="adamx")
    with pytest.raises(ValueError, match="closure"):
        _build(name="LBFGS")


def test_center_optimizer_is_plain_sgd():
    centers = nn.Parameter(torch.zeros(3, 2))
    optimizer = build_center_optimizer([centers], center_lr=0.5)
    assert type(optimizer) is torch.optim.SGD
    assert optimizer.param_groups[0]["lr"] == 0.5 and optimizer.param_groups[0]["momentum"] == 0
    centers.grad = torch.ones(3, 2)
    optimizer.step()
    torch.testing.assert_close(centers.detach(), torch.full((3, 2), -0.5))


def test_tao_default_schedule_hand_values():
    schedule = WarmupSchedule(**TAO_SCHEDULE)
    for epoch, factor in TAO_FACTORS.items():
        assert schedule(epoch) == pytest.approx(factor), epoch


def test_constant_warmup():
    schedule = WarmupSchedule(**{**TAO_SCHEDULE, "method": "constant"})
    assert [schedule(e) for e in (0, 9)] == pytest.approx([0.01, 0.01])
    assert [schedule(e) for e in (10, 40, 70)] == pytest.approx([1.0, 0.1, 0.01])


def test_cosine_schedule_values():
    schedule = WarmupSchedule(**{**TAO_SCHEDULE, "method": "cosine"})
    assert schedule(0) == pytest.approx(0.01)
    assert schedule(10) == pytest.approx(0.01 * 0.5 + 0.5)
    assert schedule(20) == pytest.approx(1.0)
    assert schedule(70) == pytest.approx(0.5)  # halfway through the 100 cosine epochs
    assert schedule(45) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    assert schedule(119) == pytest.approx(0.5 * (1 - math.cos(math.pi / 100)))
    assert schedule(119) < 3e-4
    factors = [schedule(e) for e in range(20, 120)]
    assert all(b < a for a, b in zip(factors, factors[1:]))  # milestones ignored, strictly decreasing


def test_lambda_lr_stepped_per_epoch_reproduces_schedule_per_group():
    optimizer = _build(name="SGD")
    scheduler = build_scheduler(optimizer, **TAO_SCHEDULE)
    # No step at setup: epoch 0 trains at warmup_factor * base lr.
    seen = {}
    for epoch in range(71):
        seen[epoch] = [g["lr"] for g in optimizer.param_groups]
        optimizer.step()
        scheduler.step()
    for epoch, factor in TAO_FACTORS.items():
        assert seen[epoch] == pytest.approx([BASE_LR * factor, 2 * BASE_LR * factor]), epoch


def test_scheduler_state_dict_round_trip_and_pickle():
    optimizer = _build(name="SGD")
    scheduler = build_scheduler(optimizer, **TAO_SCHEDULE)
    for _ in range(42):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    assert state["last_epoch"] == 42

    optimizer2 = _build(name="SGD")
    scheduler2 = build_scheduler(optimizer2, **{**TAO_SCHEDULE, "milestones": [5, 6]})
    scheduler2.load_state_dict(state)
    optimizer2.load_state_dict(optimizer.state_dict())
    assert scheduler2.lr_lambdas[0].milestones == [40, 70]  # the schedule itself was restored
    for _ in range(30):  # resume to epoch 72
        optimizer2.step()
        scheduler2.step()
    assert optimizer2.param_groups[0]["lr"] == pytest.approx(BASE_LR * 0.01)
    assert scheduler2.last_epoch == 72

    restored = pickle.loads(pickle.dumps(WarmupSchedule(**TAO_SCHEDULE)))
    assert [restored(e) for e in TAO_FACTORS] == pytest.approx(list(TAO_FACTORS.values()))


@pytest.mark.parametrize(
    "override,field",
    [
        ({"milestones": [70, 40]}, "milestones"),
        ({"milestones": [40, 40]}, "milestones"),
        ({"method": "exp"}, "method"),
        ({"method": "cosine", "warmup_epochs": 120}, "num_epochs"),
        ({"gamma": 0.0}, "gamma"),
    ],
)
def test_schedule_validation(override, field):
    with pytest.raises(ValueError, match=field):
        WarmupSchedule(**{**TAO_SCHEDULE, **override})


def test_warmup_method_is_case_insensitive():
    assert WarmupSchedule(**{**TAO_SCHEDULE, "method": "Linear"})(5) == pytest.approx(0.505)


def test_swin_position_tables_train_without_weight_decay():
    # Swin declares its relative position bias tables free of weight decay (no_weight_decay_names); the
    # optimiser the engine builds over the whole model must honour it, and only for those tables.
    from reid_tao.model.backbones.swin import SwinBackbone
    from reid_tao.model.baseline import Baseline

    model = Baseline(SwinBackbone("swin_tiny_patch4_window7_224", (64, 32)), num_classes=4, feat_dim=256)
    params = dict(model.named_parameters())
    tables = {name for name in params if name.endswith("relative_position_bias_table")}
    assert len(tables) == 12  # one per block of the 2-2-6-2 stages
    optimizer = _build(model, large_fc_lr=True)
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert {decay_of[id(params[name])] for name in tables} == {0.0}
    for name, param in params.items():
        if name not in tables and param.requires_grad:
            assert decay_of[id(param)] == (1e-4 if name.endswith(".bias") else 5e-4), name
    no_decay = _groups(optimizer)["weights_no_weight_decay"]
    assert no_decay["lr"] == BASE_LR and len(no_decay["params"]) == 12
    assert optimizer.param_groups[0]["name"] == "weights"  # the group whose lr is logged as base_lr


def test_warmup_factor_follows_the_spec_rule():
    # One rule (> 0) for train.optim.warmup_factor in the spec and in the scheduler: 0 would train at lr 0.
    with pytest.raises(ValueError, match="warmup_factor must be > 0"):
        WarmupSchedule(**{**TAO_SCHEDULE, "warmup_factor": 0.0})
