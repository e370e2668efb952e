"""Synthetic face masks painted over the lower face of aligned crops (training op and masked pair sets).

Geometry comes from the five ArcFace template landmarks (scaled to the image), so it fits any
aligned crop: the mask's top edge sits between the eye line and the nose tip, its bottom edge
below the chin, its sides at the cheeks. Shape, colour, coverage and width are drawn from the
caller's generator. Nothing is ever drawn on or above the eye line: the mask hides the mouth and
nose, as real masks do, and leaves the eyes and brows that masked-face recognition relies on.
"""
import dataclasses

import cv2
import numpy as np
from paddle.io import Dataset

from plsc.data.align import ARCFACE_TEMPLATE_112 as ARCFACE_TEMPLATE
from plsc.data.transforms import Compose, DecodeImage
from plsc.errors import PlscError
from plsc.registry import TRANSFORMS

TEMPLATE_SIZE = 112
# cv2 draws polygons in fixed point with this many fractional bits (sub-pixel outlines).
_SHIFT_BITS = 4
# Points sampled along each curved edge of the outline.
_EDGE_POINTS = 24
# Nothing may be drawn closer to the eye line than this (template pixels): anti-aliasing spreads a
# pixel, and the top edge never rises above it by construction.
EYE_LINE_MARGIN = 3.0

