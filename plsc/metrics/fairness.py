"""Fairness of face verification across groups of people.

- Group fairness (RFW protocol, Wang et al. 2019): one pair set per group, 10-fold accuracy each,
  their mean and standard deviation, and the skewed error ratio SER = max error / min error.
- Instance fairness: one global threshold chosen at a target false-accept rate over all impostor
  pairs of an identity folder; then, per identity, its false-match rate against everyone else and
  its false-non-match rate over its own pairs, summarised per group (mean and worst identity).
  Every pair is scored exactly once, in row blocks of the similarity matrix, so memory stays flat.

The metrics here bring their own image sets: the evaluator calls `evaluate_sets(embed, transform)`
with `embed(dataset, flip_test) -> [N, D]` and the evaluation transform, and gets a report
(title, columns, rows, summary, optional chart) back.
"""
import os

import numpy as np

from plsc.errors import PlscError
from plsc.metrics.verification import kfold_accuracy, pair_distances
from plsc.registry import METRICS

# Similarity-matrix entries per block (float32): 2**25 is 128 MB, whatever the number of images.
BLOCK_ELEMENTS = 2 ** 25
# Label of the single group when an identity folder comes without a group file.
ALL_GROUP = "all"


# ---- group fairness (RFW) ---------------------------------------------------------------------
def skewed_error_ratio(accuracies):
    """max(1 - acc) / min(1 - acc) over groups; inf when the best group makes no error (1.0 if none does)."""
    errors = 1.0 - np.asarray(list(accuracies), dtype=np.float64)
    worst, best = float(errors.max()), float(errors.min())
    if best > 0:
        return worst / best
    return 1.0 if worst == 0 else float("inf")


def group_accuracy_summary(accuracies, ddof=0):
    """{group: accuracy} -> mean, std across groups and SER.

    ddof 0 is the population std (RFW's STD); MixFairFace reports the sample std (ddof 1).
    """
    values = np.asarray(list(accuracies.values()), dtype=np.float64)
    std = float(values.std(ddof=ddof)) if values.size > ddof else float("nan")
    return {"mean": float(values.mean()), "std": std, "ser": skewed_error_ratio(values)}


def open_pair_set(path, name):
    """A verification pair set from an LFW-style `.bin`, a converted folder, or its `label.txt`."""
    from plsc.data.dataset.face_verification import FaceVerificationDataset

    if os.path.isdir(path):
        return FaceVerificationDataset(image_root=path, cls_label_path=os.path.join(path, "label.txt"), set_name=name)
    if path.endswith(".bin"):
        return FaceVerificationDataset(bin_path=path, set_name=name)
    if os.path.isfile(path):
        return FaceVerificationDataset(image_root=os.path.dirname(path), cls_label_path=path, set_name=name)
    raise PlscError(f"pair set '{name}': {path} is neither a .bin file, a folder nor a label file")


