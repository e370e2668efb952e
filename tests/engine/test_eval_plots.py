"""plsc-eval's verification plots: ROC and score histogram PNGs whose plotted data are the pair scores."""
import numpy as np
import paddle
import pytest

from plsc.cli import eval_main
from plsc.config import load_config
from plsc.data.synthetic import ensure_quickstart_data
from plsc.engine.build import build_backbone, build_evaluator
from plsc.engine.evaluate import histogram_figure, roc_figure
from plsc.engine.evaluator import embed_dataset
from plsc.serialization import save_state
from tests.task.tiny_quickstart import QUICKSTART, cli_args, tiny_overrides

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def independent_roc(scores, issame):
    """Every (FAR, TAR) of `score >= t` over the distinct scores t, plus (0, 0): a set of points."""
    genuine, impostor = scores[issame], scores[~issame]
    points = {(0.0, 0.0)}
    for threshold in np.unique(scores):
        points.add((float(np.mean(impostor >= threshold)), float(np.mean(genuine >= threshold))))
    return points


def random_scores(seed=0, num_pairs=300):
    rng = np.random.default_rng(seed)
    issame = rng.random(num_pairs) < 0.5
    scores = np.where(issame, rng.normal(0.6, 0.15, num_pairs), rng.normal(0.1, 0.15, num_pairs))
    return scores, issame


def test_roc_line_is_the_roc_of_the_scores():
    import matplotlib.pyplot as plt

    scores, issame = random_scores()
    figure = roc_figure(scores, issame, "set")
    line = figure.axes[0].get_lines()[0]
    plotted = set(zip(line.get_xdata().tolist(), line.get_ydata().tolist()))
    assert figure.axes[0].get_xscale() == "log"
    truth = independent_roc(scores, issame)
    assert all(any(abs(far - f) < 1e-12 and abs(tar - t) < 1e-12 for f, t in truth) for far, tar in plotted)
    assert (1.0, 1.0) in plotted and min(far for far, _ in plotted) == pytest.approx(1 / np.sum(~issame))
    plt.close(figure)


def test_histogram_bars_count_the_scores():
    import matplotlib.pyplot as plt

    scores, issame = random_scores(1)
    figure = histogram_figure(scores, issame, 0.35, "set", bins=20)
    axes = figure.axes[0]
    patches = axes.patches
    assert len(patches) == 40
    edges = np.array([patch.get_x() for patch in patches[:20]] + [patches[19].get_x() + patches[19].get_width()])
    for kind, chosen in ((slice(0, 20), issame), (slice(20, 40), ~issame)):
        heights = [patch.get_height() for patch in patches[kind]]
        assert heights == np.histogram(scores[chosen], edges)[0].tolist()
    assert axes.get_lines()[0].get_xdata()[0] == 0.35
    plt.close(figure)


def test_plsc_eval_writes_the_plots(tmp_path, capsys):
    overrides = tiny_overrides(tmp_path, tmp_path / "data")
    config = load_config(str(QUICKSTART), overrides)
    ensure_quickstart_data(**dict(config.SyntheticData))
    paddle.seed(0)
    backbone = build_backbone(config.Model)
    weights = tmp_path / "weights.pdparams"
    save_state({f"backbone.{name}": value.numpy() for name, value in backbone.state_dict().items()}, weights)
    eval_main(cli_args([*overrides, f"Global.pretrained_model={weights}"]))
    printed = capsys.readouterr().out
    eval_dir = tmp_path / "output" / "IResNet" / "eval"
    for name in ("verification_roc.png", "verification_scores.png"):
        assert (eval_dir / name).read_bytes()[:8] == PNG_SIGNATURE
        assert f"plot: {eval_dir / name}" in printed
    table = np.loadtxt(eval_dir / "verification_pair_scores.tsv", skiprows=1)
    # The same scores, computed here from the evaluator's embeddings of the loaded backbone.
    evaluator = build_evaluator(config)
    dataset = evaluator.datasets[0]
    embeddings = embed_dataset(backbone, evaluator.loaders[0], flip_test=True)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    expected = np.einsum("pd,pd->p", unit[0::2], unit[1::2])
    np.testing.assert_allclose(table[:, 0], expected, atol=2e-6)
    assert table[:, 1].astype(bool).tolist() == dataset.issame.tolist()
