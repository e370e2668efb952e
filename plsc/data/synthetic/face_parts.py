"""The drawn parts of a synthetic face (outline, hair, eyes, brows, nose, mouth, extras).

Every function draws in template coordinates through a PosedCanvas. The eyes, nose tip and mouth
corners are drawn exactly at the given landmarks, which is what makes the images aligned.
"""
import dataclasses

import numpy as np

_OUTLINE_POINTS = 48
_NEUTRAL_GREY = np.array([185.0, 185.0, 185.0])


@dataclasses.dataclass(frozen=True)
class Palette:
    """RGB colours (float [3]) of one rendered face."""

    skin: np.ndarray
    hair: np.ndarray
    iris: np.ndarray
    lip: np.ndarray
    frame: np.ndarray
    clothes: np.ndarray


def _lerp(start, end, weight):
    return start + (end - start) * weight


_DARK_SKIN, _LIGHT_SKIN = np.array([72.0, 46.0, 32.0]), np.array([246.0, 216.0, 192.0])
_SKIN_WARMTH_TINT = np.array([0.06, -0.02, -0.12])
_BLOND, _BLACK_HAIR, _AUBURN = np.array([222.0, 192.0, 132.0]), np.array([28.0, 22.0, 20.0]), np.array([150.0, 72.0, 36.0])
_BROWN_IRIS, _GREEN_IRIS, _BLUE_IRIS = np.array([110.0, 70.0, 35.0]), np.array([85.0, 120.0, 70.0]), np.array([80.0, 120.0, 170.0])
_LIP_RED = np.array([178.0, 68.0, 78.0])
_BROW_DARK = np.array([20.0, 16.0, 14.0])


def _unit(value):
    return min(1.0, max(0.0, value))


def skin_colour(tone, warmth):
    """Skin RGB from lightness `tone` in [0, 1] and `warmth` (yellowish 0 .. reddish 1)."""
    return _lerp(_DARK_SKIN, _LIGHT_SKIN, _unit(tone)) * (1.0 + _SKIN_WARMTH_TINT * (_unit(warmth) - 0.5))


def hair_colour(darkness, warmth, greyness):
    """Hair RGB: blond .. black, pulled towards auburn by warmth and towards grey for the greyest."""
    base = _lerp(_lerp(_BLOND, _BLACK_HAIR, _unit(darkness)), _AUBURN, 0.45 * _unit(warmth))
    # Only the top 40% of greyness draws turn grey, so most people keep their colour.
    return _lerp(base, _NEUTRAL_GREY, _unit((greyness - 0.6) / 0.4))


def iris_colour(darkness, hue):
    """Iris RGB: hue 0 brown .. 0.5 green .. 1 blue, then darkened."""
    hue = _unit(hue)
    base = _lerp(_BROWN_IRIS, _GREEN_IRIS, hue * 2) if hue < 0.5 else _lerp(_GREEN_IRIS, _BLUE_IRIS, hue * 2 - 1)
    return base * (1.0 - 0.7 * _unit(darkness))


def lip_colour(skin, redness):
    """Lip RGB: darker skin pulled towards red."""
    return _lerp(skin * 0.85, _LIP_RED, 0.2 + 0.45 * _unit(redness))


def face_outline(identity):
    """Face contour [K,2]: a superellipse whose lower half narrows towards the chin (jaw taper)."""
    theta = np.linspace(0.0, 2 * np.pi, _OUTLINE_POINTS, endpoint=False)
    exponent = 2.0 / identity.face_roundness
    unit_x = np.sign(np.cos(theta)) * np.abs(np.cos(theta)) ** exponent
    unit_y = np.sign(np.sin(theta)) * np.abs(np.sin(theta)) ** exponent
    taper = 1.0 - identity.jaw_taper * np.clip(unit_y, 0.0, 1.0) ** 2
    return np.stack([identity.face_center_x + identity.face_half_width * unit_x * taper,
                     identity.face_center_y + identity.face_half_height * unit_y], axis=1)


_BAND_COLUMNS = 25


