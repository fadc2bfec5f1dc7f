"""The training objective: the weighted sum of named loss terms (see ``LOSS_TERMS`` in this package).

Which terms are active is decided by the caller (``reid_tao.builders`` maps the spec's sampler and metric loss
type onto term names). Inputs follow BoT: the ID loss sees the classifier logits (after the BNNeck), the
triplet and center losses see the global feature before the BNNeck.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from reid_tao.model.losses.term import LossTerm, PseudoLabelTerm


def value_name(term: str) -> str:
    """The key of a term's value in ReidLoss's output (logged with a ``train_`` prefix): id -> id_loss."""
    return f"{term}_loss"


class ReidLoss(nn.Module):
    """Weighted sum of the given terms.

    Args:
        terms: term name -> term, in the order they are summed (e.g. built from ``LOSS_TERMS``).
        weights: term name -> weight in the total (>= 0; a term without an entry weighs 1).

    Each term is a submodule named ``<name>_loss`` (state-dict keys such as ``center_loss.centers``).
    """

    def __init__(self, terms: Mapping[str, LossTerm], weights: Mapping[str, float] | None = None):
        super().__init__()
        weights = dict(weights or {})
        if not any(term.standalone for term in terms.values()):
            raise ValueError(
                f"the loss terms {sorted(terms)} cannot train alone; add one that can (the center loss alone collapses)"
            )
        unknown = set(weights) - set(terms)
        if unknown:
            raise ValueError(f"weights given for terms that are not used: {sorted(unknown)}")
        for name, weight in weights.items():
            if weight < 0:
                raise ValueError(f"the weight of the {name} loss must be >= 0, got {weight}")
        self.names = tuple(terms)
        self.weights = {name: float(weights.get(name, 1.0)) for name in self.names}
        for name, term in terms.items():
            self.add_module(value_name(name), term)

    def term(self, name: str) -> LossTerm:
        return getattr(self, value_name(name))

    @property
    def needs_logits(self) -> bool:
        """Whether any term reads the classifier logits (else the ID head gets no gradient)."""
        return any(self.term(name).needs_logits for name in self.names)

    def forward(
        self,
        logits: torch.Tensor | None,
        features: torch.Tensor,
        targets: torch.Tensor,
        cameras: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Losses for one batch (``cameras``: the (B,) camera of each image, for the terms that need them).

        Returns a dict with "loss" (weighted total, fp32, to backpropagate) and each term's unweighted,
        detached value for logging under ``<name>_loss`` (e.g. "id_loss", "triplet_loss", "center_loss").
        """
        parts: dict[str, torch.Tensor] = {}
        total: list[torch.Tensor] = []
        for name in self.names:
            contribution, value = self.term(name).weighted(self.weights[name], logits, features, targets, cameras)
            parts[value_name(name)] = value.detach()
            total.append(contribution)
        return {"loss": torch.stack(total).sum(), **parts}

    def own_parameters(self) -> list[nn.Parameter]:
        """Parameters the terms step with their own SGD optimiser (the centers), or [] when none has any."""
        return [p for name in self.names for p in self.term(name).own_parameters()]

    def pseudo_label_terms(self) -> list[LossTerm]:
        """The terms rebuilt from every clustering (domain adaptation)."""
        return [self.term(name) for name in self.names if isinstance(self.term(name), PseudoLabelTerm)]
