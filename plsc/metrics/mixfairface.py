"""MixFairFace's two evaluation protocols (Wang et al., AAAI 2023), named so a report says which produced it.

- `MixFairFaceRFW`, the usual protocol: RFW's per-race pair sets, features emb(x) + emb(flip x),
  10-fold accuracy per race, their mean, the *sample* STD (ddof 1) across races and the skewed
  error ratio SER = max error / min error.
- `MixFairFaceInstance`, the instance protocol: every image of an identity folder (RFW's people
  lists) against every other. One global threshold found by bisection on [-1, 1] so that the FPR
  over all cross-identity pairs (cross-race included) is just above the target (1e-5): the authors'
  loop, at most 70 halvings, stopping once 0 < FPR - target < target / 10. Then per image
  TPR = accepted own-identity others / own-identity others (itself excluded) and
  FPR = accepted other-identity images / other-identity images, averaged per identity; reported
  overall and per race as mean and STD (ddof 0) of the per-identity rates, with the intra-identity
  similarity (mean cosine of an identity's images to their normalised mean) and the
  inter-identity similarity (mean of the 50 highest cosines between an identity's normalised mean
  and the other identities' means).

Memory stays bounded: the similarity matrix is walked in row blocks (plsc.metrics.fairness), the
bisection reads only the highest impostor scores (the most it can need: 1.1 x target x pairs + 1),
and the per-image counts come from a second blocked pass.
"""
import math

import numpy as np

from plsc.errors import PlscError
from plsc.metrics.fairness import (GroupVerification, default_block_rows, identity_layout, impostor_blocks,
                                   num_impostor_pairs, open_identity_folder, unit_rows)
from plsc.registry import METRICS

# The authors' bisection: interval, number of halvings, accepted overshoot (a tenth of the target).
BISECTION_RANGE = (-1.0, 1.0)
BISECTION_STEPS = 70
TOLERANCE_FRACTION = 0.1
INTER_SIMILARITY_TOP = 50


@METRICS.register("MixFairFaceRFW")
class MixFairFaceRFW(GroupVerification):
    """MixFairFace's usual protocol: per-race RFW 10-fold accuracy, mean, sample STD (ddof 1), SER."""

    std_ddof = 1
    protocol = "MixFairFace usual protocol"


def highest_impostor_scores(unit, bounds, keep, block_rows):
    """The `keep` highest cross-identity scores (float32, descending; fewer if there are fewer pairs)."""
    highest = np.empty(0, dtype=np.float32)
    for _, scores in impostor_blocks(unit, bounds, block_rows):
        floor = highest.min() if highest.size == keep else -np.inf
        candidates = np.concatenate([highest, scores[scores > floor]])
        if candidates.size > keep:
            candidates = np.partition(candidates, candidates.size - keep)[-keep:]
        highest = candidates
    return np.sort(highest)[::-1]


def bisect_threshold(highest, impostors, target_fpr, saturated):
    """The authors' bisection on the FPR `score > threshold` over `impostors` pairs.

    highest: the highest impostor scores, descending; `saturated` says there are more impostor
    scores below the last one (then a threshold that accepts all of `highest` has an FPR above
    the tolerance, and only the direction of the next halving matters).
    Returns (threshold, FPR of the last step or None when saturated, converged).
    """
    low, high = BISECTION_RANGE
    tolerance = target_fpr * TOLERANCE_FRACTION
    ascending = highest[::-1]
    for _ in range(BISECTION_STEPS):
        threshold = (low + high) / 2.0
        accepted = ascending.size - np.searchsorted(ascending, np.float32(threshold), side="right")
        fpr = None if saturated and accepted == ascending.size else accepted / impostors
        if fpr is not None and 0.0 < fpr - target_fpr < tolerance:
            return threshold, fpr, True
        if fpr is None or fpr > target_fpr:
            low = threshold
        else:
            high = threshold
    return threshold, fpr, False


