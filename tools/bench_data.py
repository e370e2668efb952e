"""Training-input throughput: images/s through read -> decode -> flip -> normalise -> batch (plsc.data.build_loader).

Compares an image folder with a `.rec` of the same synthetic 112x112 JPEGs at 0, 1 and 2 loader
workers, times each transform stage in one process to explain the totals, and writes a markdown
report. Run it alone on the machine (other helpers share the CPU):

    flock /tmp/plsc_bench.lock python tools/bench_data.py --output docs/bench_data.md
"""
import argparse
import datetime
import gc
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import paddle  # noqa: E402

from plsc.data import build_dataset, build_loader  # noqa: E402
from plsc.data.synthetic import ensure_quickstart_data  # noqa: E402
from plsc.data.transforms import build_transforms  # noqa: E402

# PLSC's face-config training ops, as every one of its face configs lists them.
PLSC_TRAIN_OPS = [
    {"DecodeImage": {"to_rgb": True, "channel_first": False}},
    {"RandFlipImage": {"flip_code": 1}},
    {"NormalizeImage": {"scale": "1.0/255.0", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "order": ""}},
    {"ToCHWImage": None},
]
# The same minus NormalizeImage: uint8 batches (4x fewer bytes between processes), normalised afterwards.
UINT8_TRAIN_OPS = [PLSC_TRAIN_OPS[0], PLSC_TRAIN_OPS[1], PLSC_TRAIN_OPS[3]]
PIPELINES = {"plsc": PLSC_TRAIN_OPS, "uint8": UINT8_TRAIN_OPS}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "plsc", "bench_data"),
                        help="synthetic images are written here once and reused")
    parser.add_argument("--num-classes", type=int, default=50)
    parser.add_argument("--images-per-class", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pipelines", nargs="+", default=["plsc", "uint8"], choices=sorted(PIPELINES))
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the set per setting (median kept)")
    parser.add_argument("--cv2-threads", type=int, default=None, help="cv2.setNumThreads before any loader starts")
    parser.add_argument("--profile-images", type=int, default=500, help="images for the per-stage timing")
    parser.add_argument("--output", default=None, help="markdown file for the report (else stdout only)")
    return parser.parse_args(argv)


def dataset_sections(paths):
    """Config `dataset` sections of the two storage formats, without transform_ops."""
    return {
        "folder": {"name": "FaceIdentificationDataset", "image_root": paths["train_dir"],
                   "cls_label_path": paths["train_label_file"]},
        "rec": {"name": "MXRecordDataset", "root_dir": paths["rec_dir"]},
    }


def timed_pass(loader, dataset, epoch):
    """One full shuffled pass: (images/s after the first batch, images/s of the whole pass, seconds to the first batch).

    Training epochs hold millions of images, so the rate after the first batch is the figure that
    matters; the first-batch wait (workers start once per epoch) and the whole-pass rate, which
    includes it, are reported beside it. Workers prefetch while the first batch is awaited, which
    flatters the steady rate a little on a short set; the whole-pass rate understates it.
    """
    loader.batch_sampler.set_epoch(epoch)
    dataset.set_epoch(epoch)
    # Paddle 3.3 can deadlock a new worker forked while a finished num_workers=0 iterator still
    # waits for garbage collection (docs/bench_data.md); collecting first avoids it, untimed.
    gc.collect()
    start = time.perf_counter()
    first_batch_done, count = None, 0
    for images, *_ in loader:
        if first_batch_done is None:
            first_batch_done = time.perf_counter()
        else:
            count += images.shape[0]
    end = time.perf_counter()
    return count / (end - first_batch_done), len(dataset) / (end - start), first_batch_done - start


def measure_throughput(settings, batch_size, repeats):
    """{setting: medians of timed_pass} for settings {key: (dataset, num_workers)}.

    The settings take turns pass by pass, so a change in the machine's other load during the run
    spreads over all of them instead of favouring whichever ran first. Round 0 warms the page cache.
    """
    loaders = {key: build_loader(dataset, {"name": "DistributedBatchSampler", "batch_size": batch_size,
                                           "shuffle": True, "drop_last": False}, {"num_workers": workers})
               for key, (dataset, workers) in settings.items()}
    passes = {key: [] for key in settings}
    for epoch in range(repeats + 1):
        for key, (dataset, _) in settings.items():
            figures = timed_pass(loaders[key], dataset, epoch)
            if epoch > 0:
                passes[key].append(figures)
    return {key: tuple(statistics.median(column) for column in zip(*figures)) for key, figures in passes.items()}


def stage_costs(dataset, pipeline_ops, num_images, batch_size):
    """Microseconds per image of each stage, in this process: read, every transform op, batch to a tensor."""
    transform = build_transforms(pipeline_ops)
    count = min(num_images, len(dataset))
    costs = {}
    start = time.perf_counter()
    items = [dataset.read_bytes(index) for index in range(count)]
    costs["read bytes"] = time.perf_counter() - start
    start = time.perf_counter()
    generators = [np.random.default_rng((0, 0, index)) for index in range(count)]
    costs["per-sample generator"] = time.perf_counter() - start
    for op, entry in zip(transform.ops, pipeline_ops):
        start = time.perf_counter()
        items = [op(item, rng) for item, rng in zip(items, generators)]
        costs[next(iter(entry))] = time.perf_counter() - start
    start = time.perf_counter()
    for first in range(0, count, batch_size):
        paddle.to_tensor(np.stack(items[first:first + batch_size]))
    costs["stack + to_tensor"] = time.perf_counter() - start
    return {stage: seconds / count * 1e6 for stage, seconds in costs.items()}


def machine_description():
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{model}, {os.cpu_count()} logical CPUs; Python {platform.python_version()}, "
            f"paddle {paddle.__version__}, opencv {cv2.__version__}, numpy {np.__version__}")


