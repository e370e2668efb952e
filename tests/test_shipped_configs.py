"""PLSC's face configs as shipped in configs/: the same keys and values as PLSC's files, they load
without edits, and each trains two steps on CPU with a tiny class count and synthetic data."""
import copy
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from plsc.config import load_config, normalise_yaml_quirks, read_yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs"

# ---- PLSC's configs, written out key by key (common keys + per-config differences) ----

TRANSFORMS_TRAIN = [
    {"DecodeImage": {"to_rgb": True, "channel_first": False}},
    {"RandFlipImage": {"flip_code": 1}},
    {"NormalizeImage": {"scale": "1.0/255.0", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "order": ""}},
    {"ToCHWImage": None},
]
TRANSFORMS_EVAL = [op for op in TRANSFORMS_TRAIN if "RandFlipImage" not in op]
SECTION_ORDER = ["Global", "FP16", "DistributedStrategy", "Model", "Loss", "LRScheduler", "Optimizer",
                 "DataLoader", "Metric", "Export"]


def plsc_config(*, max_checkpoints, eval_interval, epochs, print_step, model, class_num, pfc, margins, lr,
                optimizer, clip_extra, data_root, batch_size):
    """The full tree of one of PLSC's face configs (after its YAML quirks: '5e-4' is a float)."""
    m2, m3 = margins
    return {
        "Global": {
            "task_type": "recognition", "train_epoch_func": "default_train_one_epoch",
            "eval_func": "face_verification_eval", "checkpoint": None, "pretrained_model": None,
            "output_dir": "./output/", "device": "gpu", "save_interval": 1,
            "max_num_latest_checkpoint": max_checkpoints, "eval_during_train": True,
            "eval_interval": eval_interval, "eval_unit": "step", "accum_steps": 1, "epochs": epochs,
            "print_batch_step": print_step, "use_visualdl": True, "seed": 2022,
        },
        "FP16": {"level": "O1", "GradScaler": {"init_loss_scaling": 27648.0}},
        "DistributedStrategy": {"data_parallel": True},
        "Model": {**model, "class_num": class_num, "pfc_config": pfc},
        "Loss": {"Train": [{"MarginLoss": {"m1": 1.0, "m2": m2, "m3": m3, "s": 64.0, "model_parallel": True,
                                           "weight": 1.0}}]},
        "LRScheduler": {"name": "Poly", **lr},
        "Optimizer": {**optimizer, "grad_clip": {"name": "ClipGradByGlobalNorm", "clip_norm": 5.0, **clip_extra,
                                                 "no_clip_list": ["dist"]}},
        "DataLoader": {
            "Train": {
                "dataset": {"name": "FaceIdentificationDataset", "image_root": data_root[0],
                            "cls_label_path": data_root[1], "transform_ops": TRANSFORMS_TRAIN},
                "sampler": {"name": "DistributedBatchSampler", "batch_size": batch_size, "drop_last": False,
                            "shuffle": True},
                "loader": {"num_workers": 8, "use_shared_memory": True},
            },
            "Eval": {
                "dataset": {"name": "FaceVerificationDataset", "image_root": data_root[2],
                            "cls_label_path": data_root[2] + "/label.txt", "transform_ops": TRANSFORMS_EVAL},
                "sampler": {"name": "BatchSampler", "batch_size": 128, "drop_last": False, "shuffle": False},
                "loader": {"num_workers": 0, "use_shared_memory": True},
            },
        },
        "Metric": {"Eval": [{"LFWAcc": {"flip_test": True}}]},
        "Export": {"export_type": "onnx", "input_shape": [None, 3, 112, 112]},
    }


MS1MV3 = ("./dataset/MS1M_v3/", "./dataset/MS1M_v3/label.txt", "./dataset/MS1M_v3/agedb_30")
WEBFACE = ("./dataset/WebFace42M", "./dataset/WebFace42M/label.txt", "./dataset/WebFace42M/agedb_30")
ARCFACE, COSFACE = (0.5, 0.0), (0.0, 0.4)
MOMENTUM = {"name": "Momentum", "momentum": 0.9, "weight_decay": 5e-4}
ADAMW = {"name": "AdamW", "betas": (0.9, 0.999), "epsilon": 1e-8, "weight_decay": 0.1}
VIT_LR = {"learning_rate": 0.001, "decay_unit": "step", "warmup_epochs": 4, "warmup_end_lr": 0.001}


def vit_config(name, mask_ratio, pfc, print_step, max_checkpoints):
    model = {"name": name, "mask_ratio": mask_ratio, "drop_path_rate": 0.05, "num_features": 512}
    return plsc_config(max_checkpoints=max_checkpoints, eval_interval=4000, epochs=40, print_step=print_step,
                       model=model, class_num=2059906, pfc=pfc, margins=COSFACE, lr=VIT_LR, optimizer=ADAMW,
                       clip_extra={}, data_root=WEBFACE, batch_size=256)