def _face_band(outline, top_y=None, bottom_y=None):
    """Polygon [K,2] of the part of the outline between the curves y = top_y(x) and y = bottom_y(x).

    The outline's upper and lower boundaries are read as functions of x (it is convex, and
    face_outline lists the lower half first, right to left), then cut by the curves column by
    column; columns where nothing is left are dropped. Returns None if nothing is left at all.
    """
    half = _OUTLINE_POINTS // 2
    lower = outline[:half + 1][::-1]
    upper = np.concatenate([outline[half:], outline[:1]])
    xs = np.linspace(upper[0, 0], upper[-1, 0], _BAND_COLUMNS)
    top = np.interp(xs, upper[:, 0], upper[:, 1])
    bottom = np.interp(xs, lower[:, 0], lower[:, 1])
    if top_y is not None:
        top = np.maximum(top, top_y(xs))
    if bottom_y is not None:
        bottom = np.minimum(bottom, bottom_y(xs))
    keep = top < bottom
    if keep.sum() < 2:
        return None
    xs, top, bottom = xs[keep], top[keep], bottom[keep]
    return np.concatenate([np.stack([xs, top], 1), np.stack([xs, bottom], 1)[::-1]])


def _scaled(outline, center, grow):
    return center + (outline - center) * grow


def draw_body(canvas, identity, palette):
    """Shoulders in clothes and the neck, shaded darker than the face under the chin."""
    center_x = identity.face_center_x
    chin_y = identity.face_center_y + identity.face_half_height
    canvas.ellipse((center_x, chin_y + 30.0), (64.0, 28.0), 0.0, palette.clothes)
    neck_half = identity.face_half_width * 0.55
    neck = [(center_x - neck_half, chin_y - 15.0), (center_x + neck_half, chin_y - 15.0),
            (center_x + neck_half * 1.1, chin_y + 20.0), (center_x - neck_half * 1.1, chin_y + 20.0)]
    canvas.fill(np.array(neck), palette.skin * 0.78)


def draw_back_hair(canvas, identity, outline, palette):
    """Hair behind the head: a cap over the skull, and for long hair panels down to the shoulders."""
    if identity.hair_style == "bald":
        return
    center = np.array([identity.face_center_x, identity.face_center_y])
    grow = 1.0 + identity.hair_volume / identity.face_half_width
    eye_level = identity.face_center_y - 0.3 * identity.face_half_height
    if identity.hair_style == "long":
        bottom = identity.face_center_y + identity.face_half_height * (0.6 + 0.6 * identity.hair_length)
        half_width = identity.face_half_width + identity.hair_volume
        canvas.fill(np.array([(center[0] - half_width, eye_level), (center[0] + half_width, eye_level),
                              (center[0] + half_width * 1.05, bottom),
                              (center[0] - half_width * 1.05, bottom)]), palette.hair * 0.9)
    cap = _face_band(_scaled(outline, center, grow), bottom_y=lambda x: np.full_like(x, eye_level + 4.0))
    canvas.fill(cap, palette.hair * 0.9)


def draw_ears(canvas, identity, landmarks, palette):
    """Ears at the sides of the face between eye and nose height (hidden by long hair)."""
    if identity.hair_style == "long":
        return
    ear_y = 0.5 * (landmarks[0, 1] + landmarks[2, 1])
    for side in (-1.0, 1.0):
        ear_x = identity.face_center_x + side * (identity.face_half_width - 1.0)
        half_axes = (identity.ear_size * 0.55, identity.ear_size)
        canvas.ellipse((ear_x, ear_y), half_axes, 0.0, palette.skin * 0.9)
        canvas.ellipse((ear_x + side * 1.0, ear_y), (half_axes[0] * 0.5, half_axes[1] * 0.6), 0.0,
                       palette.skin * 0.72, thickness=1.0, arc=(-90.0, 90.0) if side > 0 else (90.0, 270.0))


def draw_face_skin(canvas, identity, outline, palette):
    """The face area and a mole if the identity has one."""
    canvas.fill(outline, palette.skin)
    if identity.mole:
        canvas.circle((identity.mole_x, identity.mole_y), 0.9, palette.skin * 0.45)


