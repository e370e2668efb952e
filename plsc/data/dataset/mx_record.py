"""Training images in MXNet RecordIO (`train.rec` + `train.idx` [+ `property`]), the face releases' format.

Labels are needed up front (sampler length, class-count check), but reading every image header of a
multi-million-image `.rec` at start-up would read most of the file. Face releases (MS1M, Glint360K,
WebFace) list each identity's [start, end) image keys in identity records, in class order, so the
labels come from those few records; a spot check against image headers confirms the order, and
every later read compares the image's own header label with the one assumed.
"""
import os
import warnings

import numpy as np

from plsc.data.dataset.base import COPY_FOUND, COPY_MISSING, FaceImageDataset
from plsc.data.recordio import FaceRecordIndex, RecordReader
from plsc.errors import PlscError
from plsc.registry import DATASETS

# Identities whose first image header is read at start-up to confirm "identity i = class i".
SPOT_CHECKS = 4


def labels_from_identity_ranges(ranges, first_image_key, num_images):
    """Identity i's [start, end) image keys -> class i for those images: int64 [num_images].

    ranges: int64 [C, 2]. Raises PlscError (message without a file name) when the ranges leave the
    image keys, overlap, or leave an image without identity.
    """
    ranges = np.asarray(ranges, dtype=np.int64).reshape(-1, 2)
    starts, ends = ranges[:, 0], ranges[:, 1]
    image_end = first_image_key + num_images
    outside = np.flatnonzero((starts < first_image_key) | (ends < starts) | (ends > image_end))
    if outside.size:
        identity = int(outside[0])
        raise PlscError(f"identity {identity} has image keys [{starts[identity]}, {ends[identity]}), "
                        f"not within the image keys [{first_image_key}, {image_end})")
    counts = ends - starts
    # Position of every listed image in key order: each identity's run starts at its `start`.
    run_starts = np.repeat(starts - first_image_key - (np.cumsum(counts) - counts), counts)
    positions = run_starts + np.arange(int(counts.sum()), dtype=np.int64)
    identities = np.repeat(np.arange(len(ranges), dtype=np.int64), counts)
    times_listed = np.bincount(positions, minlength=num_images)
    if np.any(times_listed > 1):
        position = int(np.flatnonzero(times_listed > 1)[0])
        owners = identities[positions == position][:2]
        raise PlscError(f"image key {first_image_key + position} is listed by identities {owners[0]} "
                        f"and {owners[1]}")
    if np.any(times_listed == 0):
        position = int(np.flatnonzero(times_listed == 0)[0])
        raise PlscError(f"image key {first_image_key + position} belongs to no identity "
                        f"({int(np.sum(times_listed == 0))} such images)")
    labels = np.empty(num_images, dtype=np.int64)
    labels[positions] = identities
    return labels


def spot_check_identities(num_identities, count=SPOT_CHECKS):
    """Indices of the identities whose first image is checked: first, last and evenly spaced between."""
    return np.unique(np.linspace(0, num_identities - 1, num=min(count, num_identities)).round().astype(np.int64))