def conv_model(name):
    return {"name": name, "num_features": 512, "data_format": "NHWC"}


IRESNET50 = plsc_config(
    max_checkpoints=0, eval_interval=2000, epochs=20, print_step=100, model=conv_model("IResNet50"),
    class_num=93431, pfc={"sample_ratio": 1.0, "model_parallel": True}, margins=ARCFACE,
    lr={"learning_rate": 0.1, "decay_unit": "step", "warmup_steps": 0}, optimizer=MOMENTUM,
    clip_extra={"always_clip": True}, data_root=MS1MV3, batch_size=128)
# Not a PLSC file: PLSC's CI runs the one above with -o Model.pfc_config.sample_ratio=0.1.
IRESNET50_PFC01 = copy.deepcopy(IRESNET50)
IRESNET50_PFC01["Model"]["pfc_config"]["sample_ratio"] = 0.1

EXPECTED = {
    "IResNet50_MS1MV3_ArcFace_pfc10_1n8c_dp_mp_fp16o1": IRESNET50,
    "IResNet50_MS1MV3_ArcFace_pfc01_1n8c_dp_mp_fp16o1": IRESNET50_PFC01,
    "IResNet100_WebFace42M_CosFace_pfc02_1n8c_dp_mp_fp16o1": plsc_config(
        max_checkpoints=0, eval_interval=10370, epochs=20, print_step=10, model=conv_model("IResNet100"),
        class_num=2059906, pfc={"sample_ratio": 0.2, "model_parallel": True}, margins=COSFACE,
        lr={"learning_rate": 0.1, "decay_unit": "step"}, optimizer={**MOMENTUM, "use_master_param": False},
        clip_extra={}, data_root=WEBFACE, batch_size=128),
    "MobileFaceNet_WebFace42M_CosFace_pfc02_1n8c_dp_mp_fp16o1": plsc_config(
        max_checkpoints=0, eval_interval=10000, epochs=20, print_step=100, model=conv_model("MobileFaceNet_base"),
        class_num=2059906, pfc={"sample_ratio": 0.2, "model_parallel": True}, margins=COSFACE,
        lr={"learning_rate": 0.1, "decay_unit": "step", "warmup_steps": 2, "warmup_end_lr": 0.1},
        optimizer={**MOMENTUM, "weight_decay": 1e-4}, clip_extra={"always_clip": True}, data_root=WEBFACE,
        batch_size=256),
    "FaceViT_tiny_patch9_112_WebFace42M_CosFace_pfc10_droppath005_mask0_1n8c_dp_mp_fp16o1": vit_config(
        "FaceViT_tiny_patch9_112", 0.0, {"sample_ratio": 1.0, "model_parallel": True, "sparse_update": False},
        print_step=200, max_checkpoints=5),
    "FaceViT_tiny_patch9_112_WebFace42M_CosFace_pfc02_droppath005_mask0_1n8c_dp_mp_fp16o1": vit_config(
        "FaceViT_tiny_patch9_112", 0.0, {"sample_ratio": 0.2, "model_parallel": True},
        print_step=200, max_checkpoints=5),
    "FaceViT_base_patch9_112_WebFace42M_CosFace_pfc03_droppath005_mask005_1n8c_dp_mp_fp16o1": vit_config(
        "FaceViT_base_patch9_112", 0.05, {"sample_ratio": 0.3, "model_parallel": True},
        print_step=10, max_checkpoints=0),
}
CONFIG_PARAMS = [pytest.param(stem, id=stem.split("_1n8c")[0]) for stem in EXPECTED]


def test_every_zoo_config_is_checked():
    shipped = {path.stem for path in CONFIGS.glob("*.yaml")}
    assert set(EXPECTED) <= shipped


@pytest.mark.parametrize("stem", CONFIG_PARAMS)
def test_same_keys_and_values_as_plsc(stem):
    tree = normalise_yaml_quirks(read_yaml(CONFIGS / f"{stem}.yaml"))
    assert tree == EXPECTED[stem]
    # PLSC's section and Model key order, so a diff against PLSC's file is short.
    assert list(tree) == SECTION_ORDER
    assert list(tree["Model"]) == list(EXPECTED[stem]["Model"])


