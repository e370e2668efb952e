"""Group fairness, masked verification, instance fairness and 1:N recall of an ONNX face model.

    python task/recognition/face/onnx_verification.py --model-root output/IResNet50.onnx \
        --group African=rfw/African.bin --group Asian=rfw/Asian.bin ... [--masked] \
        --folder data/ids [--group-file data/ids/groups.txt] --target-far 1e-4 --result-dir ./output/rfw

or take the metrics from a plsc config's `Metric.Eval` (GroupVerification, InstanceFairness, Recall):

    python task/recognition/face/onnx_verification.py --model-root model.onnx -c configs/synthetic_fairness.yaml

Pair sets (`--group NAME=PATH`) are LFW-style `.bin` files or converted folders; `--folder` is an
identity folder (label.txt, and groups.txt with `label group` lines for per-group figures). Images
are resized to the model's input size; each image's embedding is summed with its mirror image's
(--flip-test). Prints one table per metric and writes {result-dir}/eval_report.json plus a PNG bar
chart per metric. A user error is one line on stderr and exit code 1.
"""
import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # run from a source checkout too
sys.path.insert(0, str(Path(__file__).resolve().parent))

from onnx_helper import DEFAULT_INPUT_MEAN, DEFAULT_INPUT_STD, OnnxFaceModel  # noqa: E402

from plsc.data.transforms import Compose, DecodeImage, ResizeImage  # noqa: E402
from plsc.errors import PlscError  # noqa: E402
from plsc.metrics.fairness import GroupVerification, InstanceFairness  # noqa: E402
from plsc.metrics.recall import Recall  # noqa: E402
from plsc.metrics.report import format_report, write_reports  # noqa: E402

PROG = "onnx_verification.py"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--model-root", required=True, help="the ONNX model file")
    parser.add_argument("-c", "--config", default=None, help="take the set metrics from this config's Metric.Eval")
    parser.add_argument("-o", "--override", action="append", default=[], help="config override, as plsc-eval")
    parser.add_argument("--group", action="append", default=[], metavar="NAME=PATH",
                        help="a group's pair set (.bin or folder); repeat per group")
    parser.add_argument("--masked", action="store_true", help="also score the pairs with a mask on one image each")
    parser.add_argument("--mask-seed", type=int, default=0)
    parser.add_argument("--folder", default=None, help="identity folder for instance fairness and recall")
    parser.add_argument("--label-file", default=None, help="default: FOLDER/label.txt")
    parser.add_argument("--group-file", default=None, help="default: FOLDER/groups.txt when it exists")
    parser.add_argument("--target-far", type=float, default=1e-4, help="FAR of the global instance threshold")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5], help="ranks of Recall@k")
    parser.add_argument("--result-dir", default="./output/verification")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--input-mean", type=float, default=DEFAULT_INPUT_MEAN)
    parser.add_argument("--input-std", type=float, default=DEFAULT_INPUT_STD)
    parser.add_argument("--flip-test", action=argparse.BooleanOptionalAction, default=True,
                        help="add the mirror image's embedding")
    args = parser.parse_args(argv)
    if not (args.config or args.group or args.folder):
        parser.error("give -c CONFIG, or at least one --group NAME=PATH or a --folder")
    return args


def metrics_from_flags(args):
    """{report name: metric} for the pair sets and identity folder given on the command line."""
    metrics = {}
    if args.group:
        groups = dict(_name_and_path(text) for text in args.group)
        metrics["GroupVerification"] = GroupVerification(groups=groups, flip_test=args.flip_test, masked=args.masked,
                                                         mask_seed=args.mask_seed)
    if args.folder:
        label_file = args.label_file or os.path.join(args.folder, "label.txt")
        group_file = args.group_file or os.path.join(args.folder, "groups.txt")
        group_file = group_file if args.group_file or os.path.isfile(group_file) else None
        metrics["InstanceFairness"] = InstanceFairness(image_root=args.folder, cls_label_path=label_file,
                                                       group_path=group_file, target_far=args.target_far,
                                                       flip_test=args.flip_test)
        metrics["Recall"] = Recall(image_root=args.folder, cls_label_path=label_file, group_path=group_file,
                                   ks=args.ks, flip_test=args.flip_test)
    return metrics


def metrics_from_config(path, overrides):
    """{report name: metric} of the set-owning metrics in a config's Metric.Eval."""
    from plsc.config import load_config
    from plsc.engine.evaluator import report_names
    from plsc.registry import METRICS

    config = load_config(path, overrides)
    metrics = [METRICS.build(name, where=f"Metric.Eval.{position}", **(kwargs or {}))
               for position, entry in enumerate((config.get("Metric") or {}).get("Eval") or [])
               for name, kwargs in entry.items()]
    named = report_names([metric for metric in metrics if hasattr(metric, "evaluate_sets")])
    if not named:
        raise PlscError(f"{path}: Metric.Eval lists no GroupVerification, InstanceFairness or Recall entry")
    return named


def _name_and_path(text):
    name, separator, path = text.partition("=")
    if not separator or not name or not path:
        raise PlscError(f"--group expects NAME=PATH, got {text!r}")
    return name, path


def onnx_embedder(model):
    """embed(dataset, flip_test) -> [N, D] float32 for datasets yielding uint8 [H, W, 3] images.

    Items (image, label, is_masked) pass their flag on, so a FaceT model uses its masked-face prompts
    for the masked images (the mirror image gets the same flag).
    """
    def embed(dataset, flip_test):
        chunks = []
        for start in range(0, len(dataset), model.batch_size):
            items = [dataset[index] for index in range(start, min(start + model.batch_size, len(dataset)))]
            images = np.stack([item[0] for item in items])
            flags = np.array([item[2] if len(item) > 2 else 0 for item in items], dtype=np.int64)
            embeddings = model.embed(images, flags)
            if flip_test:
                embeddings = embeddings + model.embed(np.ascontiguousarray(images[:, :, ::-1]), flags)
            chunks.append(embeddings)
        return np.concatenate(chunks)

    return embed


def model_transform(model):
    """Encoded image -> RGB uint8 at the model's (square) input size; the model normalises."""
    height, width = model.image_size
    if height != width:
        raise PlscError(f"{model.path}: input {height}x{width} is not square; aligned face crops are")
    return Compose([DecodeImage(to_rgb=True, channel_first=False), ResizeImage(size=height)])


def main(argv=None):
    args = parse_args(argv)
    try:
        metrics = metrics_from_config(args.config, args.override) if args.config else metrics_from_flags(args)
        model = OnnxFaceModel(args.model_root, batch_size=args.batch_size, input_mean=args.input_mean,
                              input_std=args.input_std)
        embed, transform = onnx_embedder(model), model_transform(model)
        reports = {name: metric.evaluate_sets(embed, transform) for name, metric in metrics.items()}
        paths = write_reports(reports, args.result_dir)
    except PlscError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    for report in reports.values():
        print(format_report(report) + "\n")
    print(f"report: {paths['json']}" + "".join(f"\nchart: {chart}" for chart in paths["charts"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
