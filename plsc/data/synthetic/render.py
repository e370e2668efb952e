"""Render one aligned 112x112 face image of an identity with per-image nuisance variation.

`jitter` scales every per-image random change: the identity's parameters, expression and
alignment noise of the landmarks, head pose, background clutter, lighting, blur and noise.
At jitter 0 the image is the identity's canonical portrait (the generator is still consumed but
has no effect) with its landmarks exactly on the ArcFace template.
"""
import functools
import math

import cv2
import numpy as np

from plsc.data.synthetic.canvas import PosedCanvas, apply_matrix, similarity_matrix
from plsc.data.synthetic.face_parts import (Palette, draw_face, face_outline, hair_colour, iris_colour,
                                            lip_colour, skin_colour)
from plsc.data.synthetic.identity import ARCFACE_TEMPLATE, TEMPLATE_SIZE, jitter_identity

# Bump when a change alters the pixels rendered for a given seed, so cached data sets are redone.
RENDER_VERSION = 1

_NEUTRAL_BACKGROUND_LEVEL = 150.0
_NEUTRAL_CLOTHES = np.array([90.0, 100.0, 120.0])
# Standard deviations at jitter 1.0, in template pixels / degrees / log-scale / intensity levels.
# Chosen so landmarks move ~2 px on average (MS1M-like alignment error) and a tiny CNN must learn
# to look past lighting and clutter to tell identities apart.
_LANDMARK_SD = 0.6
_ROTATION_SD_DEG = 5.0
_LOG_SCALE_SD = 0.04
_SHIFT_SD = 1.5
_GAZE_SD = 0.3
_LIGHT_LATERAL_MAX = 0.75
_AMBIENT = 0.6
_COLOUR_GAIN_SD = 0.06
_CONTRAST_LOG_SD = 0.15
_BRIGHTNESS_SD = 12.0
_BLUR_SIGMA_MAX = 1.0
_NOISE_SD_MAX = 4.0
_SHADING_ELLIPSOID_GROW = 1.12
_SHADING_GRID = 16
_NOISE_BANK_SEED = 20240917
# Normal draws are clipped so a rare extreme pose cannot push the face out of the crop.
_CLIP_SIGMAS = 2.0


def _clipped_normal(rng, shape=None):
    """Standard normal draw(s) clipped to +-_CLIP_SIGMAS (a float when shape is None)."""
    if shape is None:
        return min(_CLIP_SIGMAS, max(-_CLIP_SIGMAS, float(rng.standard_normal())))
    return np.clip(rng.standard_normal(shape), -_CLIP_SIGMAS, _CLIP_SIGMAS)


def _palette(face, rng, scene_mix):
    """Colours of this image: the identity's, plus clothes that change from photo to photo."""
    skin = skin_colour(face.skin_tone, face.skin_warmth)
    frame = (40.0, 38.0, 42.0) + (1.0 - face.frame_darkness) * np.array([120.0, 80.0, 30.0])
    clothes = _NEUTRAL_CLOTHES + scene_mix * (rng.uniform(20.0, 230.0, 3) - _NEUTRAL_CLOTHES)
    return Palette(skin=skin, hair=hair_colour(face.hair_darkness, face.hair_warmth, face.hair_greyness),
                   iris=iris_colour(face.iris_darkness, face.iris_hue), lip=lip_colour(skin, face.lip_redness),
                   frame=frame, clothes=clothes)


