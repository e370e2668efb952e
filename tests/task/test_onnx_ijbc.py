"""End to end: train a few steps -> plsc-export -> onnx_ijbc.py on a tiny synthetic IJB-C.

The pair scores are recomputed here independently (numpy least-squares alignment, a plain loop
for the template pooling) and must match the script's {target}.npy.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict

import cv2
import numpy as np
import onnx
import onnxruntime
import pytest

from plsc.cli import export_main, train_main
from plsc.data.align import ARCFACE_TEMPLATE_112
from plsc.data.synthetic.ijbc import write_synthetic_ijbc
from tests.task.tiny_quickstart import IMAGE_SIZE, REPO_ROOT, cli_args, tiny_overrides

SCRIPT = REPO_ROOT / "task" / "recognition" / "face" / "onnx_ijbc.py"
FARS = ("1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """plsc-train a few steps, then plsc-export -> the ONNX path."""
    work_dir = tmp_path_factory.mktemp("onnx_ijbc")
    overrides = tiny_overrides(work_dir, work_dir / "data", max_train_step=6)
    train_main(cli_args(overrides))
    export_main(cli_args([*overrides, f"Global.pretrained_model={work_dir}/output/IResNet/latest"]))
    path = work_dir / "output" / "IResNet.onnx"
    assert path.is_file()
    return path


@pytest.fixture(scope="module")
def ijbc(tmp_path_factory):
    # 10 subjects x 3 templates: 20 probes, 10 of them non-mated in each gallery, so TPIR@FPIR=0.1
    # is resolvable (0.1 x 10 = one false alarm allowed).
    return write_synthetic_ijbc(tmp_path_factory.mktemp("ijbc") / "IJBC", num_subjects=10, templates_per_subject=3,
                                medias_per_template=2, images_per_media=2, seed=3)


def run_script(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


# ---- the independent reference ------------------------------------------------------------------

def lstsq_similarity(src, dst):
    """[2, 3] similarity minimising ||M src - dst||^2: solve [x -y 1 0; y x 0 1] [a b tx ty]^T = dst."""
    rows = []
    for x, y in src:
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.asarray(dst).reshape(-1), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def reference_scores(model_path, root):
    meta = root / "meta"
    rows = [line.split() for line in (meta / "ijbc_face_tid_mid.txt").read_text().splitlines()]
    marks = {parts[0]: parts[1:] for parts in
             (line.split() for line in (meta / "ijbc_name_5pts_score.txt").read_text().splitlines())}
    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    template = ARCFACE_TEMPLATE_112 * IMAGE_SIZE / 112
    groups = defaultdict(lambda: defaultdict(list))
    for name, template_id, media in rows:
        values = np.array(marks[name], dtype=np.float64)
        matrix = lstsq_similarity(values[:10].reshape(5, 2), template)
        image = cv2.cvtColor(cv2.imread(str(root / "loose_crop" / name)), cv2.COLOR_BGR2RGB)
        face = cv2.warpAffine(image, matrix, (IMAGE_SIZE, IMAGE_SIZE), flags=cv2.INTER_LINEAR)
        batch = np.stack([face, face[:, ::-1]]).astype(np.float32)
        batch = ((batch - 127.5) / 127.5).transpose(0, 3, 1, 2)
        embeddings = session.run(None, {"data": np.ascontiguousarray(batch)})[0]
        groups[int(template_id)][int(media)].append((embeddings[0] + embeddings[1]) * values[10])
    templates = {}
    for template_id, medias in groups.items():
        total = sum(np.mean(features, axis=0) for features in medias.values())
        templates[template_id] = total / np.linalg.norm(total)
    pairs = np.loadtxt(meta / "ijbc_template_pair_label.txt", dtype=np.int64, ndmin=2)
    scores = np.array([templates[a] @ templates[b] for a, b, _ in pairs])
    return scores, pairs[:, 2], templates


def read_csv_subjects(path):
    lines = path.read_text().splitlines()[1:]
    return {int(line.split(",")[0]): int(line.split(",")[1]) for line in lines}


def reference_rank1(templates, gallery_csvs, probe_csv):
    """Share of mated probes whose best-scoring gallery template (over all `gallery_csvs`) is their subject's."""
    gallery = {template: subject for path in gallery_csvs for template, subject in read_csv_subjects(path).items()}
    probes = read_csv_subjects(probe_csv)
    hits = [gallery[max(gallery, key=lambda g: templates[g] @ templates[p])] == subject
            for p, subject in probes.items() if subject in gallery.values()]
    return float(np.mean(hits))


