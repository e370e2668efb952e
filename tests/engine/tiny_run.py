"""A tiny training setup for engine tests: synthetic faces at 32x32 and a two-stage IResNet.

`write_tiny_config(tmp_path, **changes)` writes the data once per directory and a YAML config
derived from configs/quickstart.yaml, so the tests exercise the same keys users run.
"""
from pathlib import Path

import yaml

from plsc.data.synthetic import ensure_quickstart_data

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_SIZE = 32


def set_key(tree, dotted_key, value):
    """tree['A']['b'] = value for dotted_key 'A.b' (list items by index: 'A.0.b')."""
    *parents, last = dotted_key.split(".")
    for part in parents:
        tree = tree[int(part)] if isinstance(tree, list) else tree[part]
    if isinstance(tree, list):
        tree[int(last)] = value
    else:
        tree[last] = value


def write_tiny_data(data_root, num_classes=12, images_per_class=10, num_pairs=120):
    """Synthetic training folder + held-out verification pairs under `data_root` (reused if present)."""
    return ensure_quickstart_data(str(data_root), num_classes=num_classes, images_per_class=images_per_class,
                                  num_pairs=num_pairs, seed=7)


def write_tiny_config(directory, data_root, changes=None, num_classes=12):
    """configs/quickstart.yaml shrunk to a seconds-long run on `data_root`; returns the config path."""
    tree = yaml.safe_load((REPO_ROOT / "configs" / "quickstart.yaml").read_text())
    del tree["SyntheticData"]  # the tests write their data themselves
    train, evaluation = tree["DataLoader"]["Train"], tree["DataLoader"]["Eval"]
    defaults = {
        "Global.output_dir": str(Path(directory) / "output"),
        "Global.epochs": 2,
        "Global.print_batch_step": 1,
        "Global.eval_interval": 1,
        "Global.eval_unit": "epoch",
        "Global.seed": 11,
        "Model.layers": [1, 1],
        "Model.widths": [8, 16],
        "Model.input_size": IMAGE_SIZE,
        "Model.num_features": 16,
        "Model.class_num": num_classes,
        "LRScheduler.warmup_steps": 2,
        "DataLoader.Train.sampler.batch_size": 16,
        "DataLoader.Train.loader.num_workers": 0,
    }
    for key, value in {**defaults, **(changes or {})}.items():
        set_key(tree, key, value)
    for section, folder in ((train, "train"), (evaluation, "verification")):
        section["dataset"]["image_root"] = str(Path(data_root) / folder)
        section["dataset"]["cls_label_path"] = str(Path(data_root) / folder / "label.txt")
        for op in section["dataset"]["transform_ops"]:
            if "ResizeImage" in op:
                op["ResizeImage"]["size"] = IMAGE_SIZE
    Path(directory).mkdir(parents=True, exist_ok=True)
    path = Path(directory) / "tiny.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def record_losses(trainer):
    """Make `trainer` append every step's total loss (a float) to the returned list."""
    losses = []
    step = trainer.train_step

    def recording_step(*batch):
        total, parts = step(*batch)
        losses.append(float(total))
        return total, parts

    trainer.train_step = recording_step
    return losses
