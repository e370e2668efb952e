"""Identities of the synthetic faces: geometry and colour parameters drawn from (seed, index).

Coordinates are pixels of the 112x112 ArcFace template frame. The five landmarks are not
parameters: every identity's eyes, nose tip and mouth corners sit on the template (the images are
"aligned"), so identities differ in everything alignment leaves free: face outline, eye, brow,
nose and lip shapes, colours, hair, beard, glasses, moles.
"""
import dataclasses

import numpy as np

from plsc.data.synthetic.streams import identity_rng
from plsc.errors import PlscError

# The 112x112 ArcFace alignment template: left eye, right eye, nose tip, left and right mouth
# corner (insightface's `arcface_dst`, the target of MS1M / Glint360K / WebFace crops).
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)
TEMPLATE_SIZE = 112


@dataclasses.dataclass(frozen=True)
class ParameterRange:
    """Range an identity draws a parameter from, and how much one image varies it."""

    low: float
    high: float
    # Per-image standard deviation as a fraction of (high - low) at jitter 1.0.
    jitter_fraction: float


# Order matters: make_identity draws one uniform per entry in this order, so appending a new
# parameter keeps every existing identity unchanged.
PARAMETER_RANGES = {
    "face_center_x": ParameterRange(54.5, 57.5, 0.08),
    "face_center_y": ParameterRange(62.0, 68.0, 0.08),
    "face_half_width": ParameterRange(31.0, 39.0, 0.05),
    "face_half_height": ParameterRange(41.0, 49.0, 0.05),
    "face_roundness": ParameterRange(1.8, 2.8, 0.05),     # superellipse exponent of the outline
    "jaw_taper": ParameterRange(0.0, 0.35, 0.05),          # narrowing of the lower face
    "skin_tone": ParameterRange(0.0, 1.0, 0.03),           # 0 dark .. 1 light
    "skin_warmth": ParameterRange(0.0, 1.0, 0.05),         # 0 yellowish .. 1 reddish
    "ear_size": ParameterRange(5.0, 9.0, 0.05),
    "eye_half_width": ParameterRange(5.0, 8.0, 0.04),
    "eye_openness": ParameterRange(0.35, 0.65, 0.12),      # half height / half width
    "eye_tilt_deg": ParameterRange(-8.0, 8.0, 0.08),
    "iris_ratio": ParameterRange(0.8, 1.15, 0.04),         # iris radius / eye half height
    "iris_darkness": ParameterRange(0.0, 1.0, 0.03),
    "iris_hue": ParameterRange(0.0, 1.0, 0.03),            # 0 brown .. 0.5 green .. 1 blue
    "brow_gap": ParameterRange(7.0, 12.0, 0.08),           # brow height above the eye centre
    "brow_thickness": ParameterRange(1.2, 3.8, 0.05),
    "brow_length_ratio": ParameterRange(1.3, 2.0, 0.05),   # brow length / eye half width
    "brow_arch": ParameterRange(-1.0, 3.5, 0.1),
    "brow_slope": ParameterRange(-2.5, 2.5, 0.1),          # inner end raised (+) or lowered (-)
    "nose_width": ParameterRange(6.0, 11.0, 0.05),
    "nose_bridge_top": ParameterRange(52.0, 62.0, 0.05),
    "nostril_size": ParameterRange(1.0, 2.2, 0.05),
    "upper_lip": ParameterRange(1.5, 4.0, 0.08),
    "lower_lip": ParameterRange(2.0, 5.5, 0.08),
    "smile": ParameterRange(-2.0, 3.5, 0.2),               # mouth centre below the corners (+)
    "lip_redness": ParameterRange(0.0, 1.0, 0.05),
    "hair_darkness": ParameterRange(0.0, 1.0, 0.03),
    "hair_warmth": ParameterRange(0.0, 1.0, 0.03),
    "hair_greyness": ParameterRange(0.0, 1.0, 0.03),
    "hairline_height": ParameterRange(27.0, 37.0, 0.05),
    "hairline_tilt": ParameterRange(-5.0, 5.0, 0.1),
    "hair_volume": ParameterRange(2.0, 9.0, 0.08),
    "hair_length": ParameterRange(0.0, 1.0, 0.05),
    "beard_density": ParameterRange(0.35, 1.0, 0.05),
    "frame_darkness": ParameterRange(0.0, 1.0, 0.0),
    "mole_x": ParameterRange(36.0, 76.0, 0.01),
    "mole_y": ParameterRange(58.0, 100.0, 0.01),
}

HAIR_STYLES = ("bald", "short", "long", "fringe", "side_part")
# Cumulative probabilities of HAIR_STYLES.
_HAIR_STYLE_CUMULATIVE = np.array([0.08, 0.40, 0.65, 0.85, 1.0])
_FEATURE_PROBABILITY = {"beard": 0.2, "moustache": 0.2, "glasses": 0.15, "round_glasses": 0.5,
                        "thick_frame": 0.4, "mole": 0.3}

