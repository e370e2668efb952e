"""FedFR's loss terms against numpy written from the formulas."""
import numpy as np
import paddle

from plsc.federated.losses import contrastive_loss, cosface_loss, personal_bce_loss, warp_cosine


def unit(rows):
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def log_softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def test_cosface_over_local_and_public_centres_matches_numpy():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(6, 8)).astype(np.float32)
    local, public = rng.normal(size=(3, 8)).astype(np.float32), rng.normal(size=(5, 8)).astype(np.float32)
    labels = np.array([0, 2, 3, 7, 1, 5])  # columns 0..2 local, 3..7 public
    centers = np.concatenate([local, public])
    cos = unit(embeddings) @ unit(centers).T
    logits = 30.0 * (cos - 0.4 * np.eye(8)[labels])
    expected = -log_softmax(logits)[np.arange(6), labels].mean()
    got = cosface_loss(paddle.to_tensor(embeddings), paddle.concat([paddle.to_tensor(local), paddle.to_tensor(public)]),
                       paddle.to_tensor(labels), 30.0, 0.4)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_warp_cosine_endpoints_and_formula():
    values = np.array([-1.0, -0.3, 0.0, 0.5, 1.0], dtype=np.float32)
    np.testing.assert_allclose(warp_cosine(paddle.to_tensor(values)).numpy(), 2 * ((values + 1) / 2) ** 3 - 1,
                               rtol=1e-6)
    np.testing.assert_allclose(warp_cosine(paddle.to_tensor(values)).numpy()[[0, -1]], [-1.0, 1.0])


def test_personal_bce_with_public_negatives_matches_numpy():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(5, 6)).astype(np.float32)
    weight = rng.normal(size=(4, 6)).astype(np.float32)
    bias = rng.normal(size=4).astype(np.float32) * 0.1
    labels = np.array([0, 3, -1, 2, -1])  # -1: a public image, negative for every class
    g = 2 * ((unit(features) @ unit(weight).T + 1) / 2) ** 3 - 1
    target = np.zeros((5, 4))
    for row, label in enumerate(labels):
        if label >= 0:
            target[row, label] = 1
    logits = 30 * (g - 0.4) * target + 30 * (g + 0.4) * (1 - target) + bias
    probability = 1 / (1 + np.exp(-logits))
    eps = 1e-300
    per_element = -(0.7 / 30 * target * np.log(probability + eps)
                    + 0.3 / 30 * (1 - target) * np.log(1 - probability + eps))
    expected = per_element.sum(axis=1).mean()
    got = personal_bce_loss(paddle.to_tensor(features), paddle.to_tensor(weight), paddle.to_tensor(bias),
                            paddle.to_tensor(labels))
    np.testing.assert_allclose(float(got), expected, rtol=1e-4)


def test_contrastive_term_matches_numpy_and_prefers_the_global_model():
    rng = np.random.default_rng(2)
    z, z_global, z_prev = (rng.normal(size=(7, 5)).astype(np.float32) for _ in range(3))
    positive = np.sum(unit(z) * unit(z_global), axis=1) / 0.5
    negative = np.sum(unit(z) * unit(z_prev), axis=1) / 0.5
    expected = np.mean(np.log(np.exp(positive) + np.exp(negative)) - positive)
    got = contrastive_loss(paddle.to_tensor(z), paddle.to_tensor(z_global), paddle.to_tensor(z_prev), 0.5)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    near_global = contrastive_loss(paddle.to_tensor(z_global), paddle.to_tensor(z_global), paddle.to_tensor(z_prev))
    near_previous = contrastive_loss(paddle.to_tensor(z_prev), paddle.to_tensor(z_global), paddle.to_tensor(z_prev))
    assert float(near_global) < float(near_previous)
