"""The shipped configs/synthetic_<head>.yaml shrunk to a seconds-long run on tiny synthetic data."""
from pathlib import Path

import yaml

from tests.engine.tiny_run import set_key

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_SIZE = 32
NUM_CLASSES = 60  # with sample_ratio 0.3 each step samples 18 of 60 centres: real negative sampling
TINY = {
    "Global.epochs": 4,
    "Global.print_batch_step": 1,
    "Global.eval_during_train": False,
    "Global.seed": 11,
    "Model.layers": [1, 1],
    "Model.widths": [8, 16],
    "Model.input_size": IMAGE_SIZE,
    "Model.num_features": 16,
    "Model.class_num": NUM_CLASSES,
    "LRScheduler.warmup_steps": 2,
    "DataLoader.Train.sampler.batch_size": 16,
    "DataLoader.Train.loader.num_workers": 0,
}
# Keys whose paper-scale values do not fit 16-d embeddings (norm ~ 4) or a 16-wide trunk.
PER_HEAD = {
    "magface": {"Loss.Train.0.MagFace.l_a": 1.0, "Loss.Train.0.MagFace.u_a": 10.0},
    "groupface": {"Model.shared_features": 16, "Model.num_groups": 4, "Model.gdn_hidden": 8},
}


def write_head_config(directory, data_root, head, changes=None):
    """configs/synthetic_{head}.yaml, tiny, reading `data_root`/train; returns the config path."""
    tree = yaml.safe_load((REPO_ROOT / "configs" / f"synthetic_{head}.yaml").read_text())
    del tree["SyntheticData"], tree["DataLoader"]["Eval"], tree["Metric"]
    tree["Global"]["output_dir"] = str(Path(directory) / "output")
    for key, value in {**TINY, **PER_HEAD.get(head, {}), **(changes or {})}.items():
        set_key(tree, key, value)
    dataset = tree["DataLoader"]["Train"]["dataset"]
    dataset["image_root"] = str(Path(data_root) / "train")
    dataset["cls_label_path"] = str(Path(data_root) / "train" / "label.txt")
    for op in dataset["transform_ops"]:
        if "ResizeImage" in op:
            op["ResizeImage"]["size"] = IMAGE_SIZE
    Path(directory).mkdir(parents=True, exist_ok=True)
    path = Path(directory) / f"{head}.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path
