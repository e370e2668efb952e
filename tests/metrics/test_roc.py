"""ROC / TAR@FAR: plsc's at-most rule by brute force, insightface's nearest point by a numpy port."""
import math

import numpy as np
import pytest

from plsc.errors import PlscError
from plsc.metrics.roc import roc_curve, tar_at_far


def brute_force_tar_at_far(scores, labels, target):
    """Best TAR over thresholds t (accept score >= t) with #impostors accepted <= target * n."""
    genuine, impostor = scores[labels == 1], scores[labels == 0]
    if target * impostor.size < 1 - 1e-9:
        return math.nan
    best = 0.0
    for threshold in np.append(np.unique(scores), np.inf):
        false_accepts = np.sum(impostor >= threshold)
        if false_accepts <= target * impostor.size + 1e-9:
            best = max(best, np.mean(genuine >= threshold))
    return best


def random_scores(seed, num_pairs, decimals=None):
    rng = np.random.default_rng(seed)
    labels = (rng.random(num_pairs) < 0.3).astype(np.int64)
    scores = rng.normal(size=num_pairs) + 1.5 * labels
    if decimals is not None:  # many ties
        scores = np.round(scores, decimals)
    return scores, labels


@pytest.mark.parametrize("seed,num_pairs,decimals", [(0, 200, None), (1, 1000, 1), (2, 3000, 2)])
def test_tar_at_far_matches_brute_force(seed, num_pairs, decimals):
    scores, labels = random_scores(seed, num_pairs, decimals)
    fars = (1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.5, 1.0)
    result = tar_at_far(scores, labels, fars, convention="at_most")
    for far in fars:
        expected = brute_force_tar_at_far(scores, labels, far)
        if math.isnan(expected):
            assert math.isnan(result[far])
        else:
            assert result[far] == pytest.approx(expected, abs=1e-12), far


def test_roc_points_are_exact_counts():
    scores, labels = random_scores(3, 500, decimals=1)
    far, tar, thresholds = roc_curve(scores, labels)
    assert np.all(np.diff(far) >= 0) and np.all(np.diff(tar) >= 0)
    genuine, impostor = scores[labels == 1], scores[labels == 0]
    for point in range(1, far.size):  # point 0 sits at an infinite threshold
        assert far[point] == pytest.approx(np.mean(impostor >= thresholds[point]))
        assert tar[point] == pytest.approx(np.mean(genuine >= thresholds[point]))


def test_far_target_exactly_on_a_count_is_inclusive():
    # 300 impostors, FAR 1% allows exactly 3 of them; the 3 highest impostors outscore every genuine
    # but one, so TAR is 1/5 at 3 accepts and would be 0 if the boundary were exclusive of 3.
    impostor = np.concatenate([np.linspace(-1.0, 0.0, 297), [0.90, 0.91, 0.92]])
    genuine = np.array([0.95, 0.5, 0.4, 0.3, 0.2])
    scores = np.concatenate([genuine, impostor])
    labels = np.concatenate([np.ones(5), np.zeros(300)])
    assert tar_at_far(scores, labels, (0.01,), convention="at_most")[0.01] == pytest.approx(1.0)
    assert tar_at_far(scores, labels, (0.0099,), convention="at_most")[0.0099] == pytest.approx(0.2)


def test_target_below_one_impostor_is_nan():
    scores, labels = random_scores(4, 100)
    result = tar_at_far(scores, labels, (1e-6, 1e-1), convention="at_most")
    assert math.isnan(result[1e-6]) and not math.isnan(result[1e-1])


def test_perfect_separation_gives_full_tar():
    labels = np.array([1, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.1, 0.2, 0.3, 0.0])
    assert tar_at_far(scores, labels, (0.25, 1.0), convention="at_most") == {0.25: 1.0, 1.0: 1.0}


@pytest.mark.parametrize("labels", [np.ones(4), np.zeros(4)])
def test_one_sided_labels_are_a_user_error(labels):
    with pytest.raises(PlscError, match="genuine and impostor"):
        tar_at_far(np.arange(4.0), labels, convention="at_most")


def numpy_roc(scores, labels):
    """ROC as insightface's IJB script gets it from sklearn: a point per distinct score from the top,
    a leading (0, 0), then every point where the curve does not go straight on is kept."""
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_labels = scores[order], labels[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    true_accepts = np.cumsum(sorted_labels)[last_of_run]
    false_accepts = (1 + last_of_run) - true_accepts
    keep = np.r_[True, (np.diff(false_accepts, 2) != 0) | (np.diff(true_accepts, 2) != 0), True]
    false_accepts, true_accepts = np.r_[0, false_accepts[keep]], np.r_[0, true_accepts[keep]]
    return false_accepts / (labels == 0).sum(), true_accepts / (labels == 1).sum()


def insightface_tar_at_far(scores, labels, fars):
    """insightface's 1:1 table: flip the curve, then for each target the first point of least |fpr - f|."""
    fpr, tpr = numpy_roc(scores, labels)
    fpr, tpr = fpr[::-1], tpr[::-1]
    table = {}
    for target in fars:
        _, best = min(zip(np.abs(fpr - target), range(fpr.size)))
        table[target] = tpr[best]
    return table


@pytest.mark.parametrize("seed,num_pairs,decimals", [(0, 200, None), (1, 1000, 1), (2, 3000, 2), (5, 50, None)])
def test_insightface_convention_matches_a_port_of_its_script(seed, num_pairs, decimals):
    scores, labels = random_scores(seed, num_pairs, decimals)
    fars = (1e-6, 1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.5, 1.0)
    ours = tar_at_far(scores, labels, fars)
    assert ours == tar_at_far(scores, labels, fars, convention="insightface")  # the default
    expected = insightface_tar_at_far(scores, labels, fars)
    for far in fars:
        assert ours[far] == pytest.approx(expected[far], abs=1e-12), far


def test_conventions_differ_on_a_whole_count_of_false_accepts():
    # 100 impostors, FAR 0.01 = 1 false accept. Points: 0 FA (TAR 0.2), 2 FA (TAR 1.0). at_most may not
    # take the 2-FA point; insightface takes the nearer of |0 - .01| and |.02 - .01|: a tie it gives
    # to the larger FAR, so TAR 1.0.
    impostor = np.r_[0.9, 0.89, np.linspace(-1.0, 0.0, 98)]
    genuine = np.array([0.95, 0.5, 0.4, 0.3, 0.2])
    scores, labels = np.r_[genuine, impostor], np.r_[np.ones(5), np.zeros(100)]
    assert tar_at_far(scores, labels, (0.01,), convention="at_most")[0.01] == pytest.approx(0.2)
    assert tar_at_far(scores, labels, (0.01,))[0.01] == pytest.approx(1.0)
    assert insightface_tar_at_far(scores, labels, (0.01,))[0.01] == pytest.approx(1.0)
    # below one impostor insightface reports the FAR = 0 point instead of NaN
    assert tar_at_far(scores, labels, (1e-6,))[1e-6] == pytest.approx(0.2)


def test_unknown_convention_is_a_user_error():
    scores, labels = random_scores(6, 20)
    with pytest.raises(PlscError, match="convention 'nearest' is not one of insightface, at_most"):
        tar_at_far(scores, labels, convention="nearest")
