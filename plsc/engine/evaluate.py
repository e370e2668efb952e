"""`plsc-eval`: the config's verification sets on a saved backbone, without training.

Beside its report (`{output_dir}/{Model.name}/eval/`) it writes, per verification set, the ROC
(`<set>_roc.png`, TAR against FAR on a log axis), the genuine / impostor cosine-score histogram
with the chosen threshold (`<set>_scores.png`) and the scores themselves (`<set>_pair_scores.tsv`).
"""
import os

import numpy as np

from plsc import distributed
from plsc.checkpoint import load_backbone_state, load_weights
from plsc.engine.build import build_backbone, build_evaluator, select_device
from plsc.engine.evaluator import format_figures, takes_image_embeddings
from plsc.errors import PlscError


def evaluate_saved_model(config):
    """Load `Global.pretrained_model` (or `Global.checkpoint`) into the backbone and score it.

    Prints one line per verification set (its kind, and for a per_image set the accuracy over pairs
    with and without a masked face); returns {set name: {figure: number}}.
    """
    distributed.init()
    select_device(config.Global.device)
    path = config.Global.get("pretrained_model") or config.Global.get("checkpoint")
    if not path:
        raise PlscError("plsc-eval needs -o Global.pretrained_model=PATH (a .pdparams file or checkpoint prefix)")
    state, path = load_weights(path)
    backbone = build_backbone(config.Model)
    load_backbone_state(backbone, state, path)
    evaluator = build_evaluator(config)
    if evaluator is None:
        raise PlscError("the config has no DataLoader.Eval dataset or no Metric.Eval entry to evaluate")
    recorded = []
    evaluator.metrics = [PairRecordingMetric(metric, recorded) for metric in evaluator.metrics]
    results = evaluator.evaluate(backbone)
    if distributed.is_main_process():
        out_dir = os.path.join(config.Global.output_dir, config.Model.name, "eval")
        for dataset in evaluator.datasets:
            # The metric's first call on a set gets the set's own issame array (later calls score subsets).
            embeddings = next((emb for emb, issame in recorded if issame is dataset.issame), None)
            num_genuine = int(np.sum(dataset.issame))
            if (embeddings is None or "threshold" not in results.get(dataset.name, {})
                    or num_genuine in (0, np.size(dataset.issame))):
                continue  # no threshold-based metric ran, or an ROC is undefined (one kind of pair only)
            scores = pair_cosine_scores(embeddings)
            threshold = squared_distance_to_cosine(results[dataset.name]["threshold"])
            for path in write_verification_plots(dataset.name, scores, dataset.issame, threshold, out_dir):
                print(f"plot: {path}")
    if evaluator.reports and distributed.is_main_process():
        from plsc.metrics.report import format_report, write_reports

        paths = write_reports(evaluator.reports, os.path.join(config.Global.output_dir, config.Model.name, "eval"))
        for report in evaluator.reports.values():
            print(format_report(report) + "\n")
        print(f"report: {paths['json']}" + "".join(f"\nchart: {chart}" for chart in paths["charts"]))
    if distributed.is_main_process():
        # Each set with its kind, and a per_image set's masked / unmasked pairs, side by side.
        for name, figures in results.items():
            print(format_figures(name, {key: value for key, value in figures.items() if key != "best"}))
    for figures in results.values():
        figures.pop("best", None)
        figures.pop("kind", None)  # the returned figures are all numbers
    return results


class PairRecordingMetric:
    """A pair metric that also keeps (embeddings [2P, D], issame [P]) of every call, for the plots."""

    def __init__(self, metric, calls):
        self.metric, self.calls = metric, calls
        self.flip_test = getattr(metric, "flip_test", False)

    def __call__(self, embeddings, issame, image_embeddings=None):
        self.calls.append((embeddings, issame))
        extra = {"image_embeddings": image_embeddings} if takes_image_embeddings(self.metric) else {}
        return self.metric(embeddings, issame, **extra)


def pair_cosine_scores(embeddings):
    """embeddings [2P, D] in pair order -> cosine similarity of each pair [P] (higher = more alike)."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    return np.sum(unit[0::2] * unit[1::2], axis=1)


def squared_distance_to_cosine(threshold):
    """The LFW protocol's threshold on squared distance of unit vectors -> the cosine one (d = 2 - 2 cos)."""
    return 1.0 - float(threshold) / 2.0


def roc_figure(scores, issame, title):
    """Matplotlib figure: TAR against FAR (log axis) of `score >= threshold`; FAR = 0 points are left out."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    from plsc.metrics.roc import roc_curve

    far, tar, _ = roc_curve(scores, issame)
    shown = far > 0
    figure, axes = plt.subplots(figsize=(5.0, 4.0))
    axes.plot(far[shown], tar[shown], drawstyle="steps-post", label=title)
    axes.set_xscale("log")
    axes.set_xlabel("false accept rate (FAR)")
    axes.set_ylabel("true accept rate (TAR)")
    axes.set_ylim(0.0, 1.01)
    axes.grid(True, which="both", alpha=0.3)
    axes.set_title(f"{title}: ROC, {int(np.sum(issame))} genuine / {int(np.size(issame) - np.sum(issame))} "
                   f"impostor pairs", fontsize=9)
    figure.tight_layout()
    return figure


def histogram_figure(scores, issame, threshold, title, bins=50):
    """Matplotlib figure: histograms of genuine and impostor cosine scores and the threshold line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores, issame = np.asarray(scores, dtype=np.float64), np.asarray(issame, dtype=bool)
    edges = np.linspace(min(scores.min(), threshold), max(scores.max(), threshold), bins + 1)
    figure, axes = plt.subplots(figsize=(5.0, 4.0))
    axes.hist(scores[issame], bins=edges, alpha=0.6, color="tab:green", label=f"genuine ({int(issame.sum())})")
    axes.hist(scores[~issame], bins=edges, alpha=0.6, color="tab:red", label=f"impostor ({int((~issame).sum())})")
    axes.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    axes.set_xlabel("cosine similarity")
    axes.set_ylabel("pairs")
    axes.legend(fontsize=8)
    axes.set_title(f"{title}: genuine vs impostor scores", fontsize=9)
    figure.tight_layout()
    return figure


def write_verification_plots(name, scores, issame, threshold, out_dir):
    """`<name>_roc.png`, `<name>_scores.png` and `<name>_pair_scores.tsv` in out_dir; returns their paths."""
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f"{name}_{suffix}") for suffix in ("roc.png", "scores.png", "pair_scores.tsv")]
    for figure, path in ((roc_figure(scores, issame, name), paths[0]),
                         (histogram_figure(scores, issame, threshold, name), paths[1])):
        figure.savefig(path, dpi=120)
        plt.close(figure)
    lines = "".join(f"{score:.6f}\t{int(same)}\n" for score, same in zip(scores, np.asarray(issame, dtype=bool)))
    with open(paths[2], "w", encoding="utf-8") as handle:
        handle.write("score\tissame\n" + lines)
    return paths
