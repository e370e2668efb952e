"""A DataLoader that reports a bad sample (missing or undecodable file) as a PlscError in the main process.

Paddle's DataLoader re-raises a worker's exception from a background thread, and the training loop
only sees "Blocking queue is killed". So a dataset does not raise in a worker: it returns a
`BadSample`, `collate_checked` turns a batch holding one into a marker batch, and `CheckedLoader`
re-reads the first bad sample in the main process, where the dataset's own PlscError (naming the
file and label-list line or record key) surfaces normally.
"""
import gc

import numpy as np
from paddle.io import DataLoader

from plsc.errors import PlscError

# The fields of a sample and of a collated batch, in order. Every dataset gives the first three;
# one that knows each sample's group (race, ...) adds `group`, an index into its `group_names`.
BATCH_FIELDS = ("images", "labels", "is_masked", "group")


def batch_field(batch, name):
    """Field `name` (one of BATCH_FIELDS) of a collated batch, or None when its dataset gives none."""
    position = BATCH_FIELDS.index(name)
    return batch[position] if len(batch) > position else None


class BadSample:
    """Stands in for sample `index`, which could not be read or decoded in a worker."""

    def __init__(self, index):
        self.index = int(index)


def collate_checked(samples):
    """[(image, label, is_masked[, group])] -> [images [N, ...], labels [N], is_masked [N][, group [N]]]
    (any number of fields, each stacked), or a marker [zeros [1, 1], bad indices] if any sample is bad."""
    bad = [sample.index for sample in samples if isinstance(sample, BadSample)]
    if bad:
        return [np.zeros([1, 1], dtype=np.float32), np.asarray(bad, dtype=np.int64)]
    return [np.stack([np.asarray(field) for field in column]) for column in zip(*samples)]


class CheckedLoader:
    """Iterates batches like the DataLoader it wraps; raises the PlscError of a bad sample.

    A training dataset's batch is [images float32 [N, 3, H, W], labels int64 [N], is_masked int64 [N]],
    and group int64 [N] when the dataset has groups (see BATCH_FIELDS and batch_field).
    """

    def __init__(self, dataset, batch_sampler, num_workers=0, use_shared_memory=True):
        self.dataset = dataset
        self.batch_sampler = batch_sampler
        self.num_workers = num_workers
        self.loader = DataLoader(dataset, batch_sampler=batch_sampler, num_workers=num_workers,
                                 use_shared_memory=use_shared_memory, collate_fn=collate_checked,
                                 return_list=True)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        if self.num_workers > 0:
            # Paddle 3.3 can deadlock a freshly forked worker while a finished single-process loader
            # (e.g. the evaluation's) still awaits collection; collecting first avoids it.
            gc.collect()
        for batch in self.loader:
            # Images are [N, C, H, W] (or [N, H, W, C]); only the marker batch of collate_checked is 2-D.
            if batch[0].ndim == 2:
                self.raise_for(int(batch[1][0]))
            yield batch

    def raise_for(self, index):
        """Read sample `index` here, so its PlscError is raised in the main process."""
        try:
            self.dataset.read_sample(index)
        except PlscError:
            raise
        raise PlscError(f"{self.dataset.describe(index)}: could not be loaded in a loader worker, but "
                        "loads in the main process (flaky storage?)")
