"""Five-point alignment: a face moved by a known similarity comes back onto the template."""
import cv2
import numpy as np
import pytest

from plsc.data.align import ARCFACE_TEMPLATE_112, align_face, estimate_similarity, template_points
from plsc.errors import PlscError


def similarity_matrix(scale, angle, shift):
    cos, sin = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[cos, -sin, shift[0]], [sin, cos, shift[1]]])


def apply(matrix, points):
    return points @ matrix[:, :2].T + matrix[:, 2]


def lstsq_similarity(src, dst):
    """Independent fit: solve [x -y 1 0; y x 0 1] [a b tx ty]^T = dst in the least-squares sense."""
    rows = []
    for x, y in src:
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), dst.reshape(-1), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def test_template_is_the_arcface_one():
    assert ARCFACE_TEMPLATE_112.shape == (5, 2)
    np.testing.assert_allclose(ARCFACE_TEMPLATE_112[0], [38.2946, 51.6963])
    np.testing.assert_allclose(template_points(224), 2 * ARCFACE_TEMPLATE_112)


def test_estimate_recovers_exact_and_noisy_similarities():
    rng = np.random.default_rng(0)
    truth = similarity_matrix(1.7, 0.4, (20.0, -5.0))
    src = ARCFACE_TEMPLATE_112
    np.testing.assert_allclose(estimate_similarity(src, apply(truth, src)), truth, atol=1e-9)
    noisy = apply(truth, src) + rng.normal(scale=1.5, size=src.shape)
    np.testing.assert_allclose(estimate_similarity(src, noisy), lstsq_similarity(src, noisy), atol=1e-8)


def blob_face(size=112, sigma=1.6):
    """Five Gaussian dots at the template landmarks: uint8 [size, size, 3]."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    image = np.zeros((size, size))
    for x, y in ARCFACE_TEMPLATE_112:
        image += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma ** 2))
    image = np.clip(255 * image, 0, 255).astype(np.uint8)
    return np.repeat(image[:, :, None], 3, axis=2)


def blob_centres(image, guesses, radius=7):
    """Intensity-weighted centroid of the image near each guessed point: [5, 2]."""
    gray = image[:, :, 0].astype(np.float64)
    ys, xs = np.mgrid[0:gray.shape[0], 0:gray.shape[1]]
    centres = []
    for gx, gy in guesses:
        window = (np.abs(xs - gx) <= radius) & (np.abs(ys - gy) <= radius)
        weights = gray * window
        centres.append([np.sum(weights * xs) / weights.sum(), np.sum(weights * ys) / weights.sum()])
    return np.array(centres)


@pytest.mark.parametrize("scale,angle", [(1.6, 0.3), (0.8, -0.5), (2.1, 2.8)])
def test_warped_face_aligns_back_within_half_a_pixel(scale, angle):
    canvas = 240
    matrix = similarity_matrix(scale, angle, (0.0, 0.0))
    # centre the moved face in the canvas
    matrix[:, 2] = canvas / 2 - apply(matrix, np.array([[56.0, 72.0]]))[0]
    loose_crop = cv2.warpAffine(blob_face(), matrix, (canvas, canvas), flags=cv2.INTER_LINEAR)
    landmarks = apply(matrix, ARCFACE_TEMPLATE_112)
    aligned = align_face(loose_crop, landmarks)
    assert aligned.shape == (112, 112, 3) and aligned.dtype == np.uint8
    found = blob_centres(aligned, ARCFACE_TEMPLATE_112)
    assert np.max(np.linalg.norm(found - ARCFACE_TEMPLATE_112, axis=1)) < 0.5


def test_degenerate_landmarks_are_a_user_error():
    with pytest.raises(PlscError, match="landmarks"):
        estimate_similarity(np.zeros((5, 2)), ARCFACE_TEMPLATE_112)
