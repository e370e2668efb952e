"""What every training dataset shares: labels, transforms, per-sample random generators, errors."""
import numpy as np
from paddle.io import Dataset

from plsc.data.loader import BadSample
from plsc.data.transforms import build_transforms
from plsc.errors import PlscError


class FaceImageDataset(Dataset):
    """Base of the identification datasets: subclasses say how to read sample i's encoded bytes.

    `__getitem__` returns (image float32 [3, H, W], label int64).
    """

    def __init__(self, transform_ops=None, seed=0):
        self.transform = build_transforms(transform_ops)
        self.seed = seed
        self.epoch = 0
        self.labels = np.zeros(0, dtype=np.int64)

    def read_bytes(self, index):
        raise NotImplementedError

    def describe(self, index):
        """Where sample `index` comes from, for error messages (file and line / record key)."""
        raise NotImplementedError

    @property
    def num_classes(self):
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def set_epoch(self, epoch):
        # Loader workers are started per epoch, so they see the new value.
        self.epoch = epoch

    def check_labels(self, class_num):
        """Stop before training if any label falls outside [0, class_num)."""
        bad = np.flatnonzero((self.labels < 0) | (self.labels >= class_num))
        if bad.size:
            index = int(bad[0])
            raise PlscError(f"{self.describe(index)}: label {self.labels[index]} is outside "
                            f"[0, Model.class_num={class_num}) ({bad.size} such samples)")

    def __len__(self):
        return len(self.labels)

    def read_sample(self, index):
        """(image float32 [3, H, W], label int64) of sample `index`; a PlscError names its source."""
        # One generator per (seed, epoch, sample): augmentation is independent of worker count
        # and repeats exactly after a resume.
        rng = np.random.default_rng((self.seed, self.epoch, int(index)))
        try:
            image = self.transform(self.read_bytes(index), rng)
        except PlscError as error:
            raise PlscError(f"{self.describe(index)}: {error}") from None
        return image, np.int64(self.labels[index])

    def __getitem__(self, index):
        # Never raise here: in a loader worker the error would lose its message (see plsc.data.loader).
        try:
            return self.read_sample(index)
        except PlscError:
            return BadSample(index)