@pytest.mark.parametrize("stem", CONFIG_PARAMS)
def test_loads_without_edits(stem):
    config = load_config(CONFIGS / f"{stem}.yaml")
    expected = EXPECTED[stem]
    assert config.Model.class_num == expected["Model"]["class_num"]
    assert config.Model.pfc_config.sample_ratio == expected["Model"]["pfc_config"]["sample_ratio"]
    assert config.Optimizer.weight_decay == expected["Optimizer"]["weight_decay"]
    assert config.FP16.level == "O1"


# ---- two training steps on CPU --------------------------------------------------------------------

NUM_CLASSES, IMAGES_PER_CLASS, BATCH_SIZE, STEPS = 8, 2, 2, 2
STEPS_PER_EPOCH = NUM_CLASSES * IMAGES_PER_CLASS // BATCH_SIZE


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from plsc.data.synthetic import write_image_folder, write_verification_pairs

    root = tmp_path_factory.mktemp("shipped_config_data")
    train = write_image_folder(root / "train", NUM_CLASSES, IMAGES_PER_CLASS, seed=1)
    pairs = write_verification_pairs(root / "agedb_30", num_identities=4, num_pairs=2, seed=1)
    return {"train": train["root"], "train_labels": train["label_file"], "eval": pairs["root"],
            "eval_labels": pairs["label_file"]}


def plsc_poly_lr(step, lr, epochs, steps_per_epoch, warmup_steps=0, warmup_epochs=0, warmup_end_lr=0.0):
    """PLSC's Poly (power 2) with linear warmup from 0, per step: T - W decay steps after W warmup steps."""
    total = epochs * steps_per_epoch
    warmup = warmup_steps or warmup_epochs * steps_per_epoch
    if step < warmup:
        return warmup_end_lr * step / warmup
    return lr * (1 - (step - warmup) / (total - warmup)) ** 2


def run_plsc_train(config_path, overrides, timeout=900):
    command = [sys.executable, "-c", "import sys; from plsc.cli import train_main; sys.exit(train_main())",
               "-c", str(config_path)]
    for override in overrides:
        command += ["-o", override]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO_ROOT)


STEP_LINE = re.compile(r"global_step: (\d+), lr: ([0-9.e+-]+), MarginLoss: ([0-9.e+-]+|nan|inf)")


# 10-50 s each on a 2-core CPU (IResNet100 and FaceViT_base the slowest: 5-10 s a step at batch 2,
# and FaceViT_base writes a 1.4 GB checkpoint), about 3 minutes for all seven.
@pytest.mark.slow
@pytest.mark.parametrize("stem", CONFIG_PARAMS)
def test_trains_two_steps_on_cpu(stem, tiny_data, tmp_path):
    expected = EXPECTED[stem]
    # Evaluation (and its best_model checkpoint) is exercised on the cheapest config only.
    evaluate = stem.startswith("MobileFaceNet")
    output_dir = tmp_path / "output"
    result = run_plsc_train(CONFIGS / f"{stem}.yaml", [
        "Global.device=cpu",
        f"Global.output_dir={output_dir}",
        f"Global.max_train_step={STEPS}",
        "Global.print_batch_step=1",
        f"Global.eval_during_train={evaluate}",
        f"Model.class_num={NUM_CLASSES}",
        f"DataLoader.Train.dataset.image_root={tiny_data['train']}",
        f"DataLoader.Train.dataset.cls_label_path={tiny_data['train_labels']}",
        f"DataLoader.Train.sampler.batch_size={BATCH_SIZE}",
        "DataLoader.Train.loader.num_workers=0",
        f"DataLoader.Eval.dataset.image_root={tiny_data['eval']}",
        f"DataLoader.Eval.dataset.cls_label_path={tiny_data['eval_labels']}",
    ])
    try:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        log = result.stdout + result.stderr
        steps = [(int(step), float(lr), float(loss)) for step, lr, loss in STEP_LINE.findall(log)]
        assert [step for step, _, _ in steps] == [1, 2]
        assert all(math.isfinite(loss) and loss > 0 for _, _, loss in steps)
        # The logged LR is the schedule at the step's start: the config's values reached the schedule.
        schedule = {key: value for key, value in expected["LRScheduler"].items()
                    if key not in ("name", "decay_unit", "learning_rate")}
        for step, lr, _ in steps:
            reference = plsc_poly_lr(step - 1, expected["LRScheduler"]["learning_rate"],
                                     expected["Global"]["epochs"], STEPS_PER_EPOCH, **schedule)
            assert lr == pytest.approx(reference, abs=1e-6)
        model_dir = output_dir / expected["Model"]["name"]
        assert (model_dir / "latest" / "latest.pdparams").is_file()
        assert (model_dir / "best_model" / "best_model.pdparams").is_file() == evaluate
        if evaluate:
            assert "[Eval]" in log
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)  # FaceViT_base's checkpoints are over 1 GB