def per_image_accept_counts(unit, bounds, threshold, block_rows):
    """Per sorted image: (own-identity others accepted, other-identity images accepted), int64 [N] each."""
    threshold = np.float32(threshold)
    num_images = unit.shape[0]
    false_accepts = np.zeros(num_images, dtype=np.int64)
    for start, scores in impostor_blocks(unit, bounds, block_rows):
        accepted = scores > threshold
        # Each unordered pair appears once: it counts for its row image and its column image.
        false_accepts[start:start + accepted.shape[0]] += accepted.sum(axis=1)
        false_accepts[start:] += accepted.sum(axis=0)
    true_accepts = np.zeros(num_images, dtype=np.int64)
    for first, last in zip(bounds[:-1], bounds[1:]):
        own = unit[first:last] @ unit[first:last].T
        np.fill_diagonal(own, -np.inf)  # the image itself is not a match of itself
        true_accepts[first:last] = (own > threshold).sum(axis=1)
    return true_accepts, false_accepts


def identity_means(unit, bounds):
    """Normalised mean unit feature of each identity: [C, D] float32."""
    sums = np.add.reduceat(unit.astype(np.float64), bounds[:-1], axis=0)
    return unit_rows(sums)


def intra_similarity(unit, bounds, means):
    """Mean cosine of each identity's images to its normalised mean: [C] float64."""
    cosines = np.einsum("nd,nd->n", unit, np.repeat(means, np.diff(bounds), axis=0))
    return np.add.reduceat(cosines.astype(np.float64), bounds[:-1]) / np.diff(bounds)


def inter_similarity(means, top=INTER_SIMILARITY_TOP, block_rows=4096):
    """Mean of the `top` highest cosines between each identity's mean and the other means: [C] float64.

    With fewer than top + 1 identities every other identity counts.
    """
    count = means.shape[0]
    if count < 2:
        return np.full(count, np.nan)
    keep = min(top, count - 1)
    result = np.empty(count, dtype=np.float64)
    for start in range(0, count, block_rows):
        scores = means[start:start + block_rows] @ means.T
        scores[np.arange(scores.shape[0]), np.arange(start, start + scores.shape[0])] = -np.inf
        highest = np.partition(scores, count - keep, axis=1)[:, count - keep:]
        result[start:start + scores.shape[0]] = highest.astype(np.float64).mean(axis=1)
    return result


def instance_protocol(embeddings, labels, target_fpr=1e-5, block_rows=None):
    """MixFairFace's instance protocol on embeddings [N, D] with identity labels [N].

    Returns the threshold, whether the bisection converged, overall TPR / FPR (all pairs), and per
    identity [C]: `identities`, `images`, `tpr`, `fpr` (means of its images' rates; TPR NaN for a
    single image), `intra`, `inter`.
    """
    if not 0.0 < target_fpr < 1.0:
        raise PlscError(f"target_fpr must be in (0, 1), got {target_fpr}")
    order, identities, bounds = identity_layout(labels)
    if identities.size < 2:
        raise PlscError("the instance protocol needs at least two identities")
    unit = unit_rows(np.asarray(embeddings)[order])
    block_rows = block_rows or default_block_rows(unit.shape[0])
    impostors = num_impostor_pairs(bounds)
    # Enough scores to decide every step of the bisection: more accepted pairs than this already
    # means an FPR beyond the tolerance, i.e. "raise the threshold".
    keep = min(int(math.floor((1.0 + TOLERANCE_FRACTION) * target_fpr * impostors)) + 1, impostors)
    highest = highest_impostor_scores(unit, bounds, keep, block_rows)
    threshold, _, converged = bisect_threshold(highest, impostors, target_fpr, saturated=keep < impostors)
    true_accepts, false_accepts = per_image_accept_counts(unit, bounds, threshold, block_rows)
    images = np.diff(bounds)
    own_others = np.repeat(images - 1, images)
    strangers = unit.shape[0] - np.repeat(images, images)
    with np.errstate(invalid="ignore", divide="ignore"):
        image_tpr = np.where(own_others > 0, true_accepts / np.maximum(own_others, 1), np.nan)
    image_fpr = false_accepts / strangers
    starts = bounds[:-1]
    tpr_sums = np.add.reduceat(np.nan_to_num(image_tpr), starts)
    tpr = np.where(images > 1, tpr_sums / images, np.nan)
    fpr = np.add.reduceat(image_fpr, starts) / images
    genuine = int((images * (images - 1)).sum()) // 2
    means = identity_means(unit, bounds)
    return {"threshold": float(threshold), "converged": bool(converged),
            "overall_tpr": float(true_accepts.sum() / 2 / genuine) if genuine else float("nan"),
            "overall_fpr": float(false_accepts.sum() / 2 / impostors),
            "identities": identities, "images": images, "tpr": tpr, "fpr": fpr,
            "intra": intra_similarity(unit, bounds, means), "inter": inter_similarity(means)}


