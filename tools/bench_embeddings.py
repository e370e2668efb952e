"""What the embedding-level benchmarks share: synthetic grouped embeddings and the peak memory figure."""
import resource

import numpy as np


def peak_rss_mib():
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_embeddings(num_images, num_identities, dim, seed, noise_of_group):
    """float32 [N, D] embeddings, labels [N] (shuffled) and {label: group}.

    Identities are spread over the groups of `noise_of_group` in turn; an image is its identity's
    random centre plus Gaussian noise of its group's scale, so groups differ in how hard they are.
    """
    rng = np.random.default_rng(seed)
    groups = list(noise_of_group)
    group_of = {label: groups[label % len(groups)] for label in range(num_identities)}
    labels = rng.permutation(np.arange(num_images) % num_identities)
    noise = np.array([noise_of_group[group_of[label]] for label in range(num_identities)], dtype=np.float32)
    centres = rng.standard_normal((num_identities, dim), dtype=np.float32)
    embeddings = rng.standard_normal((num_images, dim), dtype=np.float32)
    embeddings *= noise[labels, None]
    embeddings += centres[labels]
    return embeddings, labels, group_of
