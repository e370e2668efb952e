"""task/recognition/face/{train,export,eval_ijbc}.sh: the commands they build, and one real chain
train (2 CPU processes) -> export -> IJB-C evaluation on tiny synthetic data."""
import os
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
FACE = REPO_ROOT / "task" / "recognition" / "face"
DEFAULT_CONFIG = str(REPO_ROOT / "configs" / "IResNet50_MS1MV3_ArcFace_pfc10_1n8c_dp_mp_fp16o1.yaml")
MOBILEFACENET_CONFIG = str(REPO_ROOT / "configs" / "MobileFaceNet_WebFace42M_CosFace_pfc02_1n8c_dp_mp_fp16o1.yaml")


def run_script(name, *args, cwd=None, timeout=60, **variables):
    env = dict(os.environ, OMP_NUM_THREADS="1", **{key: str(value) for key, value in variables.items()})
    for key in ("CONFIG", "DEVICES", "NNODES", "MASTER", "NPROC_CPU", "PRETRAINED", "MODEL", "IMAGE_PATH",
                "TARGET", "RESULT_DIR", "OUTPUT_DIR"):
        if key not in variables:
            env.pop(key, None)  # the scripts' defaults, not whatever the caller's shell exported
    return subprocess.run(["bash", str(FACE / name), *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)


def dry_run(name, *args, **variables):
    """The command a script would run, as an argument list."""
    result = run_script(name, *args, DRY_RUN=1, **variables)
    assert result.returncode == 0, result.stderr
    return shlex.split(result.stdout)


def without_program(command):
    """Drop the program (plsc-train / plsc-export, or python + tools/*.py in a plain checkout)."""
    return command[1:] if command[0].startswith("plsc-") else command[2:]


def test_train_on_one_node():
    command = dry_run("train.sh", "-o", "Global.epochs=1")
    launcher, program = command[:4], command[4:]
    assert launcher == ["python", "-m", "paddle.distributed.launch", "--devices=0,1,2,3,4,5,6,7"]
    assert without_program(program) == ["-c", DEFAULT_CONFIG, "-o", "Global.epochs=1"]


def test_train_on_several_nodes():
    command = dry_run("train.sh", NNODES=2, MASTER="10.0.0.1:8090", DEVICES="0,1", CONFIG="my.yaml")
    assert command[3:8] == ["--devices=0,1", "--nnodes", "2", "--master", "10.0.0.1:8090"]
    assert without_program(command[8:]) == ["-c", "my.yaml"]
    result = run_script("train.sh", DRY_RUN=1, NNODES=2)
    assert result.returncode == 2 and "MASTER" in result.stderr


def test_train_on_cpu_processes():
    command = dry_run("train.sh", NPROC_CPU=2, DEVICES="0,1")
    assert command[3] == "--nproc_per_node=2" and not any(arg.startswith("--devices") for arg in command)
    assert without_program(command[4:]) == ["-c", DEFAULT_CONFIG, "-o", "Global.device=cpu"]


def test_export_command(tmp_path):
    command = dry_run("export.sh", "-o", "Export.export_type=paddle", OUTPUT_DIR=tmp_path)
    # PLSC's README export: FP16 off, NCHW; the default checkpoint is the config model's best one.
    assert without_program(command) == [
        "-c", DEFAULT_CONFIG, "-o", f"Global.pretrained_model={tmp_path}/IResNet50/best_model",
        "-o", f"Global.output_dir={tmp_path}", "-o", "FP16.level=O0", "-o", "Model.data_format=NCHW",
        "-o", "Export.export_type=paddle"]
    command = dry_run("export.sh", CONFIG=MOBILEFACENET_CONFIG, PRETRAINED="run/latest")
    assert "Global.pretrained_model=run/latest" in command


def test_eval_ijbc_command():
    command = dry_run("eval_ijbc.sh", "--batch-size", "16", MODEL="m.onnx", IMAGE_PATH="/data/IJBC")
    assert command[:2] == ["python", str(FACE / "onnx_ijbc.py")]
    assert command[2:] == ["--model-root", "m.onnx", "--image-path", "/data/IJBC", "--target", "IJBC",
                           "--result-dir", "./output", "--batch-size", "16"]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_train_export_evaluate_chain(tmp_path):
    from plsc.data.synthetic import write_image_folder
    from plsc.data.synthetic.ijbc import write_synthetic_ijbc

    train = write_image_folder(tmp_path / "train", num_classes=8, images_per_class=2, seed=1)
    ijbc = write_synthetic_ijbc(tmp_path / "IJBC", num_subjects=4, templates_per_subject=2, medias_per_template=1,
                                images_per_media=1, seed=1)
    output_dir = tmp_path / "output"
    result = run_script(
        "train.sh", "-o", "Model.class_num=8", "-o", f"DataLoader.Train.dataset.image_root={train['root']}",
        "-o", f"DataLoader.Train.dataset.cls_label_path={train['label_file']}",
        "-o", "DataLoader.Train.sampler.batch_size=2", "-o", "DataLoader.Train.loader.num_workers=0",
        "-o", "Global.max_train_step=2", "-o", "Global.eval_during_train=False",
        "-o", f"Global.output_dir={output_dir}", "-o", "Global.use_visualdl=False",
        cwd=tmp_path, timeout=600, CONFIG=MOBILEFACENET_CONFIG, NPROC_CPU=2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Two ranks wrote one checkpoint: the dense backbone once, the class-centre shard per rank.
    checkpoint = output_dir / "MobileFaceNet_base"
    saved = checkpoint / "latest"
    assert (saved / "latest.pdparams").is_file()
    assert {path.name for path in saved.glob("latest_rank*.pdparams")} == {
        "latest_rank0.pdparams", "latest_rank1.pdparams"}

    result = run_script("export.sh", "-o", "Model.class_num=8", cwd=tmp_path, timeout=300,
                        CONFIG=MOBILEFACENET_CONFIG, PRETRAINED=checkpoint / "latest", OUTPUT_DIR=output_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    model = output_dir / "MobileFaceNet_base.onnx"
    assert model.is_file()

    result = run_script("eval_ijbc.sh", "--job", "chain", "--num-workers", "0", cwd=tmp_path, timeout=300,
                        MODEL=model, IMAGE_PATH=ijbc, RESULT_DIR=tmp_path / "ijbc_result")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    pairs = np.loadtxt(Path(ijbc) / "meta" / "ijbc_template_pair_label.txt", dtype=np.int64, ndmin=2)
    scores = np.load(tmp_path / "ijbc_result" / "chain" / "IJBC.npy")
    # One cosine score per protocol pair.
    assert scores.shape == (len(pairs),) and np.all(np.abs(scores) <= 1 + 1e-5)
