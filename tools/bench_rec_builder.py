"""Time the `.rec` and `.bin` builders on synthetic faces: images/s per setting, for docs/your_own_data.md.

    python tools/bench_rec_builder.py --work_dir /tmp/plsc_bench [--num_classes 100 --images_per_class 20]
"""
import argparse
import os
import shutil
import time

from plsc.data.dataset.tools.images_2_mx_recordio import build_recordio
from plsc.data.dataset.tools.make_verification_bin import make_verification_bin
from plsc.data.synthetic import ensure_quickstart_data


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", required=True)
    parser.add_argument("--num_classes", type=int, default=100)
    parser.add_argument("--images_per_class", type=int, default=20)
    parser.add_argument("--num_pairs", type=int, default=600)
    args = parser.parse_args(argv)

    started = time.monotonic()
    data = ensure_quickstart_data(os.path.join(args.work_dir, "data"), args.num_classes, args.images_per_class,
                                  args.num_pairs, num_workers=2)
    print(f"synthetic data ready in {time.monotonic() - started:.1f} s: {data['train_dir']}")
    settings = [("copy, 1 worker", {"num_workers": 1}), ("copy, 2 workers", {"num_workers": 2}),
                ("--quality 90, 1 worker", {"quality": 90, "num_workers": 1}),
                ("--quality 90, 2 workers", {"quality": 90, "num_workers": 2})]
    for label, options in settings:
        out_dir = os.path.join(args.work_dir, "rec")
        shutil.rmtree(out_dir, ignore_errors=True)
        summary = build_recordio(data["train_dir"], out_dir, cls_label_path=data["train_label_file"],
                                 progress=False, log=lambda message: None, **options)
        print(f".rec {label}: {summary['images']} images in {summary['seconds']:.2f} s = "
              f"{summary['images_per_second']:.0f} images/s")
    started = time.monotonic()
    summary = make_verification_bin(data["verification_label_file"], data["verification_dir"],
                                    os.path.join(args.work_dir, "pairs.bin"), progress=False, log=lambda message: None)
    seconds = time.monotonic() - started
    print(f".bin: {summary['pairs']} pairs ({2 * summary['pairs']} images) in {seconds:.2f} s = "
          f"{2 * summary['pairs'] / seconds:.0f} images/s")


if __name__ == "__main__":
    main()
