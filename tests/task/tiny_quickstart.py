"""configs/quickstart.yaml shrunk by `-o` overrides to a seconds-long CPU run (32x32 faces, 2-stage IResNet).

The tests drive the console entry points exactly as a user would: the shipped config plus overrides.
"""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = REPO_ROOT / "configs" / "quickstart.yaml"
IMAGE_SIZE = 32
NUM_CLASSES = 12


def tiny_overrides(work_dir, data_dir, max_train_step=4, data_format="NCHW"):
    """`-o` values: data generated under data_dir (SyntheticData), outputs under work_dir/output."""
    data_dir = Path(data_dir)
    values = {
        "Global.output_dir": Path(work_dir) / "output",
        "Global.max_train_step": max_train_step,
        "Global.eval_during_train": False,
        "Global.print_batch_step": 1,
        "Global.seed": 5,
        "SyntheticData.root": data_dir,
        "SyntheticData.num_classes": NUM_CLASSES,
        "SyntheticData.images_per_class": 8,
        "SyntheticData.num_pairs": 60,
        "SyntheticData.num_workers": 0,
        "Model.layers": "[1,1]",
        "Model.widths": "[8,16]",
        "Model.input_size": IMAGE_SIZE,
        "Model.num_features": 16,
        "Model.data_format": data_format,
        "Model.class_num": NUM_CLASSES,
        "LRScheduler.warmup_steps": 1,
        "DataLoader.Train.dataset.image_root": data_dir / "train",
        "DataLoader.Train.dataset.cls_label_path": data_dir / "train" / "label.txt",
        "DataLoader.Train.dataset.transform_ops.1.ResizeImage.size": IMAGE_SIZE,
        "DataLoader.Train.sampler.batch_size": 16,
        "DataLoader.Train.loader.num_workers": 0,
        "DataLoader.Eval.dataset.image_root": data_dir / "verification",
        "DataLoader.Eval.dataset.cls_label_path": data_dir / "verification" / "label.txt",
        "DataLoader.Eval.dataset.transform_ops.1.ResizeImage.size": IMAGE_SIZE,
        "Export.input_shape": f"[None,3,{IMAGE_SIZE},{IMAGE_SIZE}]",
    }
    return [f"{key}={value}" for key, value in values.items()]


def cli_args(overrides):
    """-c quickstart.yaml -o ... for plsc.cli's entry points."""
    args = ["-c", str(QUICKSTART)]
    for override in overrides:
        args += ["-o", override]
    return args