@METRICS.register("GroupVerification")
class GroupVerification:
    """Per-group 10-fold verification accuracy (RFW); with `masked`, also with a mask on one image per pair."""

    # The std across groups: population (RFW's own STD); a variant may use the sample std.
    std_ddof = 0
    protocol = "RFW"

    def __init__(self, groups=None, flip_test=True, nrof_folds=10, masked=False, mask_seed=0):
        if not groups or not hasattr(groups, "items"):
            raise PlscError("GroupVerification.groups must map group names to pair sets (.bin or folder), "
                            f"got {groups!r}")
        self.pair_sets = {str(name): open_pair_set(str(path), str(name)) for name, path in groups.items()}
        self.flip_test = flip_test
        self.nrof_folds = nrof_folds
        self.masked = masked
        self.mask_seed = mask_seed

    def _accuracy(self, embed, dataset, issame):
        mean, std, threshold = kfold_accuracy(pair_distances(embed(dataset, self.flip_test)), issame,
                                              self.nrof_folds)
        return {"accuracy": mean, "std": std, "threshold": threshold}

    def evaluate_sets(self, embed, transform):
        """Report: one row per group, then mean / std / SER (also for the masked pairs when asked)."""
        from plsc.data.mask import OneSideMaskedPairs

        plain, masked = {}, {}
        for name, dataset in self.pair_sets.items():
            dataset.transform = transform
            plain[name] = self._accuracy(embed, dataset, dataset.issame)
            if self.masked:
                masked[name] = self._accuracy(embed, OneSideMaskedPairs(dataset, self.mask_seed), dataset.issame)
        columns = ["group", "pairs", "accuracy", "std", "threshold"]
        rows = [[name, len(self.pair_sets[name].issame), f["accuracy"], f["std"], f["threshold"]]
                for name, f in plain.items()]
        summary = _summary_lines("", plain, self.std_ddof)
        series = {"unmasked": {name: f["accuracy"] for name, f in plain.items()}}
        if self.masked:
            columns += ["masked accuracy", "masked std"]
            for row, name in zip(rows, plain):
                row += [masked[name]["accuracy"], masked[name]["std"]]
            summary.update(_summary_lines("masked ", masked, self.std_ddof))
            series["masked"] = {name: f["accuracy"] for name, f in masked.items()}
        return {"title": f"{type(self).__name__} ({self.protocol}): {self.nrof_folds}-fold accuracy per group",
                "columns": columns,
                "rows": rows, "summary": summary, "chart": {"ylabel": "accuracy", "series": series}}


def _summary_lines(prefix, figures, ddof=0):
    """{group: figures} -> the report's summary lines: mean accuracy, std across groups, SER."""
    summary = group_accuracy_summary({name: f["accuracy"] for name, f in figures.items()}, ddof)
    return {f"{prefix}mean accuracy": summary["mean"], f"{prefix}std across groups": summary["std"],
            f"{prefix}SER": summary["ser"]}


# ---- identity folders with groups -------------------------------------------------------------
def read_group_file(path):
    """`label group` per line -> {label: group name}."""
    if not os.path.isfile(path):
        raise PlscError(f"group file not found: {path}")
    groups = {}
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or not fields[0].lstrip("-").isdigit():
                raise PlscError(f"{path}:{line_number}: expected 'label group', got {line.strip()!r}")
            groups[int(fields[0])] = fields[1]
    return groups


def open_identity_folder(image_root, cls_label_path, group_path=None):
    """(FaceIdentificationDataset, {label: group}); without a group file every identity is in 'all'."""
    from plsc.data.dataset.face_identification import FaceIdentificationDataset

    if image_root is None or cls_label_path is None:
        raise PlscError("an identity folder needs image_root and cls_label_path")
    dataset = FaceIdentificationDataset(image_root, cls_label_path)
    labels = np.unique(dataset.labels)
    if group_path is None:
        return dataset, {int(label): ALL_GROUP for label in labels}
    groups = read_group_file(group_path)
    missing = [int(label) for label in labels if int(label) not in groups]
    if missing:
        raise PlscError(f"{group_path}: no group for label {missing[0]} ({len(missing)} labels of "
                        f"{cls_label_path} have none)")
    return dataset, {int(label): groups[int(label)] for label in labels}


