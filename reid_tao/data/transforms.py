"""Image transforms (torchvision): training augmentation and evaluation preprocessing."""

from collections.abc import Sequence

from torchvision import transforms as T

INTERPOLATIONS = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}


def build_train_transform(
    size: tuple[int, int],
    pixel_mean: Sequence[float],
    pixel_std: Sequence[float],
    flip_prob: float = 0.5,
    padding: int = 10,
    erase_prob: float = 0.5,
    interpolation: str = "bilinear",
) -> T.Compose:
    """Resize to (H, W), flip, pad + random crop, to tensor, normalise, random erasing.

    Erased boxes (area 2-40%, aspect 0.3-3.3) are filled with 0 after normalisation, i.e. with
    pixel_mean in image space.
    """
    steps = [T.Resize(size, interpolation=INTERPOLATIONS[interpolation]), T.RandomHorizontalFlip(p=flip_prob)]
    if padding > 0:
        steps += [T.Pad(padding), T.RandomCrop(size)]
    steps += [T.ToTensor(), T.Normalize(mean=list(pixel_mean), std=list(pixel_std))]
    if erase_prob > 0:
        steps.append(T.RandomErasing(p=erase_prob, scale=(0.02, 0.4), ratio=(0.3, 3.3), value=0))
    return T.Compose(steps)


def build_eval_transform(
    size: tuple[int, int], pixel_mean: Sequence[float], pixel_std: Sequence[float], interpolation: str = "bilinear"
) -> T.Compose:
    """Resize + normalise, with the same resize filter as training (TAO mixes them for Swin, bug B8)."""
    return T.Compose(
        [
            T.Resize(size, interpolation=INTERPOLATIONS[interpolation]),
            T.ToTensor(),
            T.Normalize(mean=list(pixel_mean), std=list(pixel_std)),
        ]
    )
