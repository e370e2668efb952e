"""1:N identification: Recall@k of probes against a gallery of one image per identity, per group.

From an identity folder, each identity's first listed image is its gallery entry and the rest are
probes. A probe's rank is 1 + the number of gallery identities scoring strictly higher (cosine)
than its own; Recall@k is the fraction of probes with rank <= k.
"""
import numpy as np

from plsc.errors import PlscError
from plsc.metrics.fairness import open_identity_folder, unit_rows
from plsc.registry import METRICS

# Probe rows scored per block: [rows, identities] float32 stays small for any probe count.
PROBE_BLOCK_ROWS = 4096


def split_gallery_probes(labels):
    """labels [N] -> (gallery indices [C], one per identity: its first image; probe indices [P], the rest)."""
    labels = np.asarray(labels)
    _, first = np.unique(labels, return_index=True)
    is_gallery = np.zeros(labels.size, dtype=bool)
    is_gallery[first] = True
    return np.sort(first), np.flatnonzero(~is_gallery)


def true_match_ranks(gallery, gallery_labels, probes, probe_labels, block_rows=PROBE_BLOCK_ROWS):
    """Rank (1 = best) of each probe's own identity among the gallery: int64 [P].

    gallery [C, D] with distinct gallery_labels [C]; probes [P, D] whose labels all appear in the gallery.
    """
    gallery_labels = np.asarray(gallery_labels)
    order = np.argsort(gallery_labels)
    position = np.searchsorted(gallery_labels[order], probe_labels)
    position = np.minimum(position, gallery_labels.size - 1)
    column = order[position]
    if not np.array_equal(gallery_labels[column], probe_labels):
        raise PlscError("some probe identities have no gallery image")
    gallery_unit, probe_unit = unit_rows(gallery), unit_rows(probes)
    ranks = np.empty(len(probe_unit), dtype=np.int64)
    for start in range(0, len(probe_unit), block_rows):
        scores = probe_unit[start:start + block_rows] @ gallery_unit.T
        own = scores[np.arange(scores.shape[0]), column[start:start + block_rows]]
        ranks[start:start + block_rows] = 1 + np.count_nonzero(scores > own[:, None], axis=1)
    return ranks


def recall_at_k(ranks, ks):
    """{k: fraction of ranks <= k} (NaN without probes)."""
    ranks = np.asarray(ranks)
    return {int(k): float(np.mean(ranks <= k)) if ranks.size else float("nan") for k in ks}


@METRICS.register("Recall")
class Recall:
    """Recall@k (1:N identification) of an identity folder, overall and per group."""

    def __init__(self, image_root=None, cls_label_path=None, group_path=None, ks=(1, 5), flip_test=True):
        self.dataset, self.group_of = open_identity_folder(image_root, cls_label_path, group_path)
        self.ks = tuple(int(k) for k in ks)
        if not self.ks or min(self.ks) < 1:
            raise PlscError(f"Recall.ks must be positive ranks, got {list(ks)}")
        self.flip_test = flip_test

    def evaluate_sets(self, embed, transform):
        """Report: probes and Recall@k per group, then overall."""
        self.dataset.transform = transform
        embeddings = embed(self.dataset, self.flip_test)
        labels = self.dataset.labels
        gallery, probes = split_gallery_probes(labels)
        ranks = true_match_ranks(embeddings[gallery], labels[gallery], embeddings[probes], labels[probes])
        probe_groups = np.array([self.group_of[int(label)] for label in labels[probes]])
        rows = []
        for group in dict.fromkeys(self.group_of.values()):
            recalls = recall_at_k(ranks[probe_groups == group], self.ks)
            rows.append([group, int(np.count_nonzero(probe_groups == group)), *recalls.values()])
        overall = recall_at_k(ranks, self.ks)
        return {"title": f"Recall: 1:N identification, gallery of {len(gallery)} identities",
                "columns": ["group", "probes", *(f"recall@{k}" for k in self.ks)], "rows": rows,
                "summary": {"probes": int(len(probes)), **{f"recall@{k}": value for k, value in overall.items()}},
                "chart": {"ylabel": f"recall@{self.ks[0]}",
                          "series": {f"recall@{self.ks[0]}": {row[0]: row[2] for row in rows}}}}
