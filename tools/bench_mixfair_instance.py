"""Benchmark MixFairFace's instance protocol (bounded memory) and FFEM's leave-one-out recall@1.

    flock /tmp/plsc_bench.lock python tools/bench_mixfair_instance.py --images 40000 --dim 512

Embeddings: Gaussian identity centres plus per-image noise that grows from race to race, ten images
per identity, rows shuffled. Prints wall time and the process's peak resident memory of each protocol.
"""
import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from plsc.metrics import mixfairface  # noqa: E402
from plsc.metrics.recall import leave_one_out_ranks, recall_at_k  # noqa: E402
from plsc.metrics.report import format_report  # noqa: E402
from bench_embeddings import peak_rss_mib, synthetic_embeddings  # noqa: E402  (tools/ is this script's folder)

RACE_NOISE = {"African": 1.8, "Asian": 2.0, "Caucasian": 1.6, "Indian": 1.9}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=40000)
    parser.add_argument("--identities", type=int, default=4000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--target-fpr", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, numpy {np.__version__}")
    embeddings, labels, race_of = synthetic_embeddings(args.images, args.identities, args.dim, args.seed, RACE_NOISE)
    baseline = peak_rss_mib()
    print(f"{args.images} images x {args.dim}-d, {args.identities} identities; peak RSS before: {baseline:.0f} MiB")

    start = time.perf_counter()
    result = mixfairface.instance_protocol(embeddings, labels, args.target_fpr)
    seconds = time.perf_counter() - start
    after = peak_rss_mib()
    print(format_report(mixfairface.instance_report(result, race_of, args.target_fpr)))
    print(f"instance protocol: {seconds:.1f} s, peak RSS {after:.0f} MiB (+{after - baseline:.0f} MiB)")

    start = time.perf_counter()
    ranks = leave_one_out_ranks(embeddings, labels)
    print(f"leave-one-out recall@1 over all {args.images} images: {recall_at_k(ranks, (1,))[1]:.4f}, "
          f"{time.perf_counter() - start:.1f} s, peak RSS {peak_rss_mib():.0f} MiB")
    print(f"a dense float32 score matrix would need {args.images ** 2 * 4 / 2 ** 30:.1f} GiB")


if __name__ == "__main__":
    main()
