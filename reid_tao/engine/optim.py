"""Optimisers and the per-epoch learning-rate schedule (TAO / reid-strong-baseline semantics).

* ``build_optimizer``: any ``torch.optim`` optimiser by name with a handful of parameter groups (weights,
  biases, optionally the classifier at 2x lr, and the parameters the backbone trains without weight decay),
  not one group per tensor as TAO (bug B12).
* ``build_center_optimizer``: plain SGD for the center-loss centers.
* ``WarmupSchedule`` / ``build_scheduler``: warmup then multi-step decay (or warmup then cosine), as an
  lr multiplier per EPOCH for ``LambdaLR``. Step the scheduler once at the end of every epoch and never at
  setup (TAO's extra step at setup shifts the whole schedule by one epoch, bug B11).
"""

from __future__ import annotations

import inspect
import logging
import math
from bisect import bisect_right
from collections.abc import Iterable

import torch
from torch import nn

from reid_tao.config.catalog import find_field

log = logging.getLogger(__name__)

# Optimisers that cannot be driven by a plain ``loss.backward(); optimizer.step()`` loop with several
# parameter groups of dense 1-D and N-D tensors.
UNSUPPORTED_OPTIMIZERS = {
    "lbfgs": "needs a closure and allows only one parameter group",
    "sparseadam": "only works with sparse gradients",
    "muon": "only handles 2-D weight matrices",
}
LARGE_FC_LR_FACTOR = 2.0
WARMUP_METHODS = ("linear", "constant", "cosine")


def _check_range(argument: str, value: float) -> None:
    """``value`` within the bounds of the spec field train.optim.<argument> (one rule for spec and engine; e.g.
    warmup_factor > 0, since a factor of 0 trains the first epoch at lr 0)."""
    bounds = find_field(f"train.optim.{argument}").meta.bounds
    if not bounds.allows(value):
        raise ValueError(f"{argument} must be {bounds.text()}, got {value}")


def available_optimizers() -> dict[str, type[torch.optim.Optimizer]]:
    """Lower-case name -> class for every usable optimiser in ``torch.optim``."""
    found = {}
    for name in dir(torch.optim):
        obj = getattr(torch.optim, name)
        if (
            isinstance(obj, type)
            and issubclass(obj, torch.optim.Optimizer)
            and obj is not torch.optim.Optimizer
            and name.lower() not in UNSUPPORTED_OPTIMIZERS
        ):
            found[name.lower()] = obj
    return found


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The ``torch.optim`` class called ``name`` (case-insensitive); ValueError if there is none."""
    key = str(name).lower()
    if key in UNSUPPORTED_OPTIMIZERS:
        raise ValueError(
            f"optimizer {name!r} is not supported: it {UNSUPPORTED_OPTIMIZERS[key]}; use e.g. Adam, AdamW or SGD"
        )
    classes = available_optimizers()
    if key not in classes:
        names = ", ".join(sorted(cls.__name__ for cls in classes.values()))
        raise ValueError(f"optimizer {name!r} is not a torch.optim optimiser; use one of: {names}")
    return classes[key]


def _is_bias(name: str) -> bool:
    return name == "bias" or name.endswith(".bias")


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Parameter names of ``model`` that train without weight decay: those its submodules declare through a
    ``no_weight_decay_names()`` method (relative to themselves), e.g. Swin's relative position bias tables."""
    names = set()
    for prefix, module in model.named_modules():
        declared = getattr(module, "no_weight_decay_names", None)
        if callable(declared):
            names.update(f"{prefix}.{name}" if prefix else name for name in declared())
    return names


