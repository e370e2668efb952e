"""Transform ops against direct numpy/OpenCV computations."""
import cv2
import numpy as np
import pytest

from plsc.data.transforms import build_transforms
from plsc.errors import PlscError

PLSC_OPS = [{"DecodeImage": {"to_rgb": True, "channel_first": False}},
            {"RandFlipImage": {"flip_code": 1}},
            {"NormalizeImage": {"scale": "1.0/255.0", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "order": ""}},
            {"ToCHWImage": None}]


def encoded_image(seed=0):
    bgr = np.random.default_rng(seed).integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
    return bgr, cv2.imencode(".png", bgr)[1].tobytes()


def test_plsc_pipeline_matches_numpy():
    bgr, data = encoded_image()
    pipeline = build_transforms(PLSC_OPS)
    for seed in range(8):
        rng = np.random.default_rng(seed)
        flip = np.random.default_rng(seed).random() < 0.5
        out = pipeline(data, rng)
        rgb = bgr[:, :, ::-1].astype(np.float32)
        if flip:
            rgb = rgb[:, ::-1]
        expected = ((rgb / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
        assert out.shape == (3, 12, 10) and out.dtype == np.float32
        np.testing.assert_allclose(out, expected, atol=1e-6)


def test_undecodable_and_unknown_op_errors():
    pipeline = build_transforms(PLSC_OPS[:1])
    with pytest.raises(PlscError, match="cannot decode"):
        pipeline(b"not an image", np.random.default_rng(0))
    with pytest.raises(PlscError, match="did you mean 'RandFlipImage'"):
        build_transforms([{"RandFlipImag": None}])
