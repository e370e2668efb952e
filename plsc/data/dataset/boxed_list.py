"""FFEM's training list: `image_list.json` = {relative path: {label, x1, y1, x2, y2}}, a face box per image.

The box is in pixels (left, top, right, bottom). A sample is the image cropped to its box and resized
to `image_size` x `image_size` (aspect not kept). In training (`jitter_prob: 0.5`) half the samples
move each box side by up to `jitter` (10 %) of the box's width (x) or height (y), drawn from the
sample's generator, and the jittered box is clipped to the image; evaluation uses the exact box.
Labels are renumbered 0, 1, ... in order of first appearance in the file, as FFEM does.

`transform_ops` are the config's ops; the crop happens right after `DecodeImage` (which must be
listed first, RGB, channel last).
"""
import json
import os

import cv2
import numpy as np

from plsc.data.dataset.base import FaceImageDataset
from plsc.data.dataset.face_identification import existing_files, read_file
from plsc.data.mask import split_after_decode
from plsc.errors import PlscError
from plsc.registry import DATASETS

BOX_KEYS = ("x1", "y1", "x2", "y2")


def read_image_list(path):
    """image_list.json -> (paths [N], original labels [N] int64, boxes float64 [N, 4]); bad entries are PlscErrors."""
    if not os.path.isfile(path):
        raise PlscError(f"image list not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            entries = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PlscError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(entries, dict) or not entries:
        raise PlscError(f"{path}: expected a non-empty mapping {{relative path: {{label, x1, y1, x2, y2}}}}")
    paths, labels, boxes = [], [], []
    for name, entry in entries.items():
        where = f"{path}: entry {name!r}"
        if not isinstance(entry, dict) or any(key not in entry for key in ("label", *BOX_KEYS)):
            raise PlscError(f"{where}: needs the keys label, {', '.join(BOX_KEYS)}, got {entry!r}")
        label = entry["label"]
        if isinstance(label, bool) or not (isinstance(label, int) or (isinstance(label, str) and label.isdigit())):
            raise PlscError(f"{where}: label {label!r} is not an integer")
        box = [entry[key] for key in BOX_KEYS]
        if any(isinstance(value, bool) or not isinstance(value, (int, float)) for value in box):
            raise PlscError(f"{where}: box {box} must be numbers")
        if box[0] < 0 or box[1] < 0 or box[2] <= box[0] or box[3] <= box[1]:
            raise PlscError(f"{where}: box {box} is not a box inside an image (need 0 <= x1 < x2, 0 <= y1 < y2)")
        paths.append(name)
        labels.append(int(label))
        boxes.append(box)
    return paths, np.array(labels, dtype=np.int64), np.array(boxes, dtype=np.float64)


def renumber_by_first_appearance(labels):
    """Original labels [N] -> 0, 1, ... in order of first appearance: int64 [N]."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank_of_unique = np.empty(first.size, dtype=np.int64)
    rank_of_unique[np.argsort(first)] = np.arange(first.size)
    return rank_of_unique[inverse.reshape(-1)]


def jitter_box(box, fraction, rng):
    """Each side moved by up to +-fraction of the box's width (x) or height (y): float64 [4] -> [4]."""
    width, height = box[2] - box[0], box[3] - box[1]
    scale = np.array([width, height, width, height]) * fraction
    return box + rng.uniform(-1.0, 1.0, 4) * scale


def check_box_fits(box, image_shape):
    """A PlscError when the box (x1, y1, x2, y2) reaches past the image [H, W, ...]."""
    height, width = image_shape[:2]
    if box[2] > width or box[3] > height:
        raise PlscError(f"box {[float(value) for value in box]} lies outside the {width}x{height} image")


def crop_box(image, box, size):
    """image uint8 [H, W, 3], box (x1, y1, x2, y2) pixels inside it -> uint8 [size, size, 3]."""
    check_box_fits(box, image.shape)
    left, top = int(round(box[0])), int(round(box[1]))
    right, bottom = max(int(round(box[2])), left + 1), max(int(round(box[3])), top + 1)
    return cv2.resize(image[top:bottom, left:right], (size, size), interpolation=cv2.INTER_LINEAR)


@DATASETS.register("BoxedImageListDataset")
class BoxedImageListDataset(FaceImageDataset):
    """FFEM's `image_list.json`: images cropped to their face box, box jitter in training."""

    def __init__(self, image_root, image_list, transform_ops=None, seed=0, image_size=112, jitter_prob=0.0,
                 jitter=0.1):
        super().__init__(transform_ops, seed)
        if not os.path.isdir(image_root):
            raise PlscError(f"image_root is not a directory: {image_root}")
        if not 0.0 <= jitter_prob <= 1.0 or jitter < 0:
            raise PlscError(f"jitter_prob ({jitter_prob}) must be in [0, 1] and jitter ({jitter}) >= 0")
        self.image_root, self.image_list = image_root, image_list
        self.image_size, self.jitter_prob, self.jitter = int(image_size), float(jitter_prob), float(jitter)
        self.paths, self.original_labels, self.boxes = read_image_list(image_list)
        self.labels = renumber_by_first_appearance(self.original_labels)
        exists = existing_files([os.path.join(image_root, path) for path in self.paths])
        if not exists.all():
            index = int(np.flatnonzero(~exists)[0])
            raise PlscError(f"{self.describe(index)}: image not found ({int((~exists).sum())} listed images are missing)")
        self.decode, self.after_crop = split_after_decode(self.transform, "BoxedImageListDataset (crop to the box)")
        self.setup_masking(np.zeros(len(self.paths), dtype=np.int8), "")

    def describe(self, index):
        return f"{os.path.join(self.image_root, self.paths[index])} ({self.image_list}: entry {self.paths[index]!r})"

    def read_bytes(self, index):
        return read_file(os.path.join(self.image_root, self.paths[index]))

    def box_for(self, index, image_shape, rng):
        """The sample's box this time: exact, or jittered (with probability jitter_prob) and clipped to the image."""
        box = self.boxes[index]
        if self.jitter_prob == 0.0 or rng.random() >= self.jitter_prob:
            return box
        height, width = image_shape[:2]
        moved = jitter_box(box, self.jitter, rng)
        moved = np.clip(moved, 0, [width, height, width, height])
        if moved[2] - moved[0] < 1 or moved[3] - moved[1] < 1:
            return box
        return moved

    def read_sample(self, index):
        rng = np.random.default_rng((self.seed, self.epoch, int(index)))
        try:
            image = self.decode(self.read_bytes(index), rng)
            check_box_fits(self.boxes[index], image.shape)  # only a jittered box is clipped
            image = self.after_crop(crop_box(image, self.box_for(index, image.shape, rng), self.image_size), rng)
        except PlscError as error:
            raise PlscError(f"{self.describe(index)}: {error}") from None
        return image, np.int64(self.labels[index]), np.int64(0)
