"""User mistakes stop `plsc-train` with one line naming the key, file or line, and lose no progress."""
import os
import subprocess
import sys

import pytest

from tests.engine.tiny_run import REPO_ROOT, write_tiny_config, write_tiny_data


def run_train(config, *overrides):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, str(REPO_ROOT / "tools" / "train.py"), "-c", str(config)]
    for override in overrides:
        command += ["-o", override]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def error_lines(result):
    """The lines plsc-train printed as its error (stderr also carries Paddle's own warnings)."""
    return [line for line in result.stderr.splitlines() if line.startswith("plsc-train: error:")]


@pytest.fixture()
def data_root(tmp_path):
    root = tmp_path / "data"
    write_tiny_data(root, num_classes=6, images_per_class=6, num_pairs=20)
    return root


def label_lines(data_root):
    return (data_root / "train" / "label.txt").read_text().splitlines()


def test_unknown_key_is_one_line_naming_the_key(tmp_path, data_root):
    config = write_tiny_config(tmp_path, data_root, num_classes=6)
    result = run_train(config, "Model.bogus_key=1")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result)
    assert "Model.bogus_key" in line


def test_label_beyond_class_num_names_file_and_line(tmp_path, data_root):
    config = write_tiny_config(tmp_path, data_root, num_classes=6)
    lines = label_lines(data_root)
    path, _ = lines[9].split()
    lines[9] = f"{path}\t6"
    (data_root / "train" / "label.txt").write_text("\n".join(lines) + "\n")
    result = run_train(config)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = error_lines(result)
    assert "label.txt:10" in line and "label 6" in line and "class_num=6" in line
    assert not (tmp_path / "output" / "IResNet" / "latest").exists()  # stopped before training


@pytest.mark.parametrize("damage", ["missing", "undecodable"])
def test_bad_image_in_a_worker_names_the_file_and_keeps_progress(tmp_path, data_root, damage):
    # 36 images, batch 16: 2 steps per epoch; the damaged image is read in epoch 2, step 1 at the
    # latest, so epoch 1's checkpoint exists and the error reports where to resume from.
    config = write_tiny_config(tmp_path, data_root, {"DataLoader.Train.loader.num_workers": 1,
                                                     "Global.eval_during_train": False,
                                                     "DataLoader.Train.sampler.drop_last": False},
                               num_classes=6)
    relative = label_lines(data_root)[20].split()[0]
    image = data_root / "train" / relative
    if damage == "missing":
        image.unlink()
    else:
        image.write_bytes(b"not an image at all")
    result = run_train(config)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result)
    assert relative in line and "label.txt:21" in line
    assert ("cannot read image" in line) if damage == "missing" else ("cannot decode image" in line)
    assert "Global.checkpoint=" in line
    assert (tmp_path / "output" / "IResNet" / "latest").is_dir()


def test_recognition_without_class_num_stops_before_any_work(tmp_path, data_root):
    config = write_tiny_config(tmp_path, data_root, num_classes=6)
    text = config.read_text().replace("  class_num: 6\n", "")
    config.write_text(text)
    result = run_train(config)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = error_lines(result)
    assert line.endswith("missing required key Model.class_num (Global.task_type 'recognition' needs it)")
    assert not (tmp_path / "output" / "IResNet").exists()
