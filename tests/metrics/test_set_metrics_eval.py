"""plsc-eval with the set-owning metrics: tables on stdout, eval_report.json and charts, and per-group
accuracies equal to a direct embedding of the pair sets (OpenCV + the backbone, outside the evaluator)."""
import json
import os

import cv2
import numpy as np
import paddle
import pytest
import yaml

from plsc.config import load_config
from plsc.data.synthetic.fairness import ensure_fairness_data
from plsc.data.verification_bin import load_bin
from plsc.engine.build import build_backbone
from plsc.engine.evaluate import evaluate_saved_model
from plsc.metrics.verification import kfold_accuracy, pair_distances

SIZE = 32
EVAL_OPS = [{"DecodeImage": {"to_rgb": True, "channel_first": False}}, {"ResizeImage": {"size": SIZE}},
            {"NormalizeImage": {"scale": "1.0/255.0", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "order": ""}},
            {"ToCHWImage": None}]


def write_config(tmp_path, paths):
    folder = {"image_root": paths["folder"], "cls_label_path": paths["label_file"], "group_path": paths["group_file"]}
    config = {
        "Global": {"output_dir": str(tmp_path / "out"), "device": "cpu", "epochs": 1, "seed": 0},
        "Model": {"name": "IResNet", "layers": [1, 1, 1, 1], "widths": [8, 8, 16, 16], "input_size": SIZE,
                  "num_features": 16, "class_num": 10},
        "Loss": {"Train": [{"MarginLoss": {"m1": 1.0, "m2": 0.5, "m3": 0.0, "s": 64.0}}]},
        "LRScheduler": {"name": "Poly", "learning_rate": 0.1},
        "Optimizer": {"name": "Momentum", "momentum": 0.9},
        "DataLoader": {"Eval": {"dataset": {"name": "FaceVerificationDataset", "bin_path": paths["bins"]["group_a"],
                                            "transform_ops": EVAL_OPS},
                                "sampler": {"name": "BatchSampler", "batch_size": 16}}},
        "Metric": {"Eval": [{"LFWAcc": {"flip_test": True, "nrof_folds": 5}},
                            {"GroupVerification": {"groups": paths["bins"], "masked": True, "nrof_folds": 5}},
                            {"InstanceFairness": {**folder, "target_far": 0.05}},
                            {"Recall": {**folder, "ks": [1, 2]}}]},
    }
    path = tmp_path / "fairness.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def direct_embeddings(backbone, encoded_images):
    """The evaluation pipeline written out: decode, resize, normalise, embed image + mirror image."""
    images = []
    for data in encoded_images:
        rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        rgb = cv2.resize(rgb, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        images.append(((rgb.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1))
    batch = paddle.to_tensor(np.stack(images))
    backbone.eval()
    with paddle.no_grad():
        return (backbone(batch) + backbone(paddle.flip(batch, axis=[3]))).numpy()


@pytest.mark.slow
def test_plsc_eval_writes_fairness_reports(tmp_path, capsys):
    paths = ensure_fairness_data(str(tmp_path / "data"), groups=("group_a", "group_c"), num_pairs=20,
                                 pair_identities=10, folder_identities=3, images_per_identity=3, seed=2)
    config = load_config(write_config(tmp_path, paths), [])
    paddle.seed(3)
    backbone = build_backbone(config.Model)
    weights = str(tmp_path / "model.pdparams")
    paddle.save({f"backbone.{key}": value for key, value in backbone.state_dict().items()}, weights)
    config = load_config(write_config(tmp_path, paths), [f"Global.pretrained_model={weights}"])

    results = evaluate_saved_model(config)

    assert set(results) == {"group_a"}  # LFWAcc still scores the DataLoader.Eval pair set
    printed = capsys.readouterr().out
    for title in ("GroupVerification", "InstanceFairness", "Recall"):
        assert title in printed
    eval_dir = tmp_path / "out" / "IResNet" / "eval"
    report = json.loads((eval_dir / "eval_report.json").read_text())
    assert set(report) == {"GroupVerification", "InstanceFairness", "Recall"}
    for name in report:
        assert os.path.getsize(eval_dir / f"{name}.png") > 1000
    table = report["GroupVerification"]
    rows = {row[0]: dict(zip(table["columns"], row)) for row in table["rows"]}
    assert set(rows) == {"group_a", "group_c"}
    for group, path in paths["bins"].items():
        images, issame = load_bin(path)
        accuracy, _, _ = kfold_accuracy(pair_distances(direct_embeddings(backbone, images)), issame, 5)
        assert rows[group]["accuracy"] == pytest.approx(accuracy)
        assert 0.0 <= rows[group]["masked accuracy"] <= 1.0
    assert rows["group_a"]["accuracy"] == pytest.approx(results["group_a"]["accuracy"])
    recall = {row[0]: row for row in report["Recall"]["rows"]}
    assert set(recall) == {"group_a", "group_c"} and recall["group_a"][1] == 6  # 3 identities x 2 probes