def draw_front_hair(canvas, identity, outline, palette):
    """Hair covering the forehead down to the hairline (low for a fringe, tilted for a side part)."""
    if identity.hair_style == "bald":
        return
    center_x, half_width = identity.face_center_x, identity.face_half_width
    height = identity.hairline_height + (6.0 if identity.hair_style == "fringe" else 0.0)
    tilt = identity.hairline_tilt * (2.0 if identity.hair_style == "side_part" else 1.0)
    # Hairlines recede at the temples: lower (larger y) towards the sides of the face.
    curvature = 2.0 if identity.hair_style == "fringe" else 7.0

    def hairline(x):
        relative = (x - center_x) / half_width
        return height + curvature * relative ** 2 + tilt * relative

    # Slightly larger than the face so the face's anti-aliased rim does not show through.
    center = np.array([center_x, identity.face_center_y])
    front = _face_band(_scaled(outline, center, 1.02), bottom_y=hairline)
    if front is not None:
        canvas.fill(front, palette.hair)


def draw_eyes(canvas, identity, landmarks, palette, gaze):
    """Sclera, iris, pupil and lids, centred exactly on the eye landmarks; gaze [2] shifts the iris."""
    half_width = identity.eye_half_width
    half_height = half_width * min(0.8, max(0.15, identity.eye_openness))
    iris_radius = half_height * identity.iris_ratio
    for eye, side in ((landmarks[0], -1.0), (landmarks[1], 1.0)):
        # Mirror the tilt so a positive value lifts both outer corners.
        angle = -side * identity.eye_tilt_deg
        canvas.ellipse(eye, (half_width, half_height), angle, (236.0, 232.0, 226.0))
        iris_center = eye + gaze * half_width * 0.35
        canvas.circle(iris_center, iris_radius, palette.iris)
        canvas.circle(iris_center, iris_radius * 0.45, (18.0, 14.0, 14.0))
        canvas.ellipse(eye, (half_width, half_height), angle, palette.skin * 0.35, thickness=1.0,
                       arc=(180.0, 360.0))
        canvas.ellipse(eye, (half_width, half_height), angle, palette.skin * 0.7, thickness=1.0,
                       arc=(20.0, 160.0))


_BROW_ALONG = np.linspace(-1.0, 1.0, 9)


def draw_brows(canvas, identity, landmarks, palette):
    """Eyebrows as tapered bands above the eyes: gap, arch, slope and thickness from the identity."""
    half_length = 0.8 * identity.brow_length_ratio * identity.eye_half_width
    bands = []
    for eye, side in ((landmarks[0], -1.0), (landmarks[1], 1.0)):
        inner = -side * _BROW_ALONG  # 1 at the end nearest the nose
        x = eye[0] + _BROW_ALONG * half_length + side
        y = eye[1] - identity.brow_gap - identity.brow_arch * (1.0 - _BROW_ALONG ** 2) - 0.5 * identity.brow_slope * inner
        half_thickness = identity.brow_thickness * (0.5 + 0.2 * inner)  # thicker at the inner end
        bands.append(np.concatenate([np.stack([x, y - half_thickness], 1),
                                     np.stack([x, y + half_thickness], 1)[::-1]]))
    canvas.fill_many(bands, _lerp(palette.hair, _BROW_DARK, 0.35))


def draw_nose(canvas, identity, landmarks, palette):
    """Bridge lines, the nose bottom and nostrils; the tip is the nose landmark."""
    tip = landmarks[2]
    half_width = 0.5 * identity.nose_width
    shade = palette.skin * 0.78
    for side in (-1.0, 1.0):
        bridge = [(tip[0] + side * 3.0, identity.nose_bridge_top), (tip[0] + side * half_width * 0.55, tip[1] - 4.0)]
        canvas.polyline(np.array(bridge), palette.skin * 0.86)
        canvas.ellipse((tip[0] + side * half_width * 0.55, tip[1] - 0.3),
                       (identity.nostril_size * 1.2, identity.nostril_size * 0.7), side * 15.0, palette.skin * 0.42)
    spread = np.linspace(-1.0, 1.0, 7)
    bottom = np.stack([tip[0] + spread * half_width, tip[1] - 2.0 + 3.5 * (1.0 - spread ** 2)], 1)
    canvas.polyline(bottom, shade)


