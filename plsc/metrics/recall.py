"""1:N identification recall, two protocols.

- `Recall` (insightface-style 1:N): from an identity folder, each identity's first listed image is
  its gallery entry and the rest are probes. A probe's rank is 1 + the number of gallery identities
  scoring strictly higher (cosine) than its own; Recall@k is the fraction of probes with rank <= k.
- `FFEMRecall` (FFEM's recall@1, leave-one-out): within each group's set (e.g. one RFW race) every
  image queries all other images of the set; its rank is 1 + the number of other images scoring
  strictly higher than its best same-identity image (a tie counts as a hit), so recall@1 is "the
  nearest other image shares the label". Only the query itself is left out, in every block
  including the last partial one; an image without another of its identity never hits.
"""
import numpy as np

from plsc.errors import PlscError
from plsc.metrics.fairness import default_block_rows, open_identity_folder, unit_rows
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


def leave_one_out_ranks(embeddings, labels, block_rows=None):
    """Rank of each image's nearest same-identity other among all other images: int64 [N].

    embeddings [N, D], labels [N]. An image whose identity has no other image gets rank N (a miss
    at every k < N). Scored in row blocks of about BLOCK_ELEMENTS similarities.
    """
    unit, labels = unit_rows(embeddings), np.asarray(labels)
    count = unit.shape[0]
    block_rows = block_rows or default_block_rows(count)
    ranks = np.empty(count, dtype=np.int64)
    for start in range(0, count, block_rows):
        stop = min(start + block_rows, count)
        scores = unit[start:stop] @ unit.T
        scores[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # exactly the query itself
        same = labels[start:stop, None] == labels[None, :]
        best_own = np.where(same, scores, -np.inf).max(axis=1)
        rank = 1 + np.count_nonzero(scores > best_own[:, None], axis=1)
        ranks[start:stop] = np.where(np.isneginf(best_own), count, rank)
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


@METRICS.register("FFEMRecall")
class FFEMRecall:
    """FFEM's leave-one-out recall@k within each group's set (e.g. per RFW race), and their mean."""

    protocol = "FFEM leave-one-out recall"

    def __init__(self, image_root=None, cls_label_path=None, group_path=None, ks=(1,), flip_test=False,
                 block_rows=0):
        self.dataset, self.group_of = open_identity_folder(image_root, cls_label_path, group_path)
        self.ks = tuple(int(k) for k in ks)
        if not self.ks or min(self.ks) < 1:
            raise PlscError(f"FFEMRecall.ks must be positive ranks, got {list(ks)}")
        # FFEM embeds each image once (no flip); flip_test adds the mirror image's embedding.
        self.flip_test = flip_test
        self.block_rows = int(block_rows) or None

    def evaluate_sets(self, embed, transform):
        """Report: images and recall@k per group's set, then the mean over the sets."""
        self.dataset.transform = transform
        embeddings = embed(self.dataset, self.flip_test)
        return leave_one_out_report(embeddings, self.dataset.labels, self.group_of, self.ks, self.block_rows)


def leave_one_out_report(embeddings, labels, group_of, ks, block_rows=None):
    """Each group's images searched among themselves only; rows per group and the mean over groups."""
    labels = np.asarray(labels)
    image_groups = np.array([group_of[int(label)] for label in labels])
    rows = []
    for group in dict.fromkeys(image_groups):
        members = np.flatnonzero(image_groups == group)
        recalls = recall_at_k(leave_one_out_ranks(embeddings[members], labels[members], block_rows), ks)
        rows.append([group, int(members.size), *recalls.values()])
    means = {f"mean recall@{k}": float(np.mean([row[2 + position] for row in rows])) for position, k in enumerate(ks)}
    return {"title": f"FFEMRecall ({FFEMRecall.protocol}): nearest other image within each set",
            "columns": ["set", "images", *(f"recall@{k}" for k in ks)], "rows": rows,
            "summary": {"protocol": FFEMRecall.protocol, **means},
            "chart": {"ylabel": f"recall@{ks[0]}", "series": {f"recall@{ks[0]}": {row[0]: row[2] for row in rows}}}}