def load_average():
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def main(argv=None):
    args = parse_args(argv)
    if args.cv2_threads is not None:
        cv2.setNumThreads(args.cv2_threads)
    paths = ensure_quickstart_data(args.cache_dir, args.num_classes, args.images_per_class, num_pairs=2,
                                   formats=["folder", "rec"], num_workers=2, log=print)
    num_images = args.num_classes * args.images_per_class
    load_before = load_average()
    settings = {}
    for pipeline in args.pipelines:
        for storage, section in dataset_sections(paths).items():
            dataset = build_dataset({**section, "transform_ops": PIPELINES[pipeline]}, "bench", seed=0)
            for workers in args.workers:
                settings[(pipeline, storage, workers)] = (dataset, workers)
    throughput = []
    for (pipeline, storage, workers), (rate, whole_rate, first_wait) in measure_throughput(
            settings, args.batch_size, args.repeats).items():
        throughput.append((pipeline, storage, workers, rate, whole_rate, first_wait))
        print(f"{pipeline:6s} {storage:6s} workers={workers}: {rate:7.0f} img/s after the first batch, "
              f"{whole_rate:7.0f} img/s whole pass, first batch after {first_wait:.2f} s", flush=True)
    profiles = {}
    for storage, section in dataset_sections(paths).items():
        dataset = build_dataset({**section, "transform_ops": PLSC_TRAIN_OPS}, "bench", seed=0)
        profiles[storage] = stage_costs(dataset, PLSC_TRAIN_OPS, args.profile_images, args.batch_size)
    load_after = load_average()
    report = format_report(args, num_images, throughput, profiles, load_before, load_after)
    print(report)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(report)


def format_report(args, num_images, throughput, profiles, load_before, load_after):
    lines = [
        "## Measured",
        "",
        f"- Command: `flock /tmp/plsc_bench.lock python tools/bench_data.py {' '.join(sys.argv[1:])}`".rstrip(),
        f"- Date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}; machine: {machine_description()}",
        f"- Environment: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"cv2 threads {cv2.getNumThreads()}; load average (1, 5, 15 min) {load_before} before, {load_after} after",
        f"- Data: {num_images} synthetic 112x112 JPEGs (quality 95) of {args.num_classes} classes, as an image "
        f"folder and as a `.rec`; batch {args.batch_size}, shuffled; medians of {args.repeats} full passes per "
        f"setting, the settings taking turns pass by pass, after one warm-up round",
        "- 'img/s' counts from the first batch to the end of a pass (the rate a long epoch runs at); "
        "'whole pass' includes the wait for the first batch (workers start once per epoch)",
        "",
        "| pipeline | storage | workers | img/s | img/s whole pass | first batch (s) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for pipeline, storage, workers, rate, whole_rate, first_wait in throughput:
        lines.append(f"| {pipeline} | {storage} | {workers} | {rate:.0f} | {whole_rate:.0f} | {first_wait:.2f} |")
    stages = list(next(iter(profiles.values())))
    lines += ["", "Per-image cost of each stage in one process (microseconds, `plsc` pipeline):", "",
              "| stage | " + " | ".join(profiles) + " |", "| --- |" + " ---: |" * len(profiles)]
    for stage in stages:
        lines.append(f"| {stage} | " + " | ".join(f"{profiles[storage][stage]:.0f}" for storage in profiles) + " |")
    totals = {storage: sum(costs.values()) for storage, costs in profiles.items()}
    lines.append("| **total** | " + " | ".join(f"**{totals[storage]:.0f}**" for storage in profiles) + " |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