def _mouth_curve(left, right, smile, count=11):
    """Points [count,2] from the left to the right corner sagging by `smile` in the middle."""
    along = np.linspace(0.0, 1.0, count)[:, None]
    straight = left + (right - left) * along
    straight[:, 1] += 4.0 * smile * along[:, 0] * (1.0 - along[:, 0])
    return straight, along[:, 0]


def draw_beard(canvas, identity, landmarks, outline, palette):
    """Beard on the lower face below the nose, and a moustache over the upper lip."""
    colour = _lerp(palette.skin, palette.hair, identity.beard_density)
    if identity.beard:
        top = landmarks[2, 1] + 6.0
        beard = _face_band(outline, top_y=lambda x: top + 0.012 * (x - identity.face_center_x) ** 2)
        if beard is not None:
            canvas.fill(beard, colour)
    if identity.moustache:
        line, along = _mouth_curve(landmarks[3], landmarks[4], identity.smile)
        arch = np.sin(np.pi * along) ** 0.6
        upper = line - np.stack([np.zeros_like(along), identity.upper_lip * arch + 1.0 + 3.0 * arch], 1)
        lower = line - np.stack([np.zeros_like(along), identity.upper_lip * arch + 0.5], 1)
        canvas.fill(np.concatenate([upper, lower[::-1]]), colour)


def draw_mouth(canvas, identity, landmarks, palette):
    """Upper and lower lips between the mouth-corner landmarks, with a cupid's bow."""
    line, along = _mouth_curve(landmarks[3], landmarks[4], identity.smile)
    profile = np.sin(np.pi * along) ** 0.7
    bow = 1.0 - 0.3 * np.exp(-(((along - 0.5) / 0.08) ** 2))
    upper = line - np.stack([np.zeros_like(along), identity.upper_lip * profile * bow], 1)
    lower = line + np.stack([np.zeros_like(along), identity.lower_lip * np.sin(np.pi * along) ** 0.8], 1)
    canvas.fill(np.concatenate([line, upper[::-1]]), palette.lip * 0.92)
    canvas.fill(np.concatenate([line, lower[::-1]]), palette.lip)
    canvas.polyline(line, palette.lip * 0.45)


def draw_glasses(canvas, identity, landmarks, palette):
    """Round or rectangular frames around the eyes, a bridge and temples to the face sides."""
    if not identity.glasses:
        return
    thickness = 2.0 if identity.thick_frame else 1.0
    rim_half = identity.eye_half_width + 3.0
    for eye in landmarks[:2]:
        if identity.round_glasses:
            canvas.circle(eye, rim_half, palette.frame, thickness)
        else:
            corners = eye + np.array([[-1, -0.75], [1, -0.75], [1, 0.75], [-1, 0.75]]) * rim_half
            canvas.polyline(corners, palette.frame, thickness, closed=True)
    left, right = landmarks[0], landmarks[1]
    canvas.polyline(np.array([left + (rim_half, -1.0), right - (rim_half, 1.0)]), palette.frame, thickness)
    for eye, side in ((left, -1.0), (right, 1.0)):
        temple_end = (identity.face_center_x + side * identity.face_half_width, eye[1] - 1.0)
        canvas.polyline(np.array([eye + (side * rim_half, -1.0), temple_end]), palette.frame, thickness)


def draw_face(canvas, identity, outline, landmarks, palette, gaze):
    """The whole figure, back to front; outline [K,2] is face_outline(identity)."""
    draw_back_hair(canvas, identity, outline, palette)
    draw_body(canvas, identity, palette)
    draw_ears(canvas, identity, landmarks, palette)
    draw_face_skin(canvas, identity, outline, palette)
    draw_front_hair(canvas, identity, outline, palette)
    draw_brows(canvas, identity, landmarks, palette)
    draw_eyes(canvas, identity, landmarks, palette, gaze)
    draw_nose(canvas, identity, landmarks, palette)
    draw_beard(canvas, identity, landmarks, outline, palette)
    draw_mouth(canvas, identity, landmarks, palette)
    draw_glasses(canvas, identity, landmarks, palette)
