"""Image folder + label list (`relative/path.jpg<TAB>label` per line), PLSC's training format."""
import os

import numpy as np

from plsc.data.dataset.base import FaceImageDataset
from plsc.errors import PlscError
from plsc.registry import DATASETS


def read_label_file(path, delimiter="\t", columns=2):
    """Lines of a label list -> list of (line_number, fields); a malformed line is a PlscError."""
    if not os.path.isfile(path):
        raise PlscError(f"label file not found: {path}")
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line:
                continue
            # PLSC splits on TAB; many hand-made lists use spaces, so fall back to any whitespace.
            fields = line.split(delimiter) if delimiter in line else line.split()
            if len(fields) != columns:
                raise PlscError(f"{path}:{line_number}: expected {columns} fields, got {line!r}")
            rows.append((line_number, fields))
    if not rows:
        raise PlscError(f"{path}: no samples listed")
    return rows


@DATASETS.register("FaceIdentificationDataset")
class FaceIdentificationDataset(FaceImageDataset):
    """Training images listed in `cls_label_path`, paths relative to `image_root`."""

    def __init__(self, image_root, cls_label_path, transform_ops=None, delimiter="\t", seed=0):
        super().__init__(transform_ops, seed)
        if not os.path.isdir(image_root):
            raise PlscError(f"image_root is not a directory: {image_root}")
        self.image_root = image_root
        self.cls_label_path = cls_label_path
        rows = read_label_file(cls_label_path, delimiter)
        self.line_numbers = np.array([number for number, _ in rows], dtype=np.int64)
        self.paths = [fields[0] for _, fields in rows]
        try:
            self.labels = np.array([int(fields[1]) for _, fields in rows], dtype=np.int64)
        except ValueError:
            number, fields = next((n, f) for n, f in rows if not f[1].lstrip("-").isdigit())
            raise PlscError(f"{cls_label_path}:{number}: label {fields[1]!r} is not an integer") from None

    def describe(self, index):
        return (f"{os.path.join(self.image_root, self.paths[index])} "
                f"({self.cls_label_path}:{self.line_numbers[index]})")

    def read_bytes(self, index):
        path = os.path.join(self.image_root, self.paths[index])
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except OSError as error:
            raise PlscError(f"cannot read image: {error.strerror}") from None
