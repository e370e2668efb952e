"""Drawing in template coordinates onto an image through a similarity transform (the head pose)."""
import math

import cv2
import numpy as np

# cv2 draws with fixed-point coordinates of this many fractional bits: sub-pixel placement, so a
# landmark is where the maths says, not rounded to the pixel grid.
_SHIFT_BITS = 4
_FIXED_ONE = 1 << _SHIFT_BITS


def similarity_matrix(scale, angle_deg, center, translation):
    """2x3 matrix: rotate by `angle_deg` and scale about `center` [2], then translate [2]."""
    angle = math.radians(angle_deg)
    cos_scaled, sin_scaled = scale * math.cos(angle), scale * math.sin(angle)
    linear = np.array([[cos_scaled, -sin_scaled], [sin_scaled, cos_scaled]])
    center = np.asarray(center, dtype=np.float64)
    offset = center - linear @ center + np.asarray(translation, dtype=np.float64)
    return np.hstack([linear, offset[:, None]])


def apply_matrix(matrix, points):
    """points [K,2] -> matrix @ [x, y, 1] for each point, [K,2] float64."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


class PosedCanvas:
    """An RGB uint8 image plus the template->image similarity transform used for every shape."""

    def __init__(self, image, matrix):
        self.image = image
        self.matrix = matrix
        self.scale = math.hypot(matrix[0, 0], matrix[1, 0])
        self.angle_deg = math.degrees(math.atan2(matrix[1, 0], matrix[0, 0]))
        self._linear_fixed = (matrix[:, :2] * _FIXED_ONE).T.copy()
        self._offset_fixed = matrix[:, 2] * _FIXED_ONE
        self._row_x, self._row_y = (tuple(float(v) for v in row) for row in self.matrix)

    def _fixed(self, points):
        """points [K,2] -> image fixed-point coordinates [K,2] int32."""
        return np.rint(np.asarray(points, dtype=np.float64) @ self._linear_fixed + self._offset_fixed).astype(np.int32)

    def _fixed_point(self, point):
        # One point in plain Python: drawing calls are many and tiny, numpy overhead would dominate.
        x, y = float(point[0]), float(point[1])
        return (int(round((self._row_x[0] * x + self._row_x[1] * y + self._row_x[2]) * _FIXED_ONE)),
                int(round((self._row_y[0] * x + self._row_y[1] * y + self._row_y[2]) * _FIXED_ONE)))

    def _thickness(self, thickness):
        return max(1, int(round(thickness * self.scale)))

    def fill(self, points, colour):
        """Filled polygon, points [K,2] in template coordinates."""
        cv2.fillPoly(self.image, [self._fixed(points)], _rgb(colour), cv2.LINE_AA, _SHIFT_BITS)

    def fill_many(self, polygons, colour):
        """Several filled polygons of one colour, each [K,2] in template coordinates."""
        cv2.fillPoly(self.image, [self._fixed(points) for points in polygons], _rgb(colour), cv2.LINE_AA,
                     _SHIFT_BITS)

    def polyline(self, points, colour, thickness=1.0, closed=False):
        """Open (or closed) polyline through points [K,2]."""
        cv2.polylines(self.image, [self._fixed(points)], closed, _rgb(colour),
                      self._thickness(thickness), cv2.LINE_AA, _SHIFT_BITS)

    def ellipse(self, center, half_axes, angle_deg, colour, thickness=-1.0, arc=(0.0, 360.0)):
        """Ellipse (filled if thickness < 0) centred at `center` with `half_axes` (a, b)."""
        fixed_center = self._fixed_point(center)
        fixed_axes = tuple(max(1, int(round(a * self.scale * _FIXED_ONE))) for a in half_axes)
        line_thickness = -1 if thickness < 0 else self._thickness(thickness)
        cv2.ellipse(self.image, fixed_center, fixed_axes, angle_deg + self.angle_deg, arc[0], arc[1],
                    _rgb(colour), line_thickness, cv2.LINE_AA, _SHIFT_BITS)

    def coverage(self, points):
        """Anti-aliased coverage [H,W] float32 in [0, 1] of the polygon points [K,2]."""
        mask = np.zeros(self.image.shape[:2], dtype=np.uint8)
        cv2.fillPoly(mask, [self._fixed(points)], 255, cv2.LINE_AA, _SHIFT_BITS)
        return mask.astype(np.float32) * np.float32(1.0 / 255.0)

    def circle(self, center, radius, colour, thickness=-1.0):
        """Circle of `radius` (filled if thickness < 0)."""
        self.ellipse(center, (radius, radius), 0.0, colour, thickness)


def _rgb(colour):
    return tuple(min(255.0, max(0.0, float(c))) for c in colour)
