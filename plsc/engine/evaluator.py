"""Verification during training (and by `plsc-eval`): embed each pair set, score it with the metrics.

A backbone that declares `side_inputs = ("is_masked",)` (a class attribute) is called as
`backbone(images, is_masked=flags)` with each image's flag (int64 [N]); any other backbone gets the
images alone. Each set's results name its kind (holistic / masked / per_image); a per_image set also
scores the pairs with a masked face and those without, so both figures sit on one line.
"""
import inspect
import logging

import numpy as np
import paddle

from plsc import distributed
from plsc.data import build_loader
from plsc.data.loader import batch_field

# Extra figures of a per_image set: accuracy over the pairs with at least one masked image, over the
# pairs with none, and how many pairs each holds.
PER_IMAGE_KEYS = ("masked_pairs_accuracy", "unmasked_pairs_accuracy", "masked_pairs", "unmasked_pairs")


def takes_masked_flag(backbone):
    """True if the backbone (or the layer a DataParallel wrapper holds) declares the is_masked side input."""
    layer = getattr(backbone, "_layers", backbone)
    return "is_masked" in getattr(layer, "side_inputs", ())


def takes_image_embeddings(metric):
    """True for pair metrics that report insightface's xnorm from the single-image embeddings."""
    return "image_embeddings" in inspect.signature(metric.__call__).parameters


def embed_dataset(backbone, loader, flip_test, singles=None):
    """Embeddings [N, D] of a loader's images in order; with flip_test, emb(x) + emb(mirror(x)).

    Batches are [images, labels, is_masked] (or [images, labels]); the flag goes to backbones that take
    it, the same flag for an image and its mirror. `singles`, a list, receives every single-image
    embedding (image and mirror) for insightface's xnorm, the mean norm of those.
    """
    with_flag = takes_masked_flag(backbone)
    backbone.eval()
    chunks = []
    with paddle.no_grad():
        for batch in loader:
            images, is_masked = batch_field(batch, "images"), batch_field(batch, "is_masked")
            side = {"is_masked": is_masked} if with_flag and is_masked is not None else {}
            embeddings = backbone(images, **side).astype("float32")
            if singles is not None:
                singles.append(embeddings.numpy())
            if flip_test:
                mirrored = backbone(paddle.flip(images, axis=[3]), **side).astype("float32")
                if singles is not None:
                    singles.append(mirrored.numpy())
                embeddings = embeddings + mirrored
            chunks.append(embeddings.numpy())
    backbone.train()
    return np.concatenate(chunks, axis=0)


def pair_subset_figures(metric, embeddings, issame, pair_has_mask):
    """A per_image set's extra figures: the metric's accuracy over the pairs with / without a masked face.

    embeddings [2P, D] in pair order, issame [P], pair_has_mask [P] bool. A subset of fewer than two
    pairs cannot be cross-validated: its accuracy is nan.
    """
    figures = {}
    for prefix, chosen in (("masked", pair_has_mask), ("unmasked", ~pair_has_mask)):
        pairs = np.flatnonzero(chosen)
        figures[f"{prefix}_pairs"] = int(pairs.size)
        if pairs.size < 2:
            figures[f"{prefix}_pairs_accuracy"] = float("nan")
            continue
        rows = np.stack([2 * pairs, 2 * pairs + 1], axis=1).reshape(-1)
        figures[f"{prefix}_pairs_accuracy"] = metric(embeddings[rows], np.asarray(issame)[pairs])["accuracy"]
    return figures


def format_figures(name, figures):
    """One log line of a set's results: kind, accuracy, best, threshold, xnorm (+ the pair split of per_image)."""
    line = f"{name} ({figures.get('kind', 'holistic')}): accuracy {figures['accuracy']:.5f} +- {figures['std']:.5f}"
    if "best" in figures:
        line += f", best {figures['best']:.5f}"
    line += f", threshold {figures['threshold']:.2f}, xnorm {figures['xnorm']:.3f}"
    if figures.get("masked_pairs") and figures.get("unmasked_pairs"):  # both kinds present: one figure each
        line += (f" | pairs with a masked face {figures['masked_pairs_accuracy']:.5f} ({figures['masked_pairs']}), "
                 f"without {figures['unmasked_pairs_accuracy']:.5f} ({figures['unmasked_pairs']})")
    return line


