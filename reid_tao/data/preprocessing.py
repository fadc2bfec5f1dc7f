"""What an image goes through before the network at test time; travels with checkpoints and ONNX files."""

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from reid_tao.config.schema import MIN_PIXEL_STD
from reid_tao.data.transforms import INTERPOLATIONS, build_eval_transform


@dataclass(frozen=True)
class Preprocessing:
    """Resize to ``input_size`` (H, W) with ``interpolation``, scale to [0, 1], normalise by mean/std (RGB)."""

    input_size: tuple[int, int]
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def __post_init__(self):
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        object.__setattr__(self, "pixel_mean", tuple(float(v) for v in self.pixel_mean))
        object.__setattr__(self, "pixel_std", tuple(float(v) for v in self.pixel_std))
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise ValueError(f"input_size must be (height, width) >= 1, got {self.input_size}")
        values = self.pixel_mean + self.pixel_std
        if (
            len(self.pixel_mean) != 3
            or len(self.pixel_std) != 3
            or not all(map(math.isfinite, values))
            or min(self.pixel_std) < MIN_PIXEL_STD
        ):
            raise ValueError(
                f"pixel_mean/pixel_std need 3 finite values (std >= {MIN_PIXEL_STD:g}), got "
                f"{self.pixel_mean} / {self.pixel_std}"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-friendly values (lists, not tuples)."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Preprocessing":
        return cls(
            input_size=values["input_size"],
            pixel_mean=values["pixel_mean"],
            pixel_std=values["pixel_std"],
            interpolation=values.get("interpolation", "bilinear"),
        )

    def eval_transform(self):
        """The torchvision transform PIL image -> normalised (3, H, W) float tensor."""
        return build_eval_transform(self.input_size, self.pixel_mean, self.pixel_std, self.interpolation)