def _param_groups(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    weight_decay_bias: float,
    bias_lr_factor: float,
    large_fc_lr: bool,
    classifier_prefix: str,
) -> list[dict]:
    """Trainable parameters split into (at most) weights, biases, classifier weights, classifier biases, and
    the parameters the model declares free of weight decay (same lr as their kind, weight decay 0).

    Empty groups are left out. Each group carries a "name" key for logging.
    """
    no_decay = no_weight_decay_names(model)
    buckets: dict[tuple[bool, bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue  # e.g. the frozen BNNeck bias
        in_classifier = large_fc_lr and (name == classifier_prefix or name.startswith(classifier_prefix + "."))
        buckets.setdefault((in_classifier, _is_bias(name), name in no_decay), []).append(param)
    groups = []
    for (in_classifier, is_bias, decay_free), params in sorted(buckets.items()):
        lr = base_lr * (bias_lr_factor if is_bias else 1.0)
        # large_fc_lr multiplies what the parameter would otherwise get (as fast-reid's head lr factor).
        lr *= LARGE_FC_LR_FACTOR if in_classifier else 1.0
        name = ("classifier_" if in_classifier else "") + ("biases" if is_bias else "weights")
        decay = 0.0 if decay_free else (weight_decay_bias if is_bias else weight_decay)
        groups.append(
            {
                "name": name + ("_no_weight_decay" if decay_free else ""),
                "params": params,
                "lr": lr,
                "weight_decay": decay,
            }
        )
    return groups


def build_optimizer(
    model: nn.Module,
    name: str,
    base_lr: float,
    weight_decay: float,
    weight_decay_bias: float,
    bias_lr_factor: float,
    momentum: float,
    large_fc_lr: bool,
    classifier_prefix: str = "classifier",
) -> torch.optim.Optimizer:
    """The optimiser ``name`` over the trainable parameters of ``model``.

    Groups: weights (lr ``base_lr``, ``weight_decay``), biases (names ending in ".bias": lr
    ``base_lr * bias_lr_factor``, ``weight_decay_bias``) and, with ``large_fc_lr``, the parameters whose
    names start with ``classifier_prefix`` in their own weight/bias groups at twice their lr. Parameters
    that a submodule declares in ``no_weight_decay_names()`` (Swin's position tables) get their own group(s)
    with weight decay 0. Frozen parameters are left out. SGD gets ``momentum``; other optimisers keep their
    own defaults (TAO behaviour). Options an optimiser does not accept (e.g. Rprop has no weight decay) are
    not passed; a non-zero weight decay that cannot be applied is logged as a warning.
    """
    cls = optimizer_class(name)
    _check_range("base_lr", base_lr)
    groups = _param_groups(
        model, base_lr, weight_decay, weight_decay_bias, bias_lr_factor, large_fc_lr, classifier_prefix
    )
    if not groups:
        raise ValueError("the model has no trainable parameters")
    accepted = inspect.signature(cls).parameters
    if "weight_decay" not in accepted:
        if weight_decay or weight_decay_bias:
            log.warning(
                "%s has no weight decay: train.optim.weight_decay and weight_decay_bias are not applied", cls.__name__
            )
        for group in groups:
            del group["weight_decay"]
    kwargs = {"lr": base_lr}
    if cls is torch.optim.SGD:
        kwargs["momentum"] = momentum
    return cls(groups, **{key: value for key, value in kwargs.items() if key in accepted})


def build_center_optimizer(params: Iterable[nn.Parameter], center_lr: float) -> torch.optim.SGD:
    """Plain SGD (no momentum, no weight decay) with lr ``center_lr`` for the center-loss centers."""
    _check_range("center_lr", center_lr)
    return torch.optim.SGD(list(params), lr=center_lr)


class WarmupSchedule:
    """Epoch -> lr multiplier, for ``torch.optim.lr_scheduler.LambdaLR`` (picklable, plain attributes).

    ``linear`` / ``constant`` (BoT's WarmupMultiStepLR): for epoch e < warmup_iters the factor is
    ``warmup_factor*(1-a) + a`` with a = e / warmup_iters (linear) or ``warmup_factor`` (constant); it is
    then multiplied by gamma ** (number of milestones <= e).

    ``cosine``: the same linear warmup over ``warmup_epochs``, then 0.5 * (1 + cos(pi * (e - W) / (N - W)))
    with W = warmup_epochs and N = num_epochs (milestones and gamma are ignored). The factor is 1 at e = W
    and reaches 0.5 * (1 - cos(pi / (N - W))) at the last epoch e = N - 1 (2.5e-4 for N=120, W=20): close
    to 0 without wasting the final epoch at exactly lr 0. There is no floor.
    """

    def __init__(
        self,
        method: str,
        warmup_factor: float,
        warmup_iters: int,
        milestones: list[int],
        gamma: float,
        warmup_epochs: int,
        num_epochs: int,
    ):
        method = str(method).lower()
        if method not in WARMUP_METHODS:
            raise ValueError(f"method must be one of {', '.join(WARMUP_METHODS)}, got {method!r}")
        milestones = [int(m) for m in milestones]
        if any(b <= a for a, b in zip(milestones, milestones[1:])):
            raise ValueError(f"milestones must be strictly increasing epochs, got {milestones}")
        for argument, value in (("warmup_factor", warmup_factor), ("warmup_iters", warmup_iters), ("gamma", gamma)):
            _check_range(argument, value)
        if method == "cosine":
            _check_range("warmup_epochs", warmup_epochs)
            if num_epochs <= warmup_epochs:
                raise ValueError(
                    f"num_epochs ({num_epochs}) must be larger than warmup_epochs ({warmup_epochs}) "
                    "for the cosine schedule"
                )
        self.method = method
        self.warmup_factor = float(warmup_factor)
        self.warmup_iters = int(warmup_iters)
        self.milestones = milestones
        self.gamma = float(gamma)
        self.warmup_epochs = int(warmup_epochs)
        self.num_epochs = int(num_epochs)

    def _linear_warmup(self, epoch: int, length: int) -> float:
        alpha = epoch / length
        return self.warmup_factor * (1.0 - alpha) + alpha

    def __call__(self, epoch: int) -> float:
        if self.method == "cosine":
            if epoch < self.warmup_epochs:
                return self._linear_warmup(epoch, self.warmup_epochs)
            progress = (epoch - self.warmup_epochs) / (self.num_epochs - self.warmup_epochs)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        factor = 1.0
        if epoch < self.warmup_iters:
            factor = self.warmup_factor if self.method == "constant" else self._linear_warmup(epoch, self.warmup_iters)
        return factor * self.gamma ** bisect_right(self.milestones, epoch)

    def __repr__(self) -> str:
        return f"WarmupSchedule({self.__dict__})"


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    method: str,
    warmup_factor: float,
    warmup_iters: int,
    milestones: list[int],
    gamma: float,
    warmup_epochs: int,
    num_epochs: int,
) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` over a ``WarmupSchedule``; call ``step()`` once after each epoch (not at setup).

    Every parameter group keeps its own base lr (bias and classifier factors are preserved).
    """
    schedule = WarmupSchedule(method, warmup_factor, warmup_iters, milestones, gamma, warmup_epochs, num_epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
