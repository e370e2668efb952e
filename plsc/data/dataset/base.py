"""What every training dataset shares: labels, transforms, per-sample random generators, masked faces, errors."""
import logging

import numpy as np
from paddle.io import Dataset

from plsc.data.loader import BadSample
from plsc.data.transforms import build_transforms
from plsc.errors import PlscError

# Per-sample state of the pre-masked copy, decided once at construction in the main process.
NO_COPY_SOUGHT = 0   # the masked face is painted by plsc (no copy exists for this data)
COPY_FOUND = 1       # the masked face is read from the pre-masked copy
COPY_MISSING = 2     # a copy was looked for but is absent: painted instead, and counted

# Extra key of the generator that draws a painted mask's style. A stream of its own keeps the
# augmentation generator untouched, so a sample flips (etc.) the same way whether or not it is masked.
_MASK_STYLE_STREAM = 0x6D61736B

_UINT64 = np.uint64
_CHUNK = 1 << 22


_MASK64 = (1 << 64) - 1
_SPLITMIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def _splitmix64(values):
    """SplitMix64 finaliser on uint64 [N] (wrapping arithmetic): a well-mixed hash of each value."""
    increment, first, second = (_UINT64(constant) for constant in _SPLITMIX)
    with np.errstate(over="ignore"):
        values = values + increment
        values = (values ^ (values >> _UINT64(30))) * first
        values = (values ^ (values >> _UINT64(27))) * second
    return values ^ (values >> _UINT64(31))


def _splitmix64_int(value):
    """The same hash on one Python int: a loader worker reads one sample at a time, where numpy's
    per-call overhead would cost more than the rest of the decision."""
    increment, first, second = _SPLITMIX
    value = (value + increment) & _MASK64
    value = ((value ^ (value >> 30)) * first) & _MASK64
    value = ((value ^ (value >> 27)) * second) & _MASK64
    return value ^ (value >> 31)


def _draw_key(seed, epoch):
    return _splitmix64_int(_splitmix64_int(int(seed) & _MASK64) ^ (int(epoch) & _MASK64))


def masked_draws(seed, epoch, indices):
    """Uniform [0, 1) number of each sample for the masked-or-not decision: float64 [N].

    A pure function of (seed, epoch, index), so every loader worker draws the same as any other
    would, a resume repeats it, and the main process can count a whole epoch's masked samples in one
    vectorised call (the workers' own counts never reach it).
    """
    indices = np.atleast_1d(np.asarray(indices)).astype(_UINT64)
    bits = _splitmix64(_UINT64(_draw_key(seed, epoch)) ^ indices)
    # The top 53 bits make an evenly spaced double in [0, 1), as numpy's own generators do.
    return (bits >> _UINT64(11)).astype(np.float64) * (1.0 / 2**53)


def masked_draw(seed, epoch, index):
    """masked_draws for one sample, as a float (the same value, computed without numpy)."""
    return (_splitmix64_int(_draw_key(seed, epoch) ^ int(index)) >> 11) * (1.0 / 2**53)


def _ratio(masked_ratio):
    """`masked_ratio` as a float in [0, 1]; configs may write it as arithmetic text (`1/10`)."""
    if isinstance(masked_ratio, str):
        from plsc.config import evaluate_number

        masked_ratio = evaluate_number(masked_ratio)
    if isinstance(masked_ratio, bool) or not isinstance(masked_ratio, (int, float)) or not 0.0 <= masked_ratio <= 1.0:
        raise PlscError(f"masked_ratio must be a number in [0, 1], got {masked_ratio!r}")
    return float(masked_ratio)


