"""Batch sampler shared by 1 and N processes, with exact mid-epoch resume."""
import math

import numpy as np
from paddle.io import BatchSampler

from plsc import distributed


class GlobalBatchSampler(BatchSampler):
    """Yields this rank's slice of each *global* batch of a seeded per-epoch permutation.

    Global batch k is permutation[k*B*W : (k+1)*B*W] and rank r takes its r-th block of B, so a
    run on W ranks with batch B sees exactly the batches a 1-rank run with batch B*W sees: data
    order survives a change of world size on resume. The tail is padded by wrapping around
    (drop_last=False) so every rank runs the same number of steps.
    """

    def __init__(self, dataset, batch_size, shuffle=True, drop_last=False, seed=0,
                 num_replicas=None, rank=None):
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.num_replicas = num_replicas or distributed.world_size()
        self.rank = distributed.rank() if rank is None else rank
        self.epoch = 0
        self.skip_batches = 0

    @property
    def global_batch_size(self):
        return self.batch_size * self.num_replicas

    def __len__(self):
        count = len(self.dataset) / self.global_batch_size
        return math.floor(count) if self.drop_last else math.ceil(count)

    def set_epoch(self, epoch, skip_batches=0):
        """Next iteration yields epoch `epoch`, starting after its first `skip_batches` batches."""
        self.epoch = epoch
        self.skip_batches = skip_batches

    def __iter__(self):
        size = len(self.dataset)
        if self.shuffle:
            order = np.random.default_rng((self.seed, self.epoch)).permutation(size)
        else:
            order = np.arange(size)
        total = len(self) * self.global_batch_size
        if total > size:  # wrap around to fill the last global batch
            order = np.concatenate([order, order[: total - size]])
        for batch in range(self.skip_batches, len(self)):
            start = batch * self.global_batch_size + self.rank * self.batch_size
            yield order[start:start + self.batch_size].tolist()


class SequentialBatchSampler(BatchSampler):
    """Every sample once, in order, on the calling rank (evaluation)."""

    def __init__(self, dataset, batch_size, shuffle=False, drop_last=False):
        self.dataset = dataset
        self.batch_size = int(batch_size)

    def __len__(self):
        return math.ceil(len(self.dataset) / self.batch_size)

    def __iter__(self):
        for start in range(0, len(self.dataset), self.batch_size):
            yield list(range(start, min(start + self.batch_size, len(self.dataset))))


# Config `sampler.name` -> class (PLSC's names).
SAMPLERS = {"DistributedBatchSampler": GlobalBatchSampler, "BatchSampler": SequentialBatchSampler}
