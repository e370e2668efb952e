"""ROC curve and TAR at fixed FAR for verification scores (higher score = more alike).

Operating-point rule used by `tar_at_far`: for a target FAR f we take the ROC point with the
largest FAR that is still <= f, i.e. the lowest threshold whose false accept rate does not exceed
the target, and report its TAR. We never interpolate between ROC points and never round up to the
nearest point above f (insightface's and PLSC's scripts take the point nearest to f, which may sit
slightly above it; at IJB-C scale the two agree to the printed precision except near 1e-6).
A target below 1 / num_negatives cannot be resolved by the data (the only point at or under it is
FAR = 0), so its TAR is NaN rather than the FAR = 0 figure.
"""
import numpy as np
from sklearn.metrics import roc_curve as _sklearn_roc_curve

from plsc.errors import PlscError

DEFAULT_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def _check_labels(labels):
    """labels [P] -> bool [P]; a PlscError when genuine or impostor pairs are missing."""
    labels = np.asarray(labels).astype(bool)
    num_genuine = int(labels.sum())
    if num_genuine == 0 or num_genuine == labels.size:
        raise PlscError(f"ROC needs both genuine and impostor pairs; got {num_genuine} genuine "
                        f"of {labels.size}")
    return labels


def roc_curve(scores, labels):
    """(far [K], tar [K], thresholds [K]) for accepting `score >= threshold`; far ascending.

    scores: [P] float; labels: [P] 1 = genuine (same identity), 0 = impostor.
    """
    labels = _check_labels(labels)
    far, tar, thresholds = _sklearn_roc_curve(labels, np.asarray(scores), drop_intermediate=True)
    return far, tar, thresholds


def tar_at_far(scores, labels, fars=DEFAULT_FARS):
    """{far: TAR} at the lowest threshold whose FAR <= far (NaN when far < 1 / num_impostors).

    scores: [P] float; labels: [P] 1 = genuine, 0 = impostor.
    """
    labels = _check_labels(labels)
    num_impostors = labels.size - int(labels.sum())
    far_curve, tar_curve, _ = roc_curve(scores, labels)
    # Compare whole counts of false accepts, not rates: 3/300 and 0.01 may differ in the last bit.
    false_accepts = np.rint(far_curve * num_impostors)
    result = {}
    for target in fars:
        allowed = np.floor(target * num_impostors * (1.0 + 1e-9))
        if allowed < 1:
            result[target] = float("nan")
            continue
        # Both curves are non-decreasing: the last point within the allowance has the best TAR.
        index = np.searchsorted(false_accepts, allowed, side="right") - 1
        result[target] = float(tar_curve[index])
    return result