def _background(rng, size, scene_mix):
    """Clutter behind the head: a four-corner colour gradient and a few random shapes, uint8 [size,size,3]."""
    corners = rng.uniform(30.0, 225.0, (2, 2, 3)).astype(np.uint8)
    clutter = cv2.resize(corners, (size, size), interpolation=cv2.INTER_LINEAR)
    # One draw for all shapes: [kind, r, g, b, x0, y0, x1, y1, extent] in [0, 1) per shape.
    for shape in rng.random((int(rng.integers(3, 8)), 9)):
        kind = int(shape[0] * 3)
        colour = tuple(float(c) for c in shape[1:4] * 255.0)
        start_x, start_y, end_x, end_y = (int(c) for c in shape[4:8] * size)
        extent = int((0.05 + 0.25 * shape[8]) * size)
        if kind == 0:
            cv2.circle(clutter, (start_x, start_y), extent, colour, -1, cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(clutter, (start_x, start_y), (start_x + extent, end_y), colour, -1, cv2.LINE_AA)
        else:
            cv2.line(clutter, (start_x, start_y), (end_x, end_y), colour, max(1, extent // 6), cv2.LINE_AA)
    if scene_mix == 1.0:
        return clutter
    return cv2.addWeighted(clutter, scene_mix, clutter, 0.0, (1.0 - scene_mix) * _NEUTRAL_BACKGROUND_LEVEL)


def _pose_matrix(rng, strength, size):
    """Template -> image 2x3 similarity: small in-plane rotation, scale and shift, then resize."""
    angle = strength * _ROTATION_SD_DEG * _clipped_normal(rng)
    scale = math.exp(strength * _LOG_SCALE_SD * _clipped_normal(rng))
    shift = strength * _SHIFT_SD * _clipped_normal(rng, 2)
    center = (TEMPLATE_SIZE / 2.0, TEMPLATE_SIZE / 2.0)
    return similarity_matrix(scale, angle, center, shift) * (size / TEMPLATE_SIZE)


@functools.lru_cache(maxsize=4)
def _shading_grid(size):
    """Homogeneous image coordinates [3, G*G] of a coarse G x G grid spanning a size x size image.

    Lighting varies smoothly, so it is computed on this grid and resized; the grid points sit
    where cv2.resize (INTER_LINEAR) expects the centres of the coarse pixels.
    """
    centres = (np.arange(_SHADING_GRID) + 0.5) * (size / _SHADING_GRID) - 0.5
    ys, xs = np.meshgrid(centres, centres, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])


def _shading(face, outline, canvas, light):
    """Lambertian shading [H,W] float32: the face as an ellipsoid, everything else a flat wall."""
    size = canvas.image.shape[0]
    template_xy = cv2.invertAffineTransform(canvas.matrix) @ _shading_grid(size)
    # The ellipsoid is a little larger than the outline, whose superellipse corners reach ~10%
    # beyond the inscribed ellipse: every face pixel then has a surface normal.
    u = (template_xy[0] - face.face_center_x) / (_SHADING_ELLIPSOID_GROW * face.face_half_width)
    v = (template_xy[1] - face.face_center_y) / (_SHADING_ELLIPSOID_GROW * face.face_half_height)
    depth = np.sqrt(np.clip(1.0 - u * u - v * v, 0.0, None))
    face_lit = np.clip(u * light[0] + v * light[1] + depth * light[2], 0.0, 1.0)
    face_lit = cv2.resize(face_lit.reshape(_SHADING_GRID, _SHADING_GRID).astype(np.float32), (size, size),
                          interpolation=cv2.INTER_LINEAR)
    # Background, hair, neck face the camera (normal (0, 0, 1)); blend along the anti-aliased edge.
    lit = light[2] + canvas.coverage(outline) * (face_lit - np.float32(light[2]))
    return _AMBIENT + (1.0 - _AMBIENT) * lit


def _random_light(rng, strength):
    """Unit light direction [3]: frontal at strength 0, up to ~50 degrees off-axis at 1."""
    azimuth = rng.uniform(0.0, 2 * np.pi)
    lateral = min(0.95, strength * rng.uniform(0.0, _LIGHT_LATERAL_MAX))
    return np.array([lateral * math.cos(azimuth), lateral * math.sin(azimuth), math.sqrt(1 - lateral ** 2)])


@functools.lru_cache(maxsize=4)
def _noise_bank(count):
    """Fixed standard-normal values [4 * count] float32; images take random windows of it.

    Drawing fresh Gaussian noise for every pixel costs more than rendering the face; a window at
    a random offset of a fixed bank looks the same to a network and is just as deterministic.
    """
    return np.random.default_rng(_NOISE_BANK_SEED).standard_normal(4 * count, dtype=np.float32)


def _photometric(image, shading, rng, strength):
    """Shading, colour cast, contrast, brightness, blur and sensor noise; uint8 like `image`."""
    gains = 1.0 + strength * _COLOUR_GAIN_SD * _clipped_normal(rng, 3)
    contrast = math.exp(strength * _CONTRAST_LOG_SD * _clipped_normal(rng))
    brightness = strength * _BRIGHTNESS_SD * _clipped_normal(rng)
    blur_sigma = strength * rng.uniform(0.0, _BLUR_SIGMA_MAX) * image.shape[0] / TEMPLATE_SIZE
    noise_sd = strength * rng.uniform(0.0, _NOISE_SD_MAX)
    noise_offset = int(rng.integers(0, 3 * image.size))
    # out = (pixel * shading * gain - 128) * contrast + 128 + brightness, folded into one multiply-add.
    factor = shading[..., None] * (gains * contrast).astype(np.float32)
    pixels = cv2.multiply(image, factor, dtype=cv2.CV_32F)
    if blur_sigma > 0.3:  # below that the kernel is a no-op at pixel scale
        pixels = cv2.GaussianBlur(pixels, (0, 0), blur_sigma)
    offset = 128.0 * (1.0 - contrast) + brightness
    if noise_sd > 0.0:
        noise = _noise_bank(image.size)[noise_offset:noise_offset + image.size].reshape(image.shape)
        pixels = cv2.scaleAdd(noise, noise_sd, pixels)
    # cv2 rounds and saturates to [0, 255] when writing 8-bit output.
    return cv2.add(pixels, (offset, offset, offset, 0.0), dtype=cv2.CV_8U)


def render_face(identity, rng, jitter=1.0, size=112):
    """Render `identity` -> (image_rgb uint8 [size,size,3], landmarks float32 [5,2] in pixels).

    The landmarks are where the eyes, nose tip and mouth corners were drawn, after this image's
    expression noise and head pose; at jitter 0 they are the ArcFace template (scaled to `size`).
    """
    strength = float(jitter)
    if strength < 0:
        raise ValueError(f"jitter must be >= 0, got {jitter}")
    # Scene randomness (background, clothes) fades in with jitter up to 1, then stays full.
    scene_mix = min(strength, 1.0)
    face = jitter_identity(identity, rng, strength)
    landmarks = ARCFACE_TEMPLATE.astype(np.float64) + strength * _LANDMARK_SD * _clipped_normal(rng, (5, 2))
    gaze = strength * _GAZE_SD * _clipped_normal(rng, 2)
    palette = _palette(face, rng, scene_mix)
    matrix = _pose_matrix(rng, strength, size)
    canvas = PosedCanvas(_background(rng, size, scene_mix), matrix)
    outline = face_outline(face)
    draw_face(canvas, face, outline, landmarks, palette, gaze)
    shading = _shading(face, outline, canvas, _random_light(rng, strength))
    image = _photometric(canvas.image, shading, rng, strength)
    return image, apply_matrix(matrix, landmarks).astype(np.float32)
