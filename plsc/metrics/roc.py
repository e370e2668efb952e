"""ROC curve and TAR at fixed FAR for verification scores (higher score = more alike).

Two rules pick the ROC point reported for a target FAR f (`TAR_CONVENTIONS`):
- "insightface" (the default; what insightface's IJB 1:1 script prints and papers publish): the
  point of sklearn's ROC (collinear points dropped) whose FAR is nearest to f; among equally near
  points the one with the larger FAR and, at equal FAR, the larger TAR. It may sit above f.
- "at_most" (plsc's strict rule): the largest FAR still <= f, i.e. the lowest threshold whose false
  accepts stay within f * #impostors. A target below 1 / #impostors cannot be resolved by the data
  (the only point at or under it is FAR = 0), so its TAR is NaN rather than the FAR = 0 figure.
The two differ mostly when f * #impostors is a whole number or the curve is sparse around f.
"""
import numpy as np
from sklearn.metrics import roc_curve as _sklearn_roc_curve

from plsc.errors import PlscError

DEFAULT_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
TAR_CONVENTIONS = {
    "insightface": "TAR at the ROC point nearest in FAR (insightface's IJB 1:1)",
    "at_most": "best TAR with FAR <= target (plsc's strict rule)",
}


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

    scores: [P] float; labels: [P] 1 = genuine (same identity), 0 = impostor. Collinear points are
    dropped, as in insightface's scripts (which call sklearn with its defaults).
    """
    labels = _check_labels(labels)
    far, tar, thresholds = _sklearn_roc_curve(labels, np.asarray(scores), drop_intermediate=True)
    return far, tar, thresholds


def _nearest_point(far_curve, tar_curve, fars):
    """{far: TAR} at the ROC point nearest in FAR; ties go to the later point (larger FAR, larger TAR)."""
    # Searching the reversed curve for the first minimum is the tie rule stated above.
    far_reversed, tar_reversed = far_curve[::-1], tar_curve[::-1]
    return {target: float(tar_reversed[np.argmin(np.abs(far_reversed - target))]) for target in fars}


def _at_most(far_curve, tar_curve, num_impostors, fars):
    """{far: TAR} at the lowest threshold whose FAR <= far (NaN when far < 1 / num_impostors)."""
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


def tar_at_far(scores, labels, fars=DEFAULT_FARS, convention="insightface"):
    """{far: TAR} under `convention` ("insightface" nearest point, or "at_most"; see the module doc).

    scores: [P] float; labels: [P] 1 = genuine, 0 = impostor.
    """
    if convention not in TAR_CONVENTIONS:
        raise PlscError(f"TAR@FAR convention {convention!r} is not one of {', '.join(TAR_CONVENTIONS)}")
    labels = _check_labels(labels)
    far_curve, tar_curve, _ = roc_curve(scores, labels)
    if convention == "insightface":
        return _nearest_point(far_curve, tar_curve, fars)
    return _at_most(far_curve, tar_curve, labels.size - int(labels.sum()), fars)