# Base colours (RGB) of common masks: surgical blue, white, black, grey, pink, navy, sage.
MASK_COLOURS = np.array([[122, 172, 222], [236, 236, 238], [32, 32, 38], [150, 150, 156],
                         [230, 172, 190], [42, 52, 92], [118, 160, 140]], dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class MaskStyle:
    """How one mask looks; fractions are relative to the face's landmark distances."""

    shape: str
    top_fraction: float      # bridge height: 0 = eye line, 1 = nose tip
    cheek_drop: float        # top edge at the cheeks below the bridge, template px
    half_width: float        # / inter-ocular distance
    chin_fraction: float     # chin depth below the mouth / (mouth - nose) distance
    colour: tuple            # RGB 0..255
    shading: float           # darkening towards the bottom edge, 0..1


# Jitter ranges of the style parameters (coverage = top_fraction and chin_fraction).
_STYLE_RANGES = {"top_fraction": (0.35, 0.75), "cheek_drop": (2.0, 6.0), "half_width": (0.95, 1.2),
                 "chin_fraction": (0.7, 1.1), "shading": (0.0, 0.25)}
_COLOUR_JITTER = 18.0


def template_landmarks(height, width):
    """The ArcFace template's five points scaled to an image of this size: float32 [5, 2] (x, y)."""
    scale = np.array([width / TEMPLATE_SIZE, height / TEMPLATE_SIZE])
    return (ARCFACE_TEMPLATE * scale).astype(np.float32)


def draw_style(rng, shapes):
    """A random MaskStyle: shape among `shapes`, colour, coverage and width jittered."""
    shape = shapes[int(rng.integers(len(shapes)))]
    values = {key: float(rng.uniform(low, high)) for key, (low, high) in _STYLE_RANGES.items()}
    base = MASK_COLOURS[int(rng.integers(len(MASK_COLOURS)))]
    colour = np.clip(base + rng.normal(0.0, _COLOUR_JITTER, 3), 0, 255)
    return MaskStyle(shape=shape, colour=tuple(float(c) for c in colour), **values)


def _edge(left_x, right_x, side_y, centre_y, exponent):
    """Points of a symmetric edge: y = centre_y at the middle, side_y at both ends; [E, 2] left to right."""
    u = np.linspace(-1.0, 1.0, _EDGE_POINTS)
    x = left_x + (u + 1.0) * 0.5 * (right_x - left_x)
    y = centre_y + (side_y - centre_y) * np.abs(u) ** exponent
    return np.stack([x, y], axis=1)


def _outline(anchors, style, top_exponent, bottom_exponent, side_taper):
    """Closed outline [K, 2]: arched top edge left to right, then the bottom edge right to left."""
    half = style.half_width * anchors["eye_distance"]
    left, right = anchors["centre_x"] - half, anchors["centre_x"] + half
    top = _edge(left, right, anchors["bridge_y"] + style.cheek_drop * anchors["scale_y"], anchors["bridge_y"],
                top_exponent)
    inset = (1.0 - side_taper) * half
    bottom = _edge(left + inset, right - inset, anchors["mouth_y"], anchors["chin_y"], bottom_exponent)
    return np.concatenate([top, bottom[::-1]])


# Outline of each shape: (top edge exponent, bottom edge exponent, bottom width / top width).
# Exponent 2 gives a rounded edge, 1 a pointed one (the folded KN95 ridge).
MASK_SHAPES = {
    "surgical": (2.0, 2.5, 0.9),
    "kn95": (1.0, 1.0, 0.75),
    "cloth": (1.6, 1.6, 0.8),
}


def mask_anchors(landmarks, style):
    """Key heights and widths of the mask from five landmarks [5, 2] (x, y) and a style."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    eyes, nose, mouth = landmarks[:2], landmarks[2], landmarks[3:]
    eye_y = float(eyes[:, 1].max())  # the lower eye: the top edge stays below both
    mouth_y = float(mouth[:, 1].mean())
    scale_y = (mouth_y - eye_y) / float(ARCFACE_TEMPLATE[3:, 1].mean() - ARCFACE_TEMPLATE[:2, 1].max())
    return {"eye_y": eye_y, "centre_x": float(nose[0]), "scale_y": scale_y,
            "eye_distance": float(np.linalg.norm(eyes[1] - eyes[0])),
            "bridge_y": eye_y + max(style.top_fraction * (nose[1] - eye_y), EYE_LINE_MARGIN * scale_y),
            "mouth_y": mouth_y,
            "chin_y": mouth_y + style.chin_fraction * (mouth_y - nose[1])}


def mask_polygons(landmarks, style):
    """The mask outline [K, 2] and its two straps (each [2, 2]), in image pixels."""
    anchors = mask_anchors(landmarks, style)
    outline = _outline(anchors, style, *MASK_SHAPES[style.shape])
    # Straps run from the upper corners out towards the ears, rising at most halfway to the eye line.
    lowest_allowed = anchors["eye_y"] + EYE_LINE_MARGIN * anchors["scale_y"]
    strap_end_y = max(lowest_allowed, outline[0, 1] - 0.5 * (outline[0, 1] - anchors["eye_y"]))
    reach = 0.35 * anchors["eye_distance"]
    straps = [np.array([outline[0], [outline[0, 0] - reach, strap_end_y]]),
              np.array([outline[_EDGE_POINTS - 1], [outline[_EDGE_POINTS - 1, 0] + reach, strap_end_y]])]
    return outline, straps


def _fixed_point(points):
    return np.round(np.asarray(points) * (1 << _SHIFT_BITS)).astype(np.int32)


def paint_mask(image, style, landmarks=None):
    """A copy of RGB uint8 `image` [H, W, 3] with a `style` mask painted from `landmarks` [5, 2].

    Landmarks default to the ArcFace template scaled to the image (aligned crops).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise PlscError(f"a face mask is painted on uint8 HWC RGB images (after DecodeImage with "
                        f"channel_first: False), got {image.dtype} {list(image.shape)}")
    height, width = image.shape[:2]
    if landmarks is None:
        landmarks = template_landmarks(height, width)
    outline, straps = mask_polygons(landmarks, style)
    # Coverage (0..1 per pixel, anti-aliased) decides where the mask replaces the face.
    coverage = np.zeros((height, width), dtype=np.uint8)
    cv2.fillPoly(coverage, [_fixed_point(outline)], 255, cv2.LINE_AA, _SHIFT_BITS)
    strap_width = max(1, int(round(width / TEMPLATE_SIZE)))
    for strap in straps:
        cv2.line(coverage, tuple(_fixed_point(strap[0])), tuple(_fixed_point(strap[1])), 255, strap_width,
                 cv2.LINE_AA, _SHIFT_BITS)
    alpha = coverage.astype(np.float32)[:, :, None] / 255.0
    return np.round(alpha * _mask_texture(outline, style, height, width)
                    + (1.0 - alpha) * image.astype(np.float32)).astype(np.uint8)


def _mask_texture(outline, style, height, width):
    """Mask fabric colour per pixel: darker towards the bottom edge, with faint horizontal pleats."""
    top, bottom = float(outline[:, 1].min()), float(outline[:, 1].max())
    rows = (np.arange(height, dtype=np.float32) - top) / max(bottom - top, 1.0)
    brightness = 1.0 - style.shading * np.clip(rows, 0.0, 1.0)
    if style.shape == "surgical":
        # Three horizontal pleats: shallow dips of brightness (6% at most) down the fabric.
        on_fabric = (rows > 0.0) & (rows < 1.0)
        brightness = brightness - 0.06 * np.clip(np.sin(rows * 6.0 * np.pi), 0.0, 1.0) * on_fabric
    texture = brightness[:, None, None] * np.array(style.colour, dtype=np.float32)[None, None, :]
    return np.broadcast_to(np.clip(texture, 0.0, 255.0), (height, width, 3))


@TRANSFORMS.register("RandomMask")
class RandomMask:
    """With probability `prob`, paint a random synthetic face mask (shape/colour/coverage jittered).

    Place it after DecodeImage (uint8 HWC RGB); images are taken as aligned to the ArcFace template.
    """

    def __init__(self, prob=0.1, shapes=("surgical", "kn95", "cloth")):
        unknown = [name for name in shapes if name not in MASK_SHAPES]
        if unknown or not shapes:
            raise PlscError(f"RandomMask.shapes: unknown mask shape(s) {unknown}; known: {', '.join(MASK_SHAPES)}")
        if not 0.0 <= float(prob) <= 1.0:
            raise PlscError(f"RandomMask.prob must be in [0, 1], got {prob}")
        self.prob = float(prob)
        self.shapes = tuple(shapes)

    def __call__(self, image, rng):
        if rng.random() >= self.prob:
            return image
        return paint_mask(image, draw_style(rng, self.shapes))


def split_after_decode(transform, purpose="masked evaluation"):
    """A Compose -> (ops up to DecodeImage, ops after it), so a mask can be painted in between.

    `purpose` names what needs the painting (a setting or key) in the error message.
    """
    for position, op in enumerate(transform.ops):
        if isinstance(op, DecodeImage):
            if op.channel_first or not op.to_rgb:
                raise PlscError(f"{purpose} paints masks, which needs DecodeImage with to_rgb: True and "
                                "channel_first: False in transform_ops")
            return Compose(transform.ops[:position + 1]), Compose(transform.ops[position + 1:])
    raise PlscError(f"{purpose} paints masks, which needs a DecodeImage op in transform_ops")


class OneSideMaskedPairs(Dataset):
    """A verification pair set with a mask painted on one image of every pair.

    Which image and which mask depend only on (seed, pair index), so the set is the same on every
    run and for any loader order. Items are (image, label, is_masked int64): 1 on the painted image,
    so a backbone that takes the flag sees which face wears the mask.
    """

    def __init__(self, pairs, seed=0, shapes=tuple(MASK_SHAPES)):
        self.pairs = pairs
        self.seed = int(seed)
        self.shapes = tuple(shapes)
        self.decode, self.after_decode = split_after_decode(pairs.transform)

    def __len__(self):
        return len(self.pairs)

    def masked_side(self, pair_index):
        """(side 0/1 that gets the mask, MaskStyle) of pair `pair_index`."""
        rng = np.random.default_rng((self.seed, int(pair_index)))
        side = int(rng.integers(2))
        return side, draw_style(rng, self.shapes)

    def __getitem__(self, index):
        pair_index, side = divmod(int(index), 2)
        rng = np.random.default_rng((self.pairs.seed, self.pairs.epoch, int(index)))
        try:
            image = self.decode(self.pairs.read_bytes(index), rng)
        except PlscError as error:
            raise PlscError(f"{self.pairs.describe(index)}: {error}") from None
        masked_side, style = self.masked_side(pair_index)
        if side == masked_side:
            image = paint_mask(image, style)
        return self.after_decode(image, rng), np.int64(self.pairs.labels[index]), np.int64(side == masked_side)

    def masked_flags(self):
        """is_masked of every image in pair order: int64 [2P], one 1 per pair."""
        flags = np.zeros(len(self), dtype=np.int64)
        for pair_index in range(len(self) // 2):
            flags[2 * pair_index + self.masked_side(pair_index)[0]] = 1
        return flags