class VerificationEvaluator:
    """Runs every metric on every verification set; remembers the best figure of each set."""

    def __init__(self, datasets, metrics, batch_size=128, num_workers=0):
        self.datasets = datasets
        # Metrics with `evaluate_sets` bring their own images (group fairness, masked pairs, 1:N) and
        # return a report; the others score every pair set of DataLoader.Eval.
        self.set_metrics = report_names([metric for metric in metrics if hasattr(metric, "evaluate_sets")])
        self.metrics = [metric for metric in metrics if not hasattr(metric, "evaluate_sets")]
        self.batch_size, self.num_workers = batch_size, num_workers
        self.loaders = [self._loader(dataset) for dataset in datasets]
        self.best = {}
        self.reports = {}

    def _loader(self, dataset):
        return build_loader(dataset, {"name": "BatchSampler", "batch_size": self.batch_size},
                            {"num_workers": self.num_workers})

    def evaluate(self, backbone):
        """{set name: {figure: value, 'kind': 'holistic' | 'masked' | 'per_image', 'best': best metric so far}},
        identical on every rank. A per_image set adds PER_IMAGE_KEYS; `format_figures` writes one line.

        Rank 0 evaluates (all ranks hold the same backbone) and broadcasts the result. The reports of
        the set-owning metrics land in `self.reports` ({name: report}, see plsc/metrics/report.py).
        """
        results = reports = None
        if distributed.is_main_process():
            results = {}
            for dataset, loader in zip(self.datasets, self.loaders):
                embeddings, singles = {}, {}
                kind = getattr(dataset, "masked_kind", "holistic")
                for metric in self.metrics:
                    flip = getattr(metric, "flip_test", False)
                    if flip not in embeddings:
                        singles[flip] = []
                        embeddings[flip] = embed_dataset(backbone, loader, flip, singles[flip])
                    # Metrics that report xnorm take the single-image embeddings (insightface's figure).
                    extra = ({"image_embeddings": np.concatenate(singles[flip])} if takes_image_embeddings(metric)
                             else {})
                    figures = {"kind": kind, **metric(embeddings[flip], dataset.issame, **extra)}
                    if kind == "per_image":
                        pair_has_mask = (dataset.image_masked[0::2] + dataset.image_masked[1::2]) > 0
                        figures.update(pair_subset_figures(metric, embeddings[flip], dataset.issame, pair_has_mask))
                    results.setdefault(dataset.name, {}).update(figures)
            reports = self._run_set_metrics(backbone)
        results, self.reports = distributed.broadcast_object((results, reports))
        for name, figures in results.items():
            self.best[name] = max(self.best.get(name, -np.inf), figures["metric"])
            figures["best"] = self.best[name]
        return results

    def _run_set_metrics(self, backbone):
        """{name: report} of the set-owning metrics; their images get the first pair set's transform."""
        from plsc.metrics.report import format_report

        def embed(dataset, flip_test):
            return embed_dataset(backbone, self._loader(dataset), flip_test)

        reports = {name: metric.evaluate_sets(embed, self.datasets[0].transform)
                   for name, metric in self.set_metrics.items()}
        logger = logging.getLogger("plsc")
        if logger.handlers:  # a training run set up plsc's log; plsc-eval prints the tables itself
            for report in reports.values():
                logger.info("[Eval] " + format_report(report))
        return reports

    def state_dict(self):
        return dict(self.best)

    def set_state_dict(self, state):
        self.best = dict(state)


def report_names(metrics):
    """{report name: metric}: the class name, numbered from the second metric of the same class on."""
    named = {}
    for metric in metrics:
        name = base = type(metric).__name__
        count = 1
        while name in named:
            count += 1
            name = f"{base}_{count}"
        named[name] = metric
    return named