def mean_and_std(values):
    """(mean, population std) of the defined (non-NaN) values; NaN for none."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if not values.size:
        return float("nan"), float("nan")
    return float(values.mean()), float(values.std())


@METRICS.register("MixFairFaceInstance")
class MixFairFaceInstance:
    """MixFairFace's instance protocol: per-identity TPR / FPR at one global FPR-1e-5 threshold, per race."""

    protocol = "MixFairFace instance protocol"

    def __init__(self, image_root=None, cls_label_path=None, group_path=None, target_fpr=1e-5, flip_test=True,
                 block_rows=0):
        from plsc.config import evaluate_number

        self.dataset, self.group_of = open_identity_folder(image_root, cls_label_path, group_path)
        # YAML 1.1 reads `1e-5` (no dot) as text; accept it like the other rates.
        self.target_fpr = float(evaluate_number(target_fpr) if isinstance(target_fpr, str) else target_fpr)
        self.flip_test = flip_test
        self.block_rows = int(block_rows) or None

    def evaluate_sets(self, embed, transform):
        self.dataset.transform = transform
        embeddings = embed(self.dataset, self.flip_test)
        return instance_report(instance_protocol(embeddings, self.dataset.labels, self.target_fpr, self.block_rows),
                               self.group_of, self.target_fpr)


def instance_report(result, group_of, target_fpr):
    """The report dict of `instance_protocol`'s result, per race then overall."""
    groups = np.array([group_of[int(identity)] for identity in result["identities"]])
    rows, chart = [], {}
    for group in dict.fromkeys(groups):
        members = groups == group
        tpr_mean, tpr_std = mean_and_std(result["tpr"][members])
        fpr_mean, fpr_std = mean_and_std(result["fpr"][members])
        intra_mean, intra_std = mean_and_std(result["intra"][members])
        inter_mean, inter_std = mean_and_std(result["inter"][members])
        rows.append([group, int(members.sum()), int(result["images"][members].sum()), tpr_mean, tpr_std, fpr_mean,
                     fpr_std, intra_mean, inter_mean])
        chart[group] = tpr_mean
    tpr_mean, tpr_std = mean_and_std(result["tpr"])
    fpr_mean, fpr_std = mean_and_std(result["fpr"])
    details = [{"label": int(label), "group": str(group), "images": int(images), "tpr": float(tpr), "fpr": float(fpr),
                "intra": float(intra), "inter": float(inter)}
               for label, group, images, tpr, fpr, intra, inter in
               zip(result["identities"], groups, result["images"], result["tpr"], result["fpr"], result["intra"],
                   result["inter"])]
    return {"title": f"MixFairFaceInstance ({MixFairFaceInstance.protocol}): per-identity TPR / FPR at FPR "
                     f"{target_fpr:g}",
            "columns": ["race", "identities", "images", "mean TPR", "std TPR", "mean FPR", "std FPR", "intra-sim",
                        "inter-sim"],
            "rows": rows,
            "summary": {"protocol": MixFairFaceInstance.protocol, "threshold (cosine)": result["threshold"],
                        "bisection converged": str(result["converged"]), "target FPR": target_fpr,
                        "overall TPR": result["overall_tpr"], "overall FPR": result["overall_fpr"],
                        "instance mean TPR": tpr_mean, "instance std TPR": tpr_std,
                        "instance mean FPR": fpr_mean, "instance std FPR": fpr_std},
            "chart": {"ylabel": "mean TPR per identity", "series": {"TPR": chart}},
            "identities": details}
