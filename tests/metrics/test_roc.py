"""ROC / TAR@FAR against a brute-force count over every possible threshold."""
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
    result = tar_at_far(scores, labels, fars)
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
    assert tar_at_far(scores, labels, (0.01,))[0.01] == pytest.approx(1.0)
    assert tar_at_far(scores, labels, (0.0099,))[0.0099] == pytest.approx(0.2)


def test_target_below_one_impostor_is_nan():
    scores, labels = random_scores(4, 100)
    result = tar_at_far(scores, labels, (1e-6, 1e-1))
    assert math.isnan(result[1e-6]) and not math.isnan(result[1e-1])


def test_perfect_separation_gives_full_tar():
    labels = np.array([1, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.1, 0.2, 0.3, 0.0])
    assert tar_at_far(scores, labels, (0.25, 1.0)) == {0.25: 1.0, 1.0: 1.0}


@pytest.mark.parametrize("labels", [np.ones(4), np.zeros(4)])
def test_one_sided_labels_are_a_user_error(labels):
    with pytest.raises(PlscError, match="genuine and impostor"):
        tar_at_far(np.arange(4.0), labels)
