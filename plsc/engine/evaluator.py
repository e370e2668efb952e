"""Verification during training (and by `plsc-eval`): embed each pair set, score it with the metrics."""
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
        self.metrics = metrics
        self.loaders = [build_loader(dataset, {"name": "BatchSampler", "batch_size": batch_size},
                                     {"num_workers": num_workers}) for dataset in datasets]
        self.best = {}

    def evaluate(self, backbone):
        """{set name: {figure: value, 'best': best metric so far}}, identical on every rank.

        Rank 0 evaluates (all ranks hold the same backbone) and broadcasts the result.
        """
        results = None
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
        results = distributed.broadcast_object(results)
        for name, figures in results.items():
            self.best[name] = max(self.best.get(name, -np.inf), figures["metric"])
            figures["best"] = self.best[name]
        return results

    def state_dict(self):
        return dict(self.best)

    def set_state_dict(self, state):
        self.best = dict(state)
