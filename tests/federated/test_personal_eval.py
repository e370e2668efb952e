"""Personalised 1:1 and 1:N figures on hand-made scores."""
import math

import numpy as np

from plsc.federated.personal_eval import average_metrics, gallery_means, one_to_n, one_to_one


def test_gallery_is_the_normalised_mean_of_normalised_features():
    features = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    gallery = gallery_means(features, [0, 0, 1], 2)
    np.testing.assert_allclose(gallery[0], [math.sqrt(0.5), math.sqrt(0.5)])
    np.testing.assert_allclose(gallery[1], [math.sqrt(0.5), math.sqrt(0.5)])


def test_one_to_one_excludes_self_pairs_and_uses_all_clients_images():
    # Own identity 0 (two images), another client's identity 5: impostors far, genuine close.
    features = np.array([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [0.1, 0.99]])
    labels = np.array([0, 0, 5, 5])
    result = one_to_one(features, labels, labels == 0, fprs=[0.5])
    assert result[0.5] == 1.0  # 2 genuine pairs (both directions), 4 impostors all below


def test_one_to_n_threshold_is_the_kth_largest_non_mate_score():
    gallery = np.array([[1.0, 0.0], [0.0, 1.0]])
    angles = np.array([0.1, 0.5, 1.2, 0.3, 0.9, 0.7])  # mated queries of identities 0 and 1
    queries = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labels = np.array([0, 0, 1, 9, 9, 9])  # identity 9 is in no gallery: non-mated
    scores = queries @ gallery.T
    nonmate_top = np.sort(scores[3:].max(axis=1))[::-1]
    mate = np.array([scores[0, 0], scores[1, 0], scores[2, 1]])
    result = one_to_n(gallery, np.array([0, 1]), queries, labels, fpirs=[0.5, 1e-6])
    assert result[0.5] == np.mean(mate > nonmate_top[1])  # k = ceil(3 x 0.5) = 2
    assert result[1e-6] == np.mean(mate > nonmate_top[0])


def test_average_over_clients():
    figures = average_metrics([{"tpr": {"1e-02": 0.5}}, {"tpr": {"1e-02": 1.0}}])
    assert figures == {"tpr": {"1e-02": 0.75}}
