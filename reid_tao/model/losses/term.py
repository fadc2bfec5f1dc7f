"""What a named loss term is: the base class every entry of ``LOSS_TERMS`` derives from.

A term computes one scalar from what the model gives (classifier logits, global features) and the labels.
``ReidLoss`` sums the chosen terms with their weights and reports each term's value under its table name,
so training, logging (``train_<name>_loss``), the best-k monitor and status.json learn of a new term from
the table alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LossSettings:
    """The plain values a term may be built from (``reid_tao.builders`` fills them from the spec)."""

    num_classes: int  # training identities
    feat_dim: int  # dimension of the features fed to the feature terms
    label_smooth: bool = True
    triplet_margin: float | None = 0.3  # None: the soft margin
    # adaptation (pseudo-label terms)
    memory_temperature: float = 0.05
    memory_momentum: float = 0.2
    camera_temperature: float = 0.07
    camera_momentum: float = 0.2
    camera_inter_weight: float = 0.5
    camera_hard_negatives: int = 50


class LossTerm(nn.Module):
    """One term of the objective. Subclasses set the class attributes and implement :meth:`value`.

    Class attributes:
        needs_logits: it reads the classifier logits (without any such term the ID head is frozen, since
            parameters without gradients break DDP).
        standalone: it may be the only term (False for a term that collapses alone, like the center loss).
        weight_field: the spec field holding its weight (``reid_tao.builders`` reads it; None: weight 1).
        needs_cameras: :meth:`value` also takes ``cameras``, the (B,) camera of each image.
    """

    needs_logits = False
    standalone = True
    weight_field: str | None = None
    needs_cameras = False

    @classmethod
    def from_settings(cls, settings: LossSettings) -> LossTerm:
        return cls()

    def value(self, logits: torch.Tensor | None, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The unweighted scalar loss of one batch."""
        raise NotImplementedError

    def weighted(
        self,
        weight: float,
        logits: torch.Tensor | None,
        features: torch.Tensor,
        targets: torch.Tensor,
        cameras: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(what this term adds to the total, its unweighted value). Override to route gradients differently."""
        if self.needs_cameras:
            if cameras is None:
                raise ValueError(f"{type(self).__name__} needs the cameras of the batch")
            value = self.value(logits, features, targets, cameras)
        else:
            value = self.value(logits, features, targets)
        return weight * value, value

    def own_parameters(self) -> list[nn.Parameter]:
        """Parameters stepped by their own SGD optimiser (train.optim.center_lr), not the model's."""
        return []


class PseudoLabelTerm(LossTerm):
    """A term whose state comes from the pseudo labels of unlabeled images (domain adaptation): after every
    clustering, :meth:`reset_pseudo_labels` rebuilds it from the features that were clustered. Training the
    model on such terms trains no classifier (the pseudo identities change with every clustering)."""

    def reset_pseudo_labels(self, features: torch.Tensor, labels: torch.Tensor, cameras: torch.Tensor) -> None:
        """features: (N, D) of all training images; labels: (N,) pseudo identity 0..L-1, or -1 (left out);
        cameras: (N,) camera numbers."""
        raise NotImplementedError
