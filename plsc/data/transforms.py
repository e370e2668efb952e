"""Per-image transform ops, named as PLSC's configs list them (`transform_ops:`).

Each op is `op(image, rng) -> image`; random ops draw from the `rng` the dataset passes, which is
seeded by (seed, epoch, sample index), so augmentation repeats exactly after a resume and does not
depend on how many loader workers there are.
"""
import cv2
import numpy as np

from plsc.errors import PlscError
from plsc.registry import TRANSFORMS


@TRANSFORMS.register("DecodeImage")
class DecodeImage:
    """Encoded bytes (JPEG/PNG) -> uint8 [H, W, 3] (RGB if to_rgb), or [3, H, W] if channel_first."""

    def __init__(self, to_rgb=True, channel_first=False):
        self.to_rgb = to_rgb
        self.channel_first = channel_first

    def __call__(self, data, rng=None):
        buffer = np.frombuffer(data, dtype=np.uint8)
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
        if image is None:
            raise PlscError("cannot decode image (not a JPEG/PNG, or truncated)")
        if self.to_rgb:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        if self.channel_first:
            image = image.transpose(2, 0, 1)
        return image


@TRANSFORMS.register("RandFlipImage")
class RandFlipImage:
    """Mirror with probability `prob`; flip_code 1 = horizontal (cv2 convention), 0 = vertical, -1 = both."""

    def __init__(self, flip_code=1, prob=0.5):
        if flip_code not in (-1, 0, 1):
            raise PlscError(f"RandFlipImage.flip_code must be -1, 0 or 1, got {flip_code}")
        self.flip_code = flip_code
        self.prob = prob

    def __call__(self, image, rng):
        if rng.random() < self.prob:
            return cv2.flip(image, self.flip_code)
        return image


@TRANSFORMS.register("ResizeImage")
class ResizeImage:
    """Resize to `size` x `size` (for reduced-resolution experiments such as the quickstart)."""

    def __init__(self, size=112):
        self.size = int(size)

    def __call__(self, image, rng=None):
        if image.shape[0] == self.size and image.shape[1] == self.size:
            return image
        return cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_AREA)


@TRANSFORMS.register("NormalizeImage")
class NormalizeImage:
    """(image * scale - mean) / std as float32; order 'chw' for channel-first input, else HWC."""

    def __init__(self, scale=None, mean=None, std=None, order="chw"):
        # PLSC writes `scale: 1.0/255.0` as a string; evaluate it without eval().
        from plsc.config import evaluate_number

        self.scale = np.float32(evaluate_number(scale) if isinstance(scale, str) else (scale or 1.0 / 255.0))
        mean = mean if mean is not None else [0.485, 0.456, 0.406]
        std = std if std is not None else [0.229, 0.224, 0.225]
        # PLSC's face configs give order '' which means HWC there.
        shape = (3, 1, 1) if order == "chw" else (1, 1, 3)
        self.mean = np.array(mean, dtype=np.float32).reshape(shape)
        self.std = np.array(std, dtype=np.float32).reshape(shape)

    def __call__(self, image, rng=None):
        return (image.astype(np.float32) * self.scale - self.mean) / self.std


@TRANSFORMS.register("ToCHWImage")
class ToCHWImage:
    """HWC -> CHW."""

    def __call__(self, image, rng=None):
        return np.ascontiguousarray(image.transpose(2, 0, 1))


class Compose:
    """The ops of a `transform_ops:` list, applied in order."""

    def __init__(self, ops):
        self.ops = ops

    def __call__(self, data, rng):
        for op in self.ops:
            data = op(data, rng)
        return data


def build_transforms(transform_ops, where="transform_ops"):
    """`[{OpName: {kwargs} or None}, ...]` from a config -> Compose."""
    ops = []
    for position, entry in enumerate(transform_ops or []):
        if not isinstance(entry, dict) or len(entry) != 1:
            raise PlscError(f"{where}.{position}: each transform op is a one-key mapping, got {entry!r}")
        (name, kwargs), = entry.items()
        ops.append(TRANSFORMS.build(name, where=f"{where}.{position}", **(kwargs or {})))
    return Compose(ops)


from plsc.data import mask  # noqa: E402,F401  (registers RandomMask; it builds on the ops above)
