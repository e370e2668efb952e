"""The global batch sampler: rank slices, epoch shuffles, mid-epoch skip."""
import numpy as np

from plsc.data.sampler import GlobalBatchSampler


class Sized:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def batches(n, batch, ranks, rank, epoch=0, skip=0, drop_last=False, shuffle=True):
    sampler = GlobalBatchSampler(Sized(n), batch, shuffle=shuffle, drop_last=drop_last, seed=7,
                                 num_replicas=ranks, rank=rank)
    sampler.set_epoch(epoch, skip)
    return list(sampler)


def test_two_ranks_see_the_global_batches_of_one_rank():
    one = batches(50, 8, 1, 0)
    two = [batches(50, 4, 2, r) for r in range(2)]
    assert len(one) == len(two[0]) == len(two[1]) == 7  # ceil(50 / 8)
    for k, global_batch in enumerate(one):
        assert two[0][k] + two[1][k] == global_batch


def test_each_epoch_is_a_permutation_plus_wraparound():
    flat = [i for b in batches(50, 8, 1, 0) for i in b]
    assert len(flat) == 56 and sorted(set(flat)) == list(range(50))
    assert flat[:50] != list(range(50))
    assert batches(50, 8, 1, 0, epoch=1) != batches(50, 8, 1, 0, epoch=0)
    assert batches(50, 8, 1, 0, epoch=1) == batches(50, 8, 1, 0, epoch=1)


def test_skip_resumes_mid_epoch_and_drop_last():
    full = batches(50, 8, 1, 0)
    assert batches(50, 8, 1, 0, skip=3) == full[3:]
    dropped = batches(50, 8, 1, 0, drop_last=True)
    assert len(dropped) == 6 and dropped == full[:6]
    assert batches(10, 4, 1, 0, shuffle=False)[0] == [0, 1, 2, 3]
    assert np.all([len(b) == 4 for b in batches(10, 4, 1, 0)])
