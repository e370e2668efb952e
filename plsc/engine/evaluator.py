"""Verification during training (and by `plsc-eval`): embed each pair set, score it with the metrics."""
import logging

import numpy as np
import paddle

from plsc import distributed
from plsc.data import build_loader


def embed_dataset(backbone, loader, flip_test):
    """Embeddings [N, D] of a loader's images in order; with flip_test, emb(x) + emb(mirror(x))."""
    backbone.eval()
    chunks = []
    with paddle.no_grad():
        for images, _ in loader:
            embeddings = backbone(images)
            if flip_test:
                embeddings = embeddings + backbone(paddle.flip(images, axis=[3]))
            chunks.append(embeddings.astype("float32").numpy())
    backbone.train()
    return np.concatenate(chunks, axis=0)


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
        """{set name: {figure: value, 'best': best metric so far}}, identical on every rank.

        Rank 0 evaluates (all ranks hold the same backbone) and broadcasts the result. The reports of
        the set-owning metrics land in `self.reports` ({name: report}, see plsc/metrics/report.py).
        """
        results = reports = None
        if distributed.is_main_process():
            results = {}
            for dataset, loader in zip(self.datasets, self.loaders):
                embeddings = {}
                for metric in self.metrics:
                    flip = getattr(metric, "flip_test", False)
                    if flip not in embeddings:
                        embeddings[flip] = embed_dataset(backbone, loader, flip)
                    figures = metric(embeddings[flip], dataset.issame)
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
