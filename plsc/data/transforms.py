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


@TRANSFORMS.register("ColorJitter")
class ColorJitter:
    """FFEM's colour augmentation on an RGB uint8 [H, W, 3] image, in TensorFlow's order and ranges:
    hue shifted by up to +-`hue` of the colour circle, `brightness` added (on a 0..1 scale) up to
    +-brightness, contrast scaled by a factor in `contrast` around each channel's mean."""

    def __init__(self, hue=0.1, brightness=0.1, contrast=(0.9, 1.1), prob=1.0):
        if hue < 0 or hue > 0.5 or brightness < 0 or len(contrast) != 2 or not 0 <= contrast[0] <= contrast[1]:
            raise PlscError(f"ColorJitter: need 0 <= hue <= 0.5, brightness >= 0, contrast [low, high] with "
                            f"0 <= low <= high; got {hue}, {brightness}, {list(contrast)}")
        self.hue, self.brightness, self.contrast, self.prob = float(hue), float(brightness), tuple(contrast), prob

    def __call__(self, image, rng):
        if rng.random() >= self.prob:
            return image
        hue_shift, brightness, contrast = (rng.uniform(-self.hue, self.hue), rng.uniform(-self.brightness, self.brightness),
                                           rng.uniform(*self.contrast))
        # In float32 OpenCV's hue is in degrees, and the round trip does not lose the uint8 steps.
        hsv = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = np.mod(hsv[..., 0] + hue_shift * 360.0, 360.0)
        rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        rgb = rgb + brightness
        mean = rgb.mean(axis=(0, 1), keepdims=True)
        rgb = (rgb - mean) * contrast + mean
        return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


@TRANSFORMS.register("Cutout")
class Cutout:
    """With probability `prob`, fill a random square (side 1..`max_size` px, centre anywhere, clipped to
    the image) of an [H, W, C] image with one random constant value (FFEM: side up to 38, half the time)."""

    def __init__(self, max_size=38, prob=0.5):
        if int(max_size) < 1 or not 0.0 <= prob <= 1.0:
            raise PlscError(f"Cutout: max_size ({max_size}) must be >= 1 and prob ({prob}) in [0, 1]")
        self.max_size, self.prob = int(max_size), float(prob)

    def __call__(self, image, rng):
        if rng.random() >= self.prob:
            return image
        height, width = image.shape[:2]
        side = int(rng.integers(1, self.max_size + 1))
        centre_y, centre_x = int(rng.integers(0, height)), int(rng.integers(0, width))
        top, left = max(0, centre_y - side // 2), max(0, centre_x - side // 2)
        image = image.copy()
        fill = rng.integers(0, 256) if image.dtype == np.uint8 else rng.uniform(float(image.min()), float(image.max()))
        image[top:min(height, top + side), left:min(width, left + side)] = fill
        return image


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
