"""10-fold verification accuracy against a brute-force reference written independently."""
import numpy as np
import pytest

from plsc.metrics.verification import LFWAcc, kfold_accuracy, pair_distances


def reference_kfold(embeddings, issame, folds=10):
    # Independent reference: explicit loops, cosine similarity instead of squared distance
    # (for unit vectors d^2 = 2 - 2cos, so threshold t on d^2 is cos > 1 - t/2).
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    cos = np.array([unit[2 * k] @ unit[2 * k + 1] for k in range(len(issame))])
    thresholds = [i * 0.01 for i in range(400)]
    pairs = len(issame)
    bounds = [(pairs // folds) * f + min(f, pairs % folds) for f in range(folds + 1)]
    accuracies = []
    for f in range(folds):
        test = list(range(bounds[f], bounds[f + 1]))
        train = [i for i in range(pairs) if i not in test]
        best_t, best_acc = None, -1
        for t in thresholds:
            acc = np.mean([(cos[i] > 1 - t / 2) == issame[i] for i in train])
            if acc > best_acc:
                best_t, best_acc = t, acc
        accuracies.append(np.mean([(cos[i] > 1 - best_t / 2) == issame[i] for i in test]))
    return np.mean(accuracies), np.std(accuracies)


def make_pairs(rng, pairs, noise):
    issame = rng.random(pairs) < 0.5
    first = rng.normal(size=(pairs, 16))
    second = np.where(issame[:, None], first + noise * rng.normal(size=(pairs, 16)), rng.normal(size=(pairs, 16)))
    embeddings = np.empty((2 * pairs, 16))
    embeddings[0::2], embeddings[1::2] = first, second
    return embeddings, issame


@pytest.mark.parametrize("noise", [0.3, 1.0, 3.0])
def test_kfold_matches_reference(noise):
    embeddings, issame = make_pairs(np.random.default_rng(1), 203, noise)
    mean, std, _ = kfold_accuracy(pair_distances(embeddings), issame)
    ref_mean, ref_std = reference_kfold(embeddings, issame)
    # Distances near a threshold can tip either way in floating point; allow one pair per fold.
    assert mean == pytest.approx(ref_mean, abs=1 / 20)
    assert std == pytest.approx(ref_std, abs=0.05)


def test_separable_pairs_score_perfectly_and_random_ones_near_chance():
    rng = np.random.default_rng(2)
    good, issame = make_pairs(rng, 400, 0.05)
    assert LFWAcc()(good, issame)["accuracy"] == 1.0
    noise = rng.normal(size=(800, 16))
    assert abs(LFWAcc()(noise, issame)["accuracy"] - 0.5) < 0.1


def test_pair_distances_range():
    rng = np.random.default_rng(3)
    d = pair_distances(rng.normal(size=(10, 4)))
    assert d.shape == (5,) and np.all(d >= 0) and np.all(d <= 4 + 1e-9)


def test_xnorm_is_insightfaces_mean_norm_of_single_images():
    # insightface's verification test: every embedding of the image batch and of the flipped batch
    # counted on its own, norm averaged; the pair embeddings are their sums.
    rng = np.random.default_rng(7)
    image = rng.normal(size=(40, 16)) * 3.0
    mirror = image + 0.5 * rng.normal(size=image.shape)
    issame = np.arange(20) % 2 == 0
    expected = sum(np.linalg.norm(row) for row in np.r_[image, mirror]) / 80
    figures = LFWAcc(flip_test=True)(image + mirror, issame, image_embeddings=np.r_[image, mirror])
    assert figures["xnorm"] == pytest.approx(expected, rel=1e-12)
    # the norm of the sums is about twice that: what was logged before
    assert LFWAcc(flip_test=True)(image + mirror, issame)["xnorm"] == pytest.approx(
        np.mean(np.linalg.norm(image + mirror, axis=1)))
    assert np.mean(np.linalg.norm(image + mirror, axis=1)) > 1.8 * expected
    # without flip test the embeddings are single images already
    assert LFWAcc(flip_test=False)(image, issame)["xnorm"] == pytest.approx(np.mean(np.linalg.norm(image, axis=1)))
