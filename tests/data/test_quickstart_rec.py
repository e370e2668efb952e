"""Synthetic quickstart in the release formats (`rec`, `bin`) and configs/quickstart_rec.yaml end to end."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from plsc.config import load_config
from plsc.data.dataset.face_identification import FaceIdentificationDataset
from plsc.data.dataset.face_verification import FaceVerificationDataset
from plsc.data.dataset.mx_record import MXRecordDataset
from plsc.data.synthetic import ensure_quickstart_data
from plsc.data.verification_bin import load_bin
from plsc.errors import PlscError

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN_NAMES = ("lfw", "cfp_fp", "agedb_30")
DECODE = [{"DecodeImage": {"to_rgb": True, "channel_first": False}}, {"ToCHWImage": None}]


def test_rec_holds_the_same_images_and_labels_as_the_folder(tmp_path):
    paths = ensure_quickstart_data(str(tmp_path), num_classes=3, images_per_class=3, num_pairs=4, seed=3,
                                   formats=["folder", "rec"])
    assert paths["generated"] == ["train", "verification", "train_rec"]
    folder = FaceIdentificationDataset(paths["train_dir"], paths["train_label_file"], DECODE)
    records = MXRecordDataset(paths["rec_dir"], DECODE)
    records.check_labels(3)  # `property` says 3 classes
    np.testing.assert_array_equal(records.labels, folder.labels)
    for index in range(len(folder)):
        assert records.read_bytes(index) == folder.read_bytes(index)
        np.testing.assert_array_equal(records.read_sample(index)[0], folder.read_sample(index)[0])


def test_three_bin_sets_of_distinct_held_out_pairs(tmp_path):
    paths = ensure_quickstart_data(str(tmp_path), num_classes=2, images_per_class=2, num_pairs=6, seed=0,
                                   formats=["bin"])
    assert paths["generated"] == ["bin"] and not os.path.exists(paths["train_dir"])
    images_by_set = {}
    for name in BIN_NAMES:
        path = paths["bin_paths"][name]
        images, issame = load_bin(path)
        assert len(images) == 12 and issame.sum() == 3
        images_by_set[name] = set(images)
        dataset = FaceVerificationDataset(bin_path=path, transform_ops=DECODE)
        assert dataset.name == name and dataset.read_sample(0)[0].shape == (3, 112, 112)
    # Different seeds and identity ranges: no picture appears in two sets.
    for first, second in ((0, 1), (0, 2), (1, 2)):
        assert not images_by_set[BIN_NAMES[first]] & images_by_set[BIN_NAMES[second]]


def test_sets_are_reused_and_only_damaged_or_changed_ones_redone(tmp_path):
    def ensure(num_pairs=4):
        return ensure_quickstart_data(str(tmp_path), num_classes=2, images_per_class=2, num_pairs=num_pairs,
                                      formats=["rec", "bin"], log=messages.append)["generated"]

    messages = []
    assert ensure() == ["train_rec", "bin"]
    announced = [message for message in messages if message.startswith("generating ")]  # not progress lines
    assert len(announced) == 2 and "RecordIO" in announced[0] and "lfw, cfp_fp, agedb_30" in announced[1]
    assert ensure() == []
    os.remove(tmp_path / "train_rec" / "train.idx")
    assert ensure() == ["train_rec"]
    assert ensure(num_pairs=6) == ["bin"]
    assert len(load_bin(tmp_path / "bin" / "agedb_30.bin")[1]) == 6


def test_bad_format_requests(tmp_path):
    with pytest.raises(PlscError, match="unknown synthetic data format 'lmdb'; known: folder, rec, bin"):
        ensure_quickstart_data(str(tmp_path), 2, 2, 4, formats=["rec", "lmdb"])
    with pytest.raises(PlscError, match="rendered at jitter 1.0"):
        ensure_quickstart_data(str(tmp_path), 2, 2, 4, jitter=0.5, formats=["bin"])
    assert not os.listdir(tmp_path)


def test_formats_key_in_the_config():
    assert load_config(str(REPO_ROOT / "configs" / "quickstart.yaml")).SyntheticData.formats == ["folder"]
    wrong = r"SyntheticData.formats.0 must be one of .* got 'recs' \(did you mean 'rec'\?\)"
    with pytest.raises(PlscError, match=wrong):
        load_config(str(REPO_ROOT / "configs" / "quickstart.yaml"), ["SyntheticData.formats=['recs']"])


def test_quickstart_rec_config_lists_the_rec_set_and_three_bin_sets():
    config = load_config(str(REPO_ROOT / "configs" / "quickstart_rec.yaml"))
    assert config.SyntheticData.formats == ["rec", "bin"]
    assert config.DataLoader.Train.dataset.name == "MXRecordDataset"
    assert config.DataLoader.Train.dataset.root_dir == os.path.join(config.SyntheticData.root, "train_rec")
    assert [Path(entry.bin_path).stem for entry in config.DataLoader.Eval.dataset] == list(BIN_NAMES)


def tiny_overrides(tmp_path):
    """configs/quickstart_rec.yaml shrunk to a few seconds: 6 classes, 32x32, 2 steps, 10 pairs per set."""
    data = tmp_path / "data"
    overrides = [
        f"Global.output_dir={tmp_path / 'output'}", "Global.epochs=1", "Global.max_train_step=2",
        "Global.print_batch_step=1", "Global.seed=5",
        f"SyntheticData.root={data}", "SyntheticData.num_classes=6", "SyntheticData.images_per_class=4",
        "SyntheticData.num_pairs=10", "SyntheticData.num_workers=0",
        "Model.class_num=6", "Model.layers=[1, 1]", "Model.widths=[8, 16]", "Model.input_size=32",
        "Model.num_features=16", "LRScheduler.warmup_steps=1",
        f"DataLoader.Train.dataset.root_dir={data / 'train_rec'}",
        "DataLoader.Train.dataset.transform_ops.1.ResizeImage.size=32",
        "DataLoader.Train.sampler.batch_size=8", "DataLoader.Train.loader.num_workers=1",
    ]
    for position, name in enumerate(BIN_NAMES):
        overrides += [f"DataLoader.Eval.dataset.{position}.bin_path={data / 'bin' / f'{name}.bin'}",
                      f"DataLoader.Eval.dataset.{position}.transform_ops.1.ResizeImage.size=32"]
    return overrides


def test_tiny_quickstart_rec_trains_from_rec_and_evaluates_every_bin_set(tmp_path):
    command = [sys.executable, str(REPO_ROOT / "tools" / "train.py"), "-c",
               str(REPO_ROOT / "configs" / "quickstart_rec.yaml")]
    for override in tiny_overrides(tmp_path):
        command += ["-o", override]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout
    assert "synthetic training faces as RecordIO: 6 classes x 4 images" in log
    assert not (tmp_path / "data" / "train").exists()  # no image folder was needed
    assert "global_step: 2," in log and "global_step: 3," not in log  # max_train_step
    for name in BIN_NAMES:
        # `[Eval] name: ...`, or with the set's kind: `[Eval] name (holistic): ...`
        (line,) = [line for line in log.splitlines() if re.search(rf"\[Eval\] {name}( \(\w+\))?:", line)]
        assert line.endswith("global_step 2")
        accuracy, best = map(float, re.search(r"accuracy ([0-9.]+) .*best ([0-9.]+)", line).groups())
        assert 0.0 <= accuracy <= 1.0 and best == pytest.approx(accuracy, abs=1e-5)
    assert (tmp_path / "output" / "IResNet" / "best_model" / "best_model.pdparams").is_file()
