"""tools/subcenter_clean.py end to end: a briefly trained sub-centre checkpoint -> report files."""
import importlib.util

import numpy as np
import paddle
import pytest
from heads_tiny import NUM_CLASSES, REPO_ROOT, write_head_config

from plsc.checkpoint import read_global_table
from plsc.config import load_config
from plsc.data.dataset.face_identification import FaceIdentificationDataset
from plsc.data.synthetic import ensure_quickstart_data
from plsc.engine.trainer import Trainer

pytestmark = pytest.mark.slow


def load_tool():
    spec = importlib.util.spec_from_file_location("subcenter_clean_tool", REPO_ROOT / "tools" / "subcenter_clean.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def embed_without_augmentation(trainer, config_path):
    """The trained backbone's embeddings of every training image, in label-file order (no flip)."""
    section = dict(load_config(str(config_path)).DataLoader.Train.dataset)
    section.pop("name")
    section["transform_ops"] = [op for op in section["transform_ops"] if "RandFlipImage" not in op]
    dataset = FaceIdentificationDataset(**section)
    trainer.backbone.eval()
    with paddle.no_grad():
        images = np.stack([dataset[i][0] for i in range(len(dataset))])
        return trainer.backbone(paddle.to_tensor(images)).numpy()


def test_report_lists_images_far_from_their_dominant_subcenter(tmp_path, capsys):
    data_root = tmp_path / "data"
    ensure_quickstart_data(str(data_root), num_classes=NUM_CLASSES, images_per_class=4, num_pairs=20, seed=7)
    config_path = write_head_config(tmp_path, data_root, "subcenter", {"Global.epochs": 1})
    trainer = Trainer(load_config(str(config_path)))
    trainer.train()
    checkpoint = tmp_path / "output" / "IResNet" / "latest"
    out_dir = tmp_path / "clean"
    threshold = 60.0
    load_tool().main(["-c", str(config_path), "--checkpoint", str(checkpoint), "--out_dir", str(out_dir),
                      "--threshold", str(threshold)])
    summary = capsys.readouterr().out

    # Independent recomputation from the trained table and the backbone's embeddings of the images.
    table = trainer.task.head.weight.numpy().reshape(NUM_CLASSES, 3, 16)
    lines = (data_root / "train" / "label.txt").read_text().split("\n")
    paths = [line.split("\t")[0] for line in lines if line]
    labels = np.array([int(line.split("\t")[1]) for line in lines if line])
    noisy_lines = [line.split("\t") for line in (out_dir / "noisy.txt").read_text().splitlines()[1:]]
    kept_lines = (out_dir / "clean_label.txt").read_text().splitlines()
    assert len(noisy_lines) + len(kept_lines) == len(paths)
    assert f"{len(paths)} images, {len(kept_lines)} kept, {len(noisy_lines)} noisy" in summary
    dominant = np.load(out_dir / "dominant_centers.npy")
    assert dominant.shape == (NUM_CLASSES, 16)
    for c in range(NUM_CLASSES):  # each kept centre is one of its class's sub-centres
        assert any(np.array_equal(dominant[c], table[c, k]) for k in range(3))
    embeddings = embed_without_augmentation(trainer, config_path)
    for index, label, angle, nearest, dominant_k, _ in noisy_lines:
        x, centre = embeddings[int(index)], table[int(label), int(dominant_k)]
        expected = np.degrees(np.arccos(np.dot(x, centre) / np.linalg.norm(x) / np.linalg.norm(centre)))
        assert int(label) == labels[int(index)] and float(angle) == pytest.approx(expected, abs=0.02)
        assert float(angle) > threshold
        assert np.array_equal(dominant[int(label)], table[int(label), int(dominant_k)])
    noisy_paths = {paths[int(fields[0])] for fields in noisy_lines}
    assert {line.split("\t")[0] for line in kept_lines} == set(paths) - noisy_paths
    # The checkpoint holds the same table the trainer ended with.
    np.testing.assert_array_equal(read_global_table(checkpoint), trainer.task.head.weight.numpy())