@DATASETS.register("MXRecordDataset")
class MXRecordDataset(FaceImageDataset):
    """Images of `root_dir/train.rec` (indexed by `train.idx`); `__getitem__` -> (float32 [3, H, W], int64).

    An image's class is its header label (the first label when flag > 0). `property`
    (`num_classes,height,width`) beside the files, when present, is checked against Model.class_num.

    With `masked_ratio` r > 0, a sample is replaced by its masked face with probability r: the record
    of the same key in `masked_root/train.rec` (+ `train.idx`) when `masked_root` is given (a key it
    lacks is painted instead, and counted), else painted by plsc's mask synthesis.
    """

    def __init__(self, root_dir, transform_ops=None, seed=0, masked_ratio=0.0, masked_root=None):
        super().__init__(transform_ops, seed, masked_ratio)
        if not os.path.isdir(root_dir):
            raise PlscError(f"root_dir is not a directory: {root_dir}")
        self.root_dir = root_dir
        self.rec_path = os.path.join(root_dir, "train.rec")
        self.property_path = os.path.join(root_dir, "property")
        reader = RecordReader(self.rec_path, os.path.join(root_dir, "train.idx"))
        self.records = FaceRecordIndex(reader)
        if len(self.records) == 0:
            raise PlscError(f"{self.rec_path}: no image records")
        missing = np.flatnonzero(~np.isin(self.records.image_keys, reader.keys))
        if missing.size:
            raise PlscError(f"{reader.idx_path}: image key {self.records.image_keys[missing[0]]} (named by the "
                            f"header record 0) is not listed ({missing.size} such keys)")
        self.labels, self.label_source = self._read_labels()
        # Start-up reads happened in this process; each DataLoader worker opens its own handle.
        reader.close()
        self.masked_reader = self._open_masked_copy(masked_root)

    def _open_masked_copy(self, masked_root):
        """The reader of the pre-masked `.rec` (or None); decides here which keys it holds (copy_status)."""
        if masked_root is not None and not os.path.isdir(str(masked_root)):
            raise PlscError(f"masked_root is not a directory: {masked_root}")
        if masked_root is None or self.masked_ratio == 0.0:
            self.setup_masking(np.zeros(len(self), dtype=np.int8), "")
            return None
        masked_reader = RecordReader(os.path.join(str(masked_root), "train.rec"),
                                     os.path.join(str(masked_root), "train.idx"))
        # Image keys only: a key the copy uses for an identity record is no masked face.
        has_copy = np.isin(self.records.image_keys, FaceRecordIndex(masked_reader).image_keys)
        masked_reader.close()
        self.setup_masking(np.where(has_copy, COPY_FOUND, COPY_MISSING),
                           f"looked for the same key in {masked_reader.rec_path}")
        return masked_reader

    def _read_labels(self):
        """(labels int64 [N], what they were taken from) for the error message of a later mismatch.

        A record that cannot be read stops here; identity records that merely disagree with the
        image headers fall back to reading every header.
        """
        if self.records.has_identity_records:
            ranges = np.array([self.records.identity_range(i) for i in range(self.records.identity_keys.size)],
                              dtype=np.int64).reshape(-1, 2)
            image_keys = self.records.image_keys
            try:
                labels = labels_from_identity_ranges(ranges, int(image_keys[0]), image_keys.size)
            except PlscError as problem:
                labels, disagreement = None, str(problem)
            else:
                disagreement = self._spot_check(ranges)
            if disagreement is None:
                return labels, "the identity records"
            warnings.warn(f"{self.rec_path}: {disagreement}; reading every image header instead (slow)")
        labels = np.array([self.records.read(index)[0] for index in range(len(self.records))], dtype=np.int64)
        return labels, "the image headers at start-up"

    def _spot_check(self, ranges):
        """None if the first image of a few identities has that identity's index as class, else the problem."""
        first_image_key = int(self.records.image_keys[0])
        for identity in spot_check_identities(len(ranges)):
            start, end = (int(key) for key in ranges[identity])
            if start == end:
                continue
            header_label = self.records.read(start - first_image_key)[0]
            if header_label != identity:
                return (f"image key {start} has class {header_label} but is listed by identity {identity}: "
                        f"identity records are not in class order")
        return None

    def describe(self, index):
        return f"{self.rec_path} key {int(self.records.image_keys[index])}"

    def describe_masked(self, index):
        return f"{self.masked_reader.rec_path} key {int(self.records.image_keys[index])} (pre-masked copy)"

    def read_masked_bytes(self, index):
        key = int(self.records.image_keys[index])
        try:
            _, image_bytes = self.masked_reader.read_unpacked(key)
        except PlscError as error:
            raise PlscError(str(error).removeprefix(f"{self.masked_reader.rec_path} key {key}: ")) from None
        except OSError as error:
            raise PlscError(f"cannot read record: {error.strerror or error}") from None
        return image_bytes

    def read_bytes(self, index):
        where = self.describe(index)
        try:
            header_label, image_bytes = self.records.read(index)
        except PlscError as error:
            # The reader names the file and key first; read_sample puts them back in front.
            raise PlscError(str(error).removeprefix(f"{where}: ")) from None
        except OSError as error:
            raise PlscError(f"cannot read record: {error.strerror or error}") from None
        if header_label != self.labels[index]:
            raise PlscError(f"image header says class {header_label} but {self.label_source} give class "
                            f"{self.labels[index]} (was the .rec changed during training?)")
        return image_bytes

    def check_labels(self, class_num):
        """Stop before training if `property` disagrees with class_num or a label is outside [0, class_num)."""
        if self.records.property is not None and self.records.property[0] != class_num:
            raise PlscError(f"{self.property_path}: the dataset has {self.records.property[0]} classes but "
                            f"Model.class_num is {class_num}")
        super().check_labels(class_num)