class FaceImageDataset(Dataset):
    """Base of the identification datasets: subclasses say how to read sample i's encoded bytes.

    `__getitem__` returns (image float32 [3, H, W], label int64, is_masked int64). With
    `masked_ratio` r > 0 a sample is, with probability r (decided per seed, epoch and index), replaced by
    its masked face and flagged is_masked = 1: read from a pre-masked copy where the subclass has one
    (`read_masked_bytes`), painted by plsc's mask synthesis otherwise.

    A subclass that knows each sample's group (race, ...) sets `groups` (int64 [N], an index into
    `group_names`); its samples then carry the group as a fourth field, and the trainer logs the
    training loss per group.
    """

    groups = None
    group_names = None

    def __init__(self, transform_ops=None, seed=0, masked_ratio=0.0):
        self.transform = build_transforms(transform_ops)
        self.seed = seed
        self.epoch = 0
        self.labels = np.zeros(0, dtype=np.int64)
        self.masked_ratio = _ratio(masked_ratio)
        self.copy_status = np.zeros(0, dtype=np.int8)
        self.painter = None
        self._epoch_counts = {}

    def read_bytes(self, index):
        raise NotImplementedError

    def read_masked_bytes(self, index):
        """Encoded bytes of sample `index`'s pre-masked copy (only asked where copy_status is COPY_FOUND)."""
        raise NotImplementedError

    def describe(self, index):
        """Where sample `index` comes from, for error messages (file and line / record key)."""
        raise NotImplementedError

    def describe_masked(self, index):
        """Where sample `index`'s pre-masked copy comes from, for error messages."""
        return f"{self.describe(index)} (pre-masked copy)"

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

    # ---- masked faces -------------------------------------------------------------------------
    def setup_masking(self, copy_status, looked_for):
        """Record which samples have a pre-masked copy (int8 [N] of NO_COPY_SOUGHT / COPY_FOUND /
        COPY_MISSING) and say so in one log line; `looked_for` names where copies were sought.

        Subclasses call it at the end of their constructor, in the main process, so the counts are
        exact whatever the number of loader workers.
        """
        self.copy_status = np.asarray(copy_status, dtype=np.int8)
        if self.masked_ratio == 0.0:
            return
        if np.any(self.copy_status != COPY_FOUND):
            from plsc.data.mask import RandomMask, split_after_decode

            decode, after_decode = split_after_decode(self.transform, "masked_ratio")
            # prob 1: whether to mask was decided already; RandomMask only picks and paints the style.
            self.painter = (decode, RandomMask(prob=1.0), after_decode)
        found, missing = (int(np.sum(self.copy_status == status)) for status in (COPY_FOUND, COPY_MISSING))
        painted = len(self.copy_status) - found - missing
        line = (f"masked_ratio {self.masked_ratio:g}: of {len(self.copy_status)} samples, {found} have a "
                f"pre-masked copy, {painted} are painted by plsc")
        logger = logging.getLogger("plsc")
        if missing:
            logger.warning(f"{line}, and {missing} have NO pre-masked copy ({looked_for}; e.g. "
                           f"{self.describe(int(np.flatnonzero(self.copy_status == COPY_MISSING)[0]))}): "
                           f"their masks are painted instead")
        else:
            logger.info(line)

    def masked_counts(self, epoch=None):
        """Masked samples of an epoch (the current one by default): {'masked', 'from_copy', 'painted',
        'missing_copy', 'samples'}; 'missing_copy' (painted because the copy is absent) is within 'painted'.

        Computed from the same draws the workers make, so it is exact without their cooperation. It
        covers the whole dataset, i.e. all ranks together (samples a drop_last sampler skips included).
        """
        epoch = self.epoch if epoch is None else int(epoch)
        if epoch not in self._epoch_counts:
            counts = {"samples": len(self), "masked": 0, "from_copy": 0, "painted": 0, "missing_copy": 0}
            if self.masked_ratio > 0.0:
                # In chunks: the hash's temporaries for tens of millions of samples would take gigabytes.
                masked = np.zeros(len(self), dtype=bool)
                for start in range(0, len(self), _CHUNK):
                    indices = np.arange(start, min(start + _CHUNK, len(self)))
                    masked[indices] = masked_draws(self.seed, epoch, indices) < self.masked_ratio
                status = self.copy_status[masked]
                counts.update(masked=int(masked.sum()), from_copy=int(np.sum(status == COPY_FOUND)),
                              painted=int(np.sum(status != COPY_FOUND)),
                              missing_copy=int(np.sum(status == COPY_MISSING)))
            self._epoch_counts = {epoch: counts}  # one epoch kept: the trainer asks for the current one
        return dict(self._epoch_counts[epoch])

    def is_masked_draw(self, index):
        """Whether sample `index` is replaced by its masked face in the current epoch."""
        return self.masked_ratio > 0.0 and masked_draw(self.seed, self.epoch, index) < self.masked_ratio

    def _masked_image(self, index, rng):
        if self.copy_status[index] == COPY_FOUND:
            try:
                return self.transform(self.read_masked_bytes(index), rng)
            except PlscError as error:
                raise PlscError(f"{self.describe_masked(index)}: {error}") from None
        decode, paint, after_decode = self.painter
        style_rng = np.random.default_rng((self.seed, self.epoch, int(index), _MASK_STYLE_STREAM))
        try:
            return after_decode(paint(decode(self.read_bytes(index), rng), style_rng), rng)
        except PlscError as error:
            raise PlscError(f"{self.describe(index)}: {error}") from None

    # ---- reading ------------------------------------------------------------------------------
    def read_sample(self, index):
        """(image float32 [3, H, W], label int64, is_masked int64) of sample `index`; a PlscError names its source."""
        # One generator per (seed, epoch, sample): augmentation is independent of worker count
        # and repeats exactly after a resume.
        rng = np.random.default_rng((self.seed, self.epoch, int(index)))
        if self.is_masked_draw(index):
            return self._masked_image(index, rng), np.int64(self.labels[index]), np.int64(1)
        try:
            image = self.transform(self.read_bytes(index), rng)
        except PlscError as error:
            raise PlscError(f"{self.describe(index)}: {error}") from None
        return image, np.int64(self.labels[index]), np.int64(0)

    def __getitem__(self, index):
        """The loader's sample: read_sample's fields, plus the group id when the dataset has groups."""
        # Never raise here: in a loader worker the error would lose its message (see plsc.data.loader).
        try:
            sample = self.read_sample(index)
        except PlscError:
            return BadSample(index)
        return sample if self.groups is None else (*sample, np.int64(self.groups[index]))
