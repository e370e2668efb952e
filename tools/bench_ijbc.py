"""Time the IJB-C protocol maths at full scale on random features (no images, no model).

    flock /tmp/plsc_bench.lock python tools/bench_ijbc.py [--fraction 1.0] [--seed 0]

IJB-C 1:1 sizes: 469,375 images with 512-d features, 23,124 templates (3,531 gallery, 19,593
probe), 15,658,489 template pairs (19,557 genuine). Pairs join a probe and a gallery template, as
in the release; each template has a random number of media. Phases: template pooling, pair
scoring, TAR@FAR (ROC over every pair), 1:N search of the probes in both galleries. Prints wall
time per phase and the process's peak resident memory after it.
"""
import argparse
import os

THREADS_AT_START = os.environ.get("OMP_NUM_THREADS", "unset")  # before plsc sets its defaults

import platform  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from plsc.metrics import ijb  # noqa: E402
from plsc.metrics.roc import tar_at_far  # noqa: E402

NUM_IMAGES = 469_375
EMBEDDING_SIZE = 512
NUM_GALLERY = 3_531
NUM_PROBES = 19_593
NUM_PAIRS = 15_658_489
NUM_GENUINE = 19_557
MAX_MEDIA_PER_TEMPLATE = 8


def peak_rss_gb():
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def synthetic_protocol(rng, fraction):
    """Random features, template/media ids and pairs at `fraction` of the IJB-C sizes."""
    num_images = max(100, int(NUM_IMAGES * fraction))
    num_gallery, num_probes = max(4, int(NUM_GALLERY * fraction)), max(4, int(NUM_PROBES * fraction))
    num_pairs, num_genuine = max(50, int(NUM_PAIRS * fraction)), max(5, int(NUM_GENUINE * fraction))
    num_templates = num_gallery + num_probes
    features = rng.standard_normal((num_images, EMBEDDING_SIZE), dtype=np.float32)
    template_ids = np.sort(rng.choice(200_000, size=num_templates, replace=False)) + 1
    # Every template gets at least one image; the rest land anywhere.
    template_of_image = np.concatenate([np.arange(num_templates),
                                        rng.integers(0, num_templates, num_images - num_templates)])
    media_count = rng.integers(1, MAX_MEDIA_PER_TEMPLATE + 1, size=num_templates)
    medias = template_of_image * MAX_MEDIA_PER_TEMPLATE + rng.integers(0, media_count[template_of_image])
    faceness = rng.uniform(0.5, 1.0, size=num_images).astype(np.float32)
    order = rng.permutation(template_ids)
    gallery, probes = order[:num_gallery], order[num_gallery:]
    pairs_probe = probes[rng.integers(0, num_probes, num_pairs)]
    pairs_gallery = gallery[rng.integers(0, num_gallery, num_pairs)]
    labels = np.zeros(num_pairs, dtype=np.int8)
    labels[rng.choice(num_pairs, size=num_genuine, replace=False)] = 1
    subjects = rng.integers(0, num_gallery, size=num_templates)
    return dict(features=features, templates=template_ids[template_of_image], medias=medias,
                faceness=faceness, pairs_t1=pairs_gallery, pairs_t2=pairs_probe, labels=labels,
                gallery=gallery, probes=probes, subject_of=dict(zip(template_ids.tolist(), subjects.tolist())))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fraction", type=float, default=1.0, help="scale of the IJB-C sizes (1.0 = full)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)

    timings = []

    def phase(name, function):
        started = time.perf_counter()
        result = function()
        timings.append((name, time.perf_counter() - started, peak_rss_gb()))
        print(f"{name:<28} {timings[-1][1]:8.2f} s   peak RSS {timings[-1][2]:5.2f} GB", flush=True)
        return result

    data = phase("random protocol (setup)", lambda: synthetic_protocol(rng, args.fraction))
    template_ids, template_features = phase("template pooling", lambda: ijb.pool_templates(
        data["features"], data["templates"], data["medias"], data["faceness"]))
    scores = phase("pair scores", lambda: ijb.verification_scores(
        template_ids, template_features, data["pairs_t1"], data["pairs_t2"]))
    tar = phase("TAR@FAR (ROC)", lambda: tar_at_far(scores, data["labels"]))

    def search():
        def rows(ids):
            return template_features[ijb.template_positions(template_ids, ids)]

        gallery_subjects = np.array([data["subject_of"][t] for t in data["gallery"].tolist()])
        probe_subjects = np.array([data["subject_of"][t] for t in data["probes"].tolist()])
        return ijb.open_set_identification(rows(data["gallery"]), gallery_subjects, rows(data["probes"]), probe_subjects)

    phase("1:N search (all gallery)", search)

    measured = sum(seconds for name, seconds, _ in timings[1:])
    print()
    print(f"images {data['features'].shape[0]:,}, templates {template_ids.size:,}, pairs {scores.size:,}, "
          f"dim {EMBEDDING_SIZE}")
    print(f"total without setup: {measured:.1f} s; peak RSS {peak_rss_gb():.2f} GB")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"numpy {np.__version__}, OMP_NUM_THREADS={THREADS_AT_START} at start")
    print("TAR@FAR on random features (meaningless, shows the code ran):",
          {far: round(value, 4) for far, value in tar.items()})


if __name__ == "__main__":
    main()
