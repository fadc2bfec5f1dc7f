"""Identity (ID) classification loss: cross entropy, optionally with label smoothing.

Label smoothing uses torch's built-in option. Its target distribution is (1 - eps) * onehot + eps / K,
which is exactly the ``CrossEntropyLabelSmooth`` of reid-strong-baseline (BoT), so no custom code is
needed (tests/test_losses.py checks the equality against the explicit formula).
"""

import torch
import torch.nn.functional as F

from reid_tao.model.losses.term import LossSettings, LossTerm

DEFAULT_LABEL_SMOOTH_EPSILON = 0.1


class IdLoss(LossTerm):
    """Cross entropy on classifier logits; label smoothing ``epsilon`` when ``label_smooth`` is True.

    The loss is computed in fp32 (logits are cast) so it behaves the same under autocast.
    """

    needs_logits = True
    weight_field = "model.id_loss_weight"

    @classmethod
    def from_settings(cls, settings: LossSettings) -> "IdLoss":
        return cls(settings.label_smooth)

    def __init__(self, label_smooth: bool = True, epsilon: float = DEFAULT_LABEL_SMOOTH_EPSILON):
        super().__init__()
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
        self.label_smooth = label_smooth
        self.epsilon = float(epsilon) if label_smooth else 0.0

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross entropy of ``logits`` (batch, classes) against integer ``targets`` (batch,)."""
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.epsilon)

    def value(self, logits, features, targets):
        if logits is None:
            raise ValueError("the ID loss is active but the model returned no logits")
        return self(logits, targets)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.epsilon}"
