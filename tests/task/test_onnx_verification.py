"""onnx_verification.py on a hand-built ONNX model: its figures equal those of embeddings computed
directly (OpenCV + numpy matrix product), for flags and for a config's Metric.Eval."""
import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from plsc.data.synthetic.fairness import ensure_fairness_data
from plsc.data.verification_bin import load_bin
from plsc.metrics.fairness import instance_error_rates
from plsc.metrics.recall import recall_at_k, split_gallery_probes, true_match_ranks
from plsc.metrics.verification import kfold_accuracy, pair_distances

SCRIPT = Path(__file__).resolve().parents[2] / "task" / "recognition" / "face" / "onnx_verification.py"
SIZE = 16
DIM = 8


def load_script():
    spec = importlib.util.spec_from_file_location("onnx_verification", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_linear_model(path, weights):
    """ONNX graph: images [N, 3, SIZE, SIZE] -> Flatten -> MatMul(weights) -> embeddings [N, DIM]."""
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["data"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "w"], ["emb"])],
        "linear_face", [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["N", DIM])],
        [helper.make_tensor("w", TensorProto.FLOAT, weights.shape, weights.ravel().tolist())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def direct_embeddings(encoded_images, weights):
    """Decode, resize, (x - 127.5) / 127.5, CHW, times the weights; plus the same of the mirror image."""
    embeddings = []
    for data in encoded_images:
        rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        rgb = cv2.resize(rgb, (SIZE, SIZE), interpolation=cv2.INTER_AREA).astype(np.float64)
        features = [((view - 127.5) / 127.5).transpose(2, 0, 1).ravel() @ weights for view in (rgb, rgb[:, ::-1])]
        embeddings.append(features[0] + features[1])
    return np.array(embeddings)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx_verification")
    paths = ensure_fairness_data(str(root / "data"), groups=("group_b", "group_d"), num_pairs=20, pair_identities=10,
                                 folder_identities=4, images_per_identity=3, seed=4)
    weights = np.random.default_rng(0).normal(size=(3 * SIZE * SIZE, DIM)).astype(np.float32)
    write_linear_model(root / "linear.onnx", weights)
    return root, paths, weights


def folder_images(paths):
    lines = [line.split("\t") for line in Path(paths["label_file"]).read_text().splitlines()]
    images = [(Path(paths["folder"]) / path).read_bytes() for path, _ in lines]
    return images, np.array([int(label) for _, label in lines])


def check_report(report, paths, weights, target_far):
    table = report["GroupVerification"]
    rows = {row[0]: dict(zip(table["columns"], row)) for row in table["rows"]}
    for group, path in paths["bins"].items():
        images, issame = load_bin(path)
        accuracy, std, _ = kfold_accuracy(pair_distances(direct_embeddings(images, weights)), issame)
        assert rows[group]["accuracy"] == pytest.approx(accuracy)
        assert rows[group]["std"] == pytest.approx(std)
    images, labels = folder_images(paths)
    embeddings = direct_embeddings(images, weights)
    rates = instance_error_rates(embeddings, labels, target_far)
    assert report["InstanceFairness"]["summary"]["threshold (cosine)"] == pytest.approx(rates["threshold"], abs=1e-5)
    assert report["InstanceFairness"]["summary"]["FNMR"] == pytest.approx(rates["fnmr"])
    gallery, probes = split_gallery_probes(labels)
    ranks = true_match_ranks(embeddings[gallery], labels[gallery], embeddings[probes], labels[probes])
    assert report["Recall"]["summary"]["recall@1"] == pytest.approx(recall_at_k(ranks, [1])[1])


def test_flags_report_matches_direct_embeddings(setup, capsys):
    root, paths, weights = setup
    out = root / "flags"
    argv = ["--model-root", str(root / "linear.onnx"), "--folder", paths["folder"], "--target-far", "0.05",
            "--masked", "--batch-size", "7", "--result-dir", str(out)]
    for group, path in paths["bins"].items():
        argv += ["--group", f"{group}={path}"]
    assert load_script().main(argv) == 0
    printed = capsys.readouterr().out
    assert "GroupVerification" in printed and "masked accuracy" in printed and "recall@5" in printed
    report = json.loads((out / "eval_report.json").read_text())
    check_report(report, paths, weights, 0.05)
    assert (out / "GroupVerification.png").stat().st_size > 1000
    assert set(report["GroupVerification"]["chart"]["series"]) == {"unmasked", "masked"}


def test_config_metrics_give_the_same_report(setup):
    root, paths, weights = setup
    folder = {"image_root": paths["folder"], "cls_label_path": paths["label_file"], "group_path": paths["group_file"]}
    config = {"Global": {"epochs": 1}, "Model": {"name": "IResNet", "class_num": 2},
              "Loss": {"Train": [{"MarginLoss": None}]}, "LRScheduler": {"name": "Poly", "learning_rate": 0.1},
              "Optimizer": {"name": "Momentum"},
              "Metric": {"Eval": [{"LFWAcc": None}, {"GroupVerification": {"groups": paths["bins"]}},
                                  {"InstanceFairness": {**folder, "target_far": 0.02}}, {"Recall": folder}]}}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    out = root / "config"
    assert load_script().main(["--model-root", str(root / "linear.onnx"), "-c", str(root / "config.yaml"),
                               "--result-dir", str(out)]) == 0
    check_report(json.loads((out / "eval_report.json").read_text()), paths, weights, 0.02)


def test_user_errors_are_one_line_and_exit_1(setup, capsys):
    root, paths, _ = setup
    script = load_script()
    assert script.main(["--model-root", str(root / "missing.onnx"), "--group", f"a={paths['bins']['group_b']}"]) == 1
    assert "missing.onnx" in capsys.readouterr().err
    assert script.main(["--model-root", str(root / "linear.onnx"), "--group", "no_equals_sign"]) == 1
    assert "NAME=PATH" in capsys.readouterr().err