# ---- the tests --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_onnx_ijbc_end_to_end_and_feature_cache(exported, ijbc, tmp_path):
    result = run_script("--model-root", exported, "--image-path", ijbc, "--target", "IJBC",
                        "--result-dir", tmp_path, "--job", "tiny", "--batch-size", 16, "--num-workers", 2)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    result_dir = tmp_path / "tiny"

    scores = np.load(result_dir / "IJBC.npy")
    expected, labels, templates = reference_scores(exported, ijbc)
    np.testing.assert_allclose(scores, expected, atol=2e-4)

    # The 1:1 table: PLSC's columns, the job's row, TAR x 100 at the ROC point nearest in FAR (insightface).
    assert "TAR (%) at FAR [insightface:" in out
    header = next(line for line in out.splitlines() if "Methods" in line)
    assert [cell.strip() for cell in header.strip("|").split("|")] == ["Methods", *FARS]
    row = next(line for line in out.splitlines() if line.startswith("| tiny"))
    cells = [cell.strip() for cell in row.strip("|").split("|")][1:]
    impostor, genuine = scores[labels == 0], scores[labels == 1]
    # Every threshold at a distinct score; the one whose FAR is nearest to 0.1 (ties: larger FAR, then TAR).
    points = sorted(((abs(np.mean(impostor >= t) - 0.1), -np.mean(impostor >= t), -np.mean(genuine >= t))
                     for t in np.unique(scores)))
    assert float(cells[-1]) == pytest.approx(-100 * points[0][2], abs=0.01)

    # The 1:N table: one joined gallery, rank-1 over G1 + G2.
    assert "1:N identification, mixed probes (%) [insightface:" in out
    assert re.search(r"\| G1\+G2 ", out), out
    results = json.loads((result_dir / "results.json").read_text())
    assert results["tar_convention"] == "insightface"
    figures = results["one_to_n"]
    assert figures["convention"] == "insightface"
    meta = ijbc / "meta"
    galleries = [meta / "ijbc_1N_gallery_G1.csv", meta / "ijbc_1N_gallery_G2.csv"]
    assert figures["cmc"]["1"] == pytest.approx(reference_rank1(templates, galleries, meta / "ijbc_1N_probe_mixed.csv"))
    assert (result_dir / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # plsc's strict conventions on the cached features: FAR <= target, galleries searched apart.
    strict = run_script("--model-root", exported, "--image-path", ijbc, "--result-dir", tmp_path, "--job", "tiny",
                        "--num-workers", 0, "--tar-convention", "at_most", "--one-to-n-convention", "open_set")
    assert strict.returncode == 0, strict.stderr[-3000:]
    assert "[at_most:" in strict.stdout and "[open_set:" in strict.stdout
    row = next(line for line in strict.stdout.splitlines() if line.startswith("| tiny"))
    cells = [cell.strip() for cell in row.strip("|").split("|")][1:]
    allowed = int(np.floor(0.1 * impostor.size))
    threshold = np.sort(impostor)[::-1][allowed]  # accept above it: at most `allowed` impostors
    assert float(cells[-1]) == pytest.approx(100 * np.mean(genuine > threshold), abs=0.01)
    assert cells[0] == "nan"  # 1e-6 of a few hundred impostor pairs cannot be resolved
    assert re.search(r"\| G1 .*\n\| G2 .*\n\| mean ", strict.stdout), strict.stdout
    figures = json.loads((result_dir / "results.json").read_text())["one_to_n"]
    for gallery in ("G1", "G2"):
        rank1 = reference_rank1(templates, [meta / f"ijbc_1N_gallery_{gallery}.csv"], meta / "ijbc_1N_probe_mixed.csv")
        assert figures[gallery]["cmc"]["1"] == pytest.approx(rank1)
        assert figures[gallery]["tpir"]["0.1"] is not None

    # A re-run reuses the cached features (file untouched) and gives the same scores;
    # a protocol switch (no flip) is computed from the same cache.
    features_mtime = (result_dir / "features.npz").stat().st_mtime_ns
    again = run_script("--model-root", exported, "--image-path", ijbc, "--result-dir", tmp_path,
                       "--job", "tiny", "--num-workers", 0)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "using cached features" in again.stdout
    assert (result_dir / "features.npz").stat().st_mtime_ns == features_mtime
    np.testing.assert_array_equal(np.load(result_dir / "IJBC.npy"), scores)
    no_flip = run_script("--model-root", exported, "--image-path", ijbc, "--result-dir", tmp_path,
                         "--job", "tiny", "--no-flip-test")
    assert no_flip.returncode == 0 and "using cached features" in no_flip.stdout
    assert not np.allclose(np.load(result_dir / "IJBC.npy"), scores)


@pytest.mark.slow
def test_stale_cache_is_recomputed(exported, ijbc, tmp_path):
    first = run_script("--model-root", exported, "--image-path", ijbc, "--result-dir", tmp_path, "--job", "j",
                       "--num-workers", 0)
    assert first.returncode == 0, first.stderr[-3000:]
    # Another model at the same path, with the old file's size and time stamp: the cache key is the
    # model's content, so its features are recomputed.
    model = tmp_path / "model.onnx"
    shutil.copy(exported, model)
    third = run_script("--model-root", model, "--image-path", ijbc, "--result-dir", tmp_path, "--job", "k",
                       "--num-workers", 0)
    assert third.returncode == 0, third.stderr[-3000:]
    stat = model.stat()
    graph = onnx.load(str(model))
    graph.metadata_props.add(key="note", value="another model")  # other bytes, as retrained weights would be
    onnx.save(graph, str(model))
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = run_script("--model-root", model, "--image-path", ijbc, "--result-dir", tmp_path,
                        "--job", "k", "--num-workers", 0)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "recomputing" in second.stdout and "using cached" not in second.stdout


@pytest.mark.slow
def test_user_errors_exit_1_with_one_line(exported, ijbc, tmp_path):
    broken = tmp_path / "IJBC"
    shutil.copytree(ijbc, broken)
    (broken / "loose_crop" / "3.jpg").write_bytes(b"not an image")
    result = run_script("--model-root", exported, "--image-path", broken, "--result-dir", tmp_path,
                        "--num-workers", 2)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"onnx_ijbc.py: error: {broken / 'loose_crop' / '3.jpg'}: cannot read image", result.stderr[-2000:]

    (broken / "meta" / "ijbc_template_pair_label.txt").unlink()
    result = run_script("--model-root", exported, "--image-path", broken, "--result-dir", tmp_path)
    assert result.returncode == 1 and "ijbc_template_pair_label.txt" in result.stderr.strip().splitlines()[-1]

    shutil.copytree(ijbc, tmp_path / "no1n")
    (tmp_path / "no1n" / "meta" / "ijbc_1N_gallery_G2.csv").unlink()
    result = run_script("--model-root", exported, "--image-path", tmp_path / "no1n", "--result-dir", tmp_path)
    assert result.returncode == 1
    assert "missing 1:N protocol file" in result.stderr and "ijbc_1N_gallery_G2.csv" in result.stderr
    result = run_script("--model-root", exported, "--image-path", tmp_path / "no1n", "--result-dir", tmp_path,
                        "--skip-1n", "--num-workers", 0)
    assert result.returncode == 0 and "1:N" not in result.stdout

    result = run_script("--model-root", tmp_path / "none.onnx", "--image-path", ijbc, "--result-dir", tmp_path)
    assert result.returncode == 1 and "none.onnx: ONNX model not found" in result.stderr


@pytest.mark.slow
def test_several_models_share_one_roc_picture(exported, ijbc, tmp_path):
    """Two models (the same graph under two names): each gets its own results, and one PNG holds both
    ROC curves; the curves' data are those of each model's own pair scores."""
    import matplotlib

    matplotlib.use("Agg")
    second = tmp_path / "second.onnx"
    shutil.copy(exported, second)
    result = run_script("--model-root", exported, second, "--image-path", ijbc, "--result-dir", tmp_path,
                        "--num-workers", 0, "--skip-1n")
    assert result.returncode == 0, result.stderr[-3000:]
    picture = tmp_path / "roc_IJBC.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert re.search(r"\| IResNet .*\n", result.stdout) and re.search(r"\| second .*\n", result.stdout)
    first_scores = np.load(tmp_path / "IResNet" / "IJBC.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "second" / "IJBC.npy"), first_scores)
    refused = run_script("--model-root", exported, second, "--image-path", ijbc, "--job", "x")
    assert refused.returncode == 1 and "--job names one model's results" in refused.stderr
