"""Benchmark the blocked all-pairs instance-fairness pass (and 1:N recall) on synthetic embeddings.

    flock /tmp/plsc_bench.lock python tools/bench_fairness.py --images 40000 --dim 512

Embeddings are Gaussian identity centres plus per-image noise whose size depends on the group (so
the groups differ). Prints wall time, the process's peak resident memory and the per-group table.
"""
import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from plsc.metrics import fairness  # noqa: E402
from plsc.metrics.recall import recall_at_k, split_gallery_probes, true_match_ranks  # noqa: E402
from plsc.metrics.report import format_report  # noqa: E402
from bench_embeddings import peak_rss_mib, synthetic_embeddings  # noqa: E402  (tools/ is this script's folder)

GROUP_NOISE = {"group_a": 1.8, "group_b": 2.0, "group_c": 2.2, "group_d": 2.4}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=40000)
    parser.add_argument("--identities", type=int, default=4000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--target-far", type=float, default=1e-4)
    parser.add_argument("--block-rows", type=int, default=0, help="0: about 2**25 scores per block")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, numpy {np.__version__}")
    embeddings, labels, group_of = synthetic_embeddings(args.images, args.identities, args.dim, args.seed, GROUP_NOISE)
    baseline = peak_rss_mib()
    block_rows = args.block_rows or fairness.default_block_rows(args.images)
    pairs = args.images * (args.images - 1) // 2
    print(f"{args.images} images x {args.dim}-d, {args.identities} identities, {pairs:,} pairs, "
          f"{block_rows} rows per block; peak RSS before: {baseline:.0f} MiB")

    start = time.perf_counter()
    rates = fairness.instance_error_rates(embeddings, labels, args.target_far, block_rows=block_rows)
    instance_seconds = time.perf_counter() - start
    after_instance = peak_rss_mib()
    fmr = fairness.summarise_by_group(rates["identities"], rates["fmr"], group_of)
    fnmr = fairness.summarise_by_group(rates["identities"], rates["fnmr_per_identity"], group_of)
    print(format_report({
        "title": f"instance fairness at FAR {args.target_far:g}",
        "columns": ["group", "identities", "mean FMR", "worst FMR", "mean FNMR", "worst FNMR"],
        "rows": [[group, fmr[group]["identities"], fmr[group]["mean"], fmr[group]["worst"], fnmr[group]["mean"],
                  fnmr[group]["worst"]] for group in sorted(fmr)],
        "summary": {"threshold": rates["threshold"], "achieved FAR": rates["far"], "FNMR": rates["fnmr"]}}))
    print(f"instance fairness (two blocked passes over all pairs): {instance_seconds:.1f} s, "
          f"peak RSS {after_instance:.0f} MiB (+{after_instance - baseline:.0f} MiB)")

    start = time.perf_counter()
    gallery, probes = split_gallery_probes(labels)
    ranks = true_match_ranks(embeddings[gallery], labels[gallery], embeddings[probes], labels[probes])
    recall = recall_at_k(ranks, (1, 5))
    print(f"recall: {len(probes)} probes vs {len(gallery)} gallery, recall@1 {recall[1]:.4f}, "
          f"recall@5 {recall[5]:.4f}: {time.perf_counter() - start:.1f} s, peak RSS {peak_rss_mib():.0f} MiB")
    print(f"a dense float32 score matrix would need {args.images ** 2 * 4 / 2 ** 30:.1f} GiB")


if __name__ == "__main__":
    main()
