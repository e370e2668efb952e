"""Random streams of the synthetic data: one independent generator per identity, image and plan.

Every generator is seeded from `(stream, seed, indices...)` through numpy's SeedSequence, so an
identity or an image depends only on its own indices: identity k is the same person whatever else
is generated, and an image is the same whichever process renders it.
"""
import numpy as np

from plsc.errors import PlscError

# Stream tags keep the generators of different purposes apart even when their indices coincide.
IDENTITY_STREAM = 1
TRAIN_IMAGE_STREAM = 2
PAIR_IMAGE_STREAM = 3
PAIR_PLAN_STREAM = 4


def check_seed(seed):
    """Return `seed` as an int; SeedSequence needs a non-negative integer."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise PlscError(f"synthetic data seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def stream_rng(stream, seed, *indices):
    """Generator for one (stream, seed, indices) key."""
    return np.random.default_rng([stream, check_seed(seed), *(int(i) for i in indices)])


def identity_rng(seed, identity_index):
    """Generator that draws the parameters of identity `identity_index`."""
    return stream_rng(IDENTITY_STREAM, seed, identity_index)


def train_image_rng(seed, identity_index, image_index):
    """Generator for image `image_index` of identity `identity_index` in a training set."""
    return stream_rng(TRAIN_IMAGE_STREAM, seed, identity_index, image_index)


def pair_image_rng(seed, pair_index, side):
    """Generator for image `side` (0 or 1) of verification pair `pair_index`."""
    return stream_rng(PAIR_IMAGE_STREAM, seed, pair_index, side)


def pair_plan_rng(seed):
    """Generator that chooses which identities form each verification pair."""
    return stream_rng(PAIR_PLAN_STREAM, seed)