# ---- instance fairness: all pairs in blocks ---------------------------------------------------
def unit_rows(embeddings):
    """L2-normalised float32 copy of embeddings [N, D]."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.maximum(norms, 1e-12)


def identity_layout(labels):
    """Order that sorts images by identity, the identities, and each one's row range.

    Returns (order [N], identities [C], bounds [C + 1]): identity c holds sorted rows bounds[c]:bounds[c+1].
    """
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    identities, counts = np.unique(labels[order], return_counts=True)
    return order, identities, np.concatenate([[0], np.cumsum(counts)])


def default_block_rows(num_images):
    """Rows per block so a block of the similarity matrix holds about BLOCK_ELEMENTS floats."""
    return max(1, min(num_images, BLOCK_ELEMENTS // max(num_images, 1)))


def impostor_blocks(unit, bounds, block_rows):
    """Yield (start, scores [r, N - start]) for sorted rows start:start+r against columns start:N.

    Every unordered pair of different identities appears exactly once (column > row); entries that
    are not such a pair (j <= i, or the same identity) are -inf, below any threshold.
    """
    num_images = unit.shape[0]
    identity_of_row = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
    for start in range(0, num_images, block_rows):
        stop = min(start + block_rows, num_images)
        scores = unit[start:stop] @ unit[start:].T
        rows = stop - start
        scores[:, :rows][np.tril_indices(rows)] = -np.inf
        for identity in range(identity_of_row[start], identity_of_row[stop - 1] + 1):
            # This identity's rows in the block, against its columns (which start where its rows do).
            first_row, end_row = max(bounds[identity], start) - start, min(bounds[identity + 1], stop) - start
            scores[first_row:end_row, first_row:bounds[identity + 1] - start] = -np.inf
        yield start, scores


def num_impostor_pairs(bounds):
    """Unordered pairs of images of different identities."""
    counts = np.diff(bounds).astype(np.int64)
    total = int(counts.sum())
    return (total * total - int((counts * counts).sum())) // 2


def threshold_at_far(unit, bounds, target_far, block_rows):
    """The (K+1)-th highest impostor score, K = floor(target_far * impostor pairs).

    Accepting `score > threshold` then lets at most K impostor pairs through: FAR <= target_far.
    Only the K+1 highest scores seen so far are kept between blocks.
    """
    impostors = num_impostor_pairs(bounds)
    if impostors == 0:
        raise PlscError("instance fairness needs at least two identities")
    keep = min(int(np.floor(target_far * impostors)) + 1, impostors)
    highest = np.empty(0, dtype=np.float32)
    for _, scores in impostor_blocks(unit, bounds, block_rows):
        # Scores not above the current K+1-th highest cannot change it (and -inf marks non-pairs).
        floor = highest.min() if highest.size == keep else -np.inf
        candidates = np.concatenate([highest, scores[scores > floor]])
        highest = candidates if candidates.size <= keep else np.partition(candidates, candidates.size - keep)[-keep:]
    return float(highest.min())


def false_match_counts(unit, bounds, threshold, block_rows):
    """Per identity [C]: impostor pairs involving it with score > threshold (int64)."""
    identity_of_row = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
    counts = np.zeros(len(bounds) - 1, dtype=np.int64)
    for start, scores in impostor_blocks(unit, bounds, block_rows):
        accepted = scores > threshold
        # A false match counts for both identities: the row's and the column's.
        counts += np.bincount(identity_of_row[start:start + accepted.shape[0]], weights=accepted.sum(axis=1),
                              minlength=counts.size).astype(np.int64)
        counts += np.bincount(identity_of_row[start:], weights=accepted.sum(axis=0),
                              minlength=counts.size).astype(np.int64)
    return counts


def false_non_match_counts(unit, bounds, threshold):
    """Per identity [C]: (own pairs with score <= threshold, own pairs) as two int64 arrays."""
    misses = np.zeros(len(bounds) - 1, dtype=np.int64)
    pairs = np.zeros(len(bounds) - 1, dtype=np.int64)
    for identity, (first, last) in enumerate(zip(bounds[:-1], bounds[1:])):
        own = unit[first:last]
        scores = (own @ own.T)[np.triu_indices(last - first, k=1)]
        misses[identity] = int(np.count_nonzero(scores <= threshold))
        pairs[identity] = scores.size
    return misses, pairs


def instance_error_rates(embeddings, labels, target_far=1e-4, block_rows=None, threshold=None):
    """Per-identity FMR and FNMR at one global threshold (chosen at `target_far` unless given).

    embeddings [N, D], labels [N] -> dict with `threshold`, `far` (achieved), `fnmr` (all genuine
    pairs), and per identity [C]: `identities`, `images`, `fmr`, `fnmr_per_identity` (NaN with one image).
    """
    if not 0.0 < target_far < 1.0:
        raise PlscError(f"target_far must be in (0, 1), got {target_far}")
    order, identities, bounds = identity_layout(labels)
    unit = unit_rows(np.asarray(embeddings)[order])
    block_rows = block_rows or default_block_rows(unit.shape[0])
    if threshold is None:
        threshold = threshold_at_far(unit, bounds, target_far, block_rows)
    false_matches = false_match_counts(unit, bounds, threshold, block_rows)
    misses, genuine = false_non_match_counts(unit, bounds, threshold)
    images = np.diff(bounds)
    fnmr = np.where(genuine > 0, misses / np.maximum(genuine, 1), np.nan)
    return {"threshold": float(threshold), "far": float(false_matches.sum() / 2 / num_impostor_pairs(bounds)),
            "fnmr": float(misses.sum() / genuine.sum()) if genuine.sum() else float("nan"),
            "identities": identities, "images": images,
            "fmr": false_matches / (images * (unit.shape[0] - images)), "fnmr_per_identity": fnmr}


def summarise_by_group(identities, values, group_of):
    """Mean and worst (max) of a per-identity rate within each group, ignoring NaN.

    Returns {group: {"identities", "mean", "worst", "worst_identity"}}.
    """
    groups = np.array([group_of[int(identity)] for identity in identities])
    summary = {}
    for group in dict.fromkeys(groups):  # first-seen order
        members = np.flatnonzero(groups == group)
        member_values = np.asarray(values, dtype=np.float64)[members]
        defined = ~np.isnan(member_values)
        if not defined.any():
            summary[group] = {"identities": int(members.size), "mean": float("nan"), "worst": float("nan"),
                              "worst_identity": None}
            continue
        worst = members[defined][np.argmax(member_values[defined])]
        summary[group] = {"identities": int(members.size), "mean": float(member_values[defined].mean()),
                          "worst": float(np.asarray(values)[worst]), "worst_identity": int(identities[worst])}
    return summary


@METRICS.register("InstanceFairness")
class InstanceFairness:
    """Per-identity false-match / false-non-match rates at a global threshold (target FAR), per group."""

    def __init__(self, image_root=None, cls_label_path=None, group_path=None, target_far=1e-4, flip_test=True,
                 block_rows=0):
        from plsc.config import evaluate_number

        self.dataset, self.group_of = open_identity_folder(image_root, cls_label_path, group_path)
        # YAML 1.1 reads `1e-4` (no dot) as text; accept it as PLSC's `scale: 1.0/255.0` is accepted.
        self.target_far = float(evaluate_number(target_far) if isinstance(target_far, str) else target_far)
        self.flip_test = flip_test
        self.block_rows = int(block_rows) or None

    def evaluate_sets(self, embed, transform):
        """Report: per group the mean and worst identity FMR and FNMR; threshold and overall rates."""
        self.dataset.transform = transform
        embeddings = embed(self.dataset, self.flip_test)
        rates = instance_error_rates(embeddings, self.dataset.labels, self.target_far, self.block_rows)
        fmr = summarise_by_group(rates["identities"], rates["fmr"], self.group_of)
        fnmr = summarise_by_group(rates["identities"], rates["fnmr_per_identity"], self.group_of)
        rows = [[group, fmr[group]["identities"], fmr[group]["mean"], fmr[group]["worst"],
                 fmr[group]["worst_identity"], fnmr[group]["mean"], fnmr[group]["worst"],
                 fnmr[group]["worst_identity"]] for group in fmr]
        details = [{"label": int(label), "group": self.group_of[int(label)], "images": int(images),
                    "fmr": float(identity_fmr), "fnmr": float(identity_fnmr)}
                   for label, images, identity_fmr, identity_fnmr in
                   zip(rates["identities"], rates["images"], rates["fmr"], rates["fnmr_per_identity"])]
        return {"title": f"InstanceFairness: per-identity error rates at FAR {self.target_far:g}",
                "columns": ["group", "identities", "mean FMR", "worst FMR", "worst FMR id", "mean FNMR",
                            "worst FNMR", "worst FNMR id"],
                "rows": rows,
                "summary": {"threshold (cosine)": rates["threshold"], "target FAR": self.target_far,
                            "achieved FAR": rates["far"], "FNMR": rates["fnmr"], "TAR": 1.0 - rates["fnmr"]},
                "chart": {"ylabel": "mean FNMR", "series": {"FNMR": {group: fnmr[group]["mean"] for group in fnmr}}},
                "identities": details}
