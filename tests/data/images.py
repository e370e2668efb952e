"""Random-pixel image files for the data tools' tests."""
import os

import cv2
import numpy as np


def write_image(path, size, seed, extension=".jpg"):
    """A size x size random RGB image encoded as `extension` at `path`; returns the encoded bytes."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ok, encoded = cv2.imencode(extension, pixels)
    assert ok
    with open(path, "wb") as handle:
        handle.write(encoded.tobytes())
    return encoded.tobytes()
