"""Five-point face alignment onto the ArcFace 112x112 template (similarity transform + warp)."""
import cv2
import numpy as np
from skimage.transform import SimilarityTransform

from plsc.errors import PlscError

# Left eye, right eye, nose tip, left and right mouth corner in a 112x112 crop: the template the
# public face-recognition training sets (MS1M, Glint360K, WebFace) were aligned with.
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963],
     [73.5318, 51.5014],
     [56.0252, 71.7366],
     [41.5493, 92.3655],
     [70.7299, 92.2041]],
    dtype=np.float64,
)


def template_points(size=112):
    """The ArcFace template for a square crop of `size` pixels: [5, 2] (scaled from the 112 one)."""
    return ARCFACE_TEMPLATE_112 * (size / 112.0)


def estimate_similarity(src_points, dst_points):
    """Least-squares similarity (rotation, uniform scale, shift) mapping src to dst: [2, 3] float64.

    src_points, dst_points: [K, 2] (x, y), K >= 2.
    """
    src_points = np.asarray(src_points, dtype=np.float64).reshape(-1, 2)
    dst_points = np.asarray(dst_points, dtype=np.float64).reshape(-1, 2)
    transform = SimilarityTransform.from_estimate(src_points, dst_points)
    if not transform:
        # from_estimate returns a falsy failure object (e.g. all points coincide).
        raise PlscError(f"cannot fit a similarity transform to landmarks {src_points.tolist()}: {transform}")
    return transform.params[:2, :]


def align_face(image, landmarks, size=112):
    """Warp `image` so its 5 landmarks land on the ArcFace template: uint8 [size, size, C].

    image: uint8 [H, W, C]; landmarks: [5, 2] (x, y) in image pixels. Outside pixels are black.
    """
    matrix = estimate_similarity(landmarks, template_points(size))
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def read_aligned(path, landmarks, size=112):
    """Decode an image file and align it: RGB uint8 [size, size, 3]; PlscError if unreadable."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise PlscError(f"{path}: cannot read image")
    return align_face(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), landmarks, size)
