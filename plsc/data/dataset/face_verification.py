"""Verification pairs: a converted folder (`img1<TAB>img2<TAB>issame`) or an LFW-style `.bin`."""
import os

import numpy as np

from plsc.data.dataset.base import FaceImageDataset
from plsc.data.dataset.face_identification import read_label_file
from plsc.errors import PlscError
from plsc.registry import DATASETS


@DATASETS.register("FaceVerificationDataset")
class FaceVerificationDataset(FaceImageDataset):
    """2*P images in pair order (2k, 2k+1); `issame` [P] bool. Item = (image, issame of its pair)."""

    def __init__(self, image_root=None, cls_label_path=None, transform_ops=None, delimiter="\t",
                 bin_path=None, name=None, seed=0):
        super().__init__(transform_ops, seed)
        if bin_path is not None:
            from plsc.data.verification_bin import load_bin

            self.source = bin_path
            self.encoded, self.issame = load_bin(bin_path)
            self.paths = None
        else:
            if image_root is None or cls_label_path is None:
                raise PlscError("FaceVerificationDataset needs bin_path, or image_root and cls_label_path")
            self.source = cls_label_path
            rows = read_label_file(cls_label_path, delimiter, columns=3)
            self.image_root = image_root
            self.paths = [path for _, fields in rows for path in fields[:2]]
            self.line_numbers = [number for number, _ in rows for _ in range(2)]
            self.issame = np.array([fields[2].strip().lower() in ("1", "true") for _, fields in rows])
        self.name = name or os.path.basename(os.path.normpath(os.path.dirname(self.source) if bin_path is None
                                                               else os.path.splitext(bin_path)[0]))
        self.labels = np.repeat(self.issame.astype(np.int64), 2)

    def describe(self, index):
        if self.paths is None:
            return f"{self.source} (image {index}, pair {index // 2})"
        return f"{os.path.join(self.image_root, self.paths[index])} ({self.source}:{self.line_numbers[index]})"

    def read_bytes(self, index):
        if self.paths is None:
            data = self.encoded[index]
            return data.tobytes() if isinstance(data, np.ndarray) else data
        try:
            with open(os.path.join(self.image_root, self.paths[index]), "rb") as handle:
                return handle.read()
        except OSError as error:
            raise PlscError(f"cannot read image: {error.strerror}") from None