# Groups shift the ranges of skin tone and of a few geometry parameters, for fairness studies
# (per-group verification accuracy). The names are deliberately abstract.
GROUP_RANGES = {
    "neutral": {},
    "group_a": {"skin_tone": (0.72, 1.0), "face_half_width": (31.0, 35.5), "nose_width": (6.0, 8.5),
                "face_half_height": (44.0, 49.0)},
    "group_b": {"skin_tone": (0.5, 0.8), "face_half_width": (34.5, 39.0),
                "eye_openness": (0.35, 0.5), "face_half_height": (41.0, 46.0)},
    "group_c": {"skin_tone": (0.25, 0.55), "nose_width": (7.5, 10.5), "face_roundness": (2.2, 2.8),
                "lower_lip": (3.0, 5.5)},
    "group_d": {"skin_tone": (0.0, 0.3), "nose_width": (8.5, 11.0), "upper_lip": (2.5, 4.0),
                "lower_lip": (3.5, 5.5), "jaw_taper": (0.15, 0.35)},
}
GROUPS = tuple(GROUP_RANGES)


@dataclasses.dataclass(frozen=True)
class FaceIdentity:
    """One synthetic person: continuous shape/colour parameters plus discrete features."""

    index: int
    group: str
    face_center_x: float
    face_center_y: float
    face_half_width: float
    face_half_height: float
    face_roundness: float
    jaw_taper: float
    skin_tone: float
    skin_warmth: float
    ear_size: float
    eye_half_width: float
    eye_openness: float
    eye_tilt_deg: float
    iris_ratio: float
    iris_darkness: float
    iris_hue: float
    brow_gap: float
    brow_thickness: float
    brow_length_ratio: float
    brow_arch: float
    brow_slope: float
    nose_width: float
    nose_bridge_top: float
    nostril_size: float
    upper_lip: float
    lower_lip: float
    smile: float
    lip_redness: float
    hair_darkness: float
    hair_warmth: float
    hair_greyness: float
    hairline_height: float
    hairline_tilt: float
    hair_volume: float
    hair_length: float
    beard_density: float
    frame_darkness: float
    mole_x: float
    mole_y: float
    hair_style: str
    beard: bool
    moustache: bool
    glasses: bool
    round_glasses: bool
    thick_frame: bool
    mole: bool


def group_ranges(group):
    """(low, high) of every continuous parameter for `group` (None = neutral)."""
    name = "neutral" if group is None else group
    if name not in GROUP_RANGES:
        raise PlscError(f"unknown synthetic face group '{group}'; known: {', '.join(GROUPS)}")
    ranges = {key: (spec.low, spec.high) for key, spec in PARAMETER_RANGES.items()}
    ranges.update(GROUP_RANGES[name])
    return name, ranges


def make_identity(seed, index, group=None):
    """Identity `index` of the population seeded by `seed`, drawn in `group`'s ranges."""
    group_name, ranges = group_ranges(group)
    rng = identity_rng(seed, index)
    # The same uniforms are mapped through each group's ranges: identity k of two groups is the
    # same underlying draw, shifted, and adding a group changes no existing identity.
    continuous_uniforms = rng.random(len(PARAMETER_RANGES))
    values = {key: float(low + u * (high - low))
              for (key, (low, high)), u in zip(ranges.items(), continuous_uniforms)}
    feature_uniforms = dict(zip(["hair_style", *_FEATURE_PROBABILITY], rng.random(len(_FEATURE_PROBABILITY) + 1)))
    hair_style = HAIR_STYLES[int(np.searchsorted(_HAIR_STYLE_CUMULATIVE, feature_uniforms.pop("hair_style")))]
    features = {key: bool(u < _FEATURE_PROBABILITY[key]) for key, u in feature_uniforms.items()}
    return FaceIdentity(index=int(index), group=group_name, hair_style=hair_style, **values, **features)


_JITTER_NAMES = tuple(PARAMETER_RANGES)
_JITTER_SD = np.array([spec.jitter_fraction * (spec.high - spec.low) for spec in PARAMETER_RANGES.values()])
# Jittered values stay inside the population's range widened by 10%, so no shape degenerates.
_JITTER_LOW = np.array([spec.low - 0.1 * (spec.high - spec.low) for spec in PARAMETER_RANGES.values()])
_JITTER_HIGH = np.array([spec.high + 0.1 * (spec.high - spec.low) for spec in PARAMETER_RANGES.values()])


def jitter_identity(identity, rng, strength):
    """Per-image variation: every continuous parameter moves by N(0, strength * its jitter sd)."""
    noise = rng.standard_normal(len(_JITTER_NAMES))
    if strength == 0:
        return identity
    values = np.array([getattr(identity, name) for name in _JITTER_NAMES])
    jittered = np.clip(values + strength * _JITTER_SD * noise, _JITTER_LOW, _JITTER_HIGH)
    return dataclasses.replace(identity, **dict(zip(_JITTER_NAMES, jittered.tolist())))
