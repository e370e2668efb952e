"""Sub-center Partial FC against a numpy classifier with K centres per class, and the cleaning maths."""
import math

import numpy as np
import paddle
import pytest

from plsc.errors import PlscError
from plsc.heads.subcenter import SubCenterPartialFC
from plsc.heads.subcenter_clean import clean_with_subcenters, split_subcenters
from plsc.loss.margin import MarginLoss

NUM_CLASSES, DIM, K = 11, 6, 3


def numpy_subcenter_arcface(x, table, labels, m=0.5, s=16.0):
    """ArcFace over max-over-K cosines: loss, d/dx [N, D], d/d table [C, K*D] (float64)."""
    centers = table.reshape(len(table), K, DIM).astype(np.float64)
    x = x.astype(np.float64)
    x_norm = np.linalg.norm(x, axis=1, keepdims=True)
    c_norm = np.linalg.norm(centers, axis=2, keepdims=True)
    x_unit, c_unit = x / x_norm, centers / c_norm
    cos_all = np.einsum("nd,ckd->nck", x_unit, c_unit)
    best = cos_all.argmax(axis=2)
    cos = np.take_along_axis(cos_all, best[..., None], axis=2)[..., 0]
    logits, slopes = s * cos.copy(), np.full(cos.shape, s)
    rows = np.arange(len(labels))
    for i, y in enumerate(labels):
        theta = math.acos(cos[i, y])
        logits[i, y] = s * math.cos(theta + m)
        slopes[i, y] = s * math.sin(theta + m) / math.sin(theta)
    shift = logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(logits - shift).sum(axis=1, keepdims=True)) + shift
    loss = np.mean(log_norm[:, 0] - logits[rows, labels])
    grad_logits = np.exp(logits - log_norm)
    grad_logits[rows, labels] -= 1
    grad_cos = grad_logits / len(labels) * slopes
    grad_x_unit = np.zeros_like(x)
    grad_c_unit = np.zeros_like(centers)
    for i in range(len(x)):
        for c in range(len(centers)):
            grad_x_unit[i] += grad_cos[i, c] * c_unit[c, best[i, c]]
            grad_c_unit[c, best[i, c]] += grad_cos[i, c] * x_unit[i]
    grad_x = (grad_x_unit - x_unit * np.sum(grad_x_unit * x_unit, axis=1, keepdims=True)) / x_norm
    grad_c = (grad_c_unit - c_unit * np.sum(grad_c_unit * c_unit, axis=2, keepdims=True)) / c_norm
    return loss, grad_x, grad_c.reshape(len(table), K * DIM), cos


def batch(seed, rows=7):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((rows, DIM)).astype(np.float32), rng.integers(0, NUM_CLASSES, size=rows)


def test_full_head_matches_numpy_max_over_subcenters():
    head = SubCenterPartialFC(NUM_CLASSES, DIM, num_subcenters=K, seed=5)
    assert head.weight.shape == [NUM_CLASSES, K * DIM]
    x, labels = batch(1)
    x_tensor = paddle.to_tensor(x, stop_gradient=False)
    cos, local_labels = head(x_tensor, paddle.to_tensor(labels))
    loss = MarginLoss(m2=0.5, s=16.0)(cos, local_labels)
    loss.backward()
    expected_loss, grad_x, grad_table, expected_cos = numpy_subcenter_arcface(x, head.weight.numpy(), labels)
    np.testing.assert_allclose(cos.numpy(), expected_cos, rtol=1e-5, atol=1e-6)
    assert float(loss) == pytest.approx(expected_loss, rel=1e-5)
    np.testing.assert_allclose(x_tensor.grad.numpy(), grad_x, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(head.sampled_weight.grad.numpy(), grad_table, rtol=1e-4, atol=1e-6)
    # Only each (sample, class) pair's closest sub-centre receives gradient.
    per_centre = np.abs(head.sampled_weight.grad.numpy().reshape(NUM_CLASSES, K, DIM)).sum(axis=2)
    assert np.all((per_centre > 0).sum(axis=1) <= len(labels))


def test_sampling_takes_all_subcenters_of_a_sampled_class():
    head = SubCenterPartialFC(40, DIM, sample_ratio=0.3, num_subcenters=K, seed=5)
    x, labels = batch(2, rows=5)
    labels = labels * 3  # classes 0..30
    x_tensor = paddle.to_tensor(x, stop_gradient=False)
    cos, local_labels = head(x_tensor, paddle.to_tensor(labels))
    index = head.sampled_index.numpy()
    assert len(index) == 12 and set(labels) <= set(index)
    assert head.sampled_weight.shape == [12, K * DIM]
    np.testing.assert_array_equal(head.sampled_weight.numpy(), head.weight.numpy()[index])
    loss = MarginLoss(m2=0.5, s=16.0)(cos, local_labels)
    loss.backward()
    column_labels = np.searchsorted(index, labels)
    np.testing.assert_array_equal(local_labels.numpy(), column_labels)
    expected_loss, grad_x, grad_rows, _ = numpy_subcenter_arcface(x, head.weight.numpy()[index], column_labels)
    assert float(loss) == pytest.approx(expected_loss, rel=1e-5)
    np.testing.assert_allclose(head.sampled_weight.grad.numpy(), grad_rows, rtol=1e-4, atol=1e-6)


def test_one_subcenter_is_partial_fc():
    from plsc.heads.partial_fc import PartialFC

    x, labels = batch(3)
    single = SubCenterPartialFC(NUM_CLASSES, DIM, num_subcenters=1, seed=9)
    plain = PartialFC(NUM_CLASSES, DIM, seed=9)
    np.testing.assert_array_equal(single.weight.numpy(), plain.weight.numpy())
    np.testing.assert_allclose(single(paddle.to_tensor(x), paddle.to_tensor(labels))[0].numpy(),
                               plain(paddle.to_tensor(x), paddle.to_tensor(labels))[0].numpy(), rtol=1e-6)
    with pytest.raises(PlscError):
        SubCenterPartialFC(NUM_CLASSES, DIM, num_subcenters=0)


def cleaning_case():
    """3 classes x 3 sub-centres on orthogonal axes; images near the dominant one, a few noisy."""
    dim = 9
    subcenters = np.eye(dim).reshape(3, 3, dim) * 2.0  # class c, sub-centre k = axis 3c + k
    rng = np.random.default_rng(0)
    labels, embeddings = [], []
    for c, (major, minor) in enumerate([(0, 1), (2, 0), (1, 2)]):
        for k, count in ((major, 6), (minor, 2)):
            for _ in range(count):
                labels.append(c)
                embeddings.append(np.eye(dim)[3 * c + k] + rng.normal(0, 0.05, dim))
    return subcenters, np.array(embeddings), np.array(labels)


def test_cleaning_keeps_the_dominant_subcenter_and_flags_far_images():
    subcenters, embeddings, labels = cleaning_case()
    result = clean_with_subcenters(subcenters, embeddings, labels, threshold_degrees=75.0)
    np.testing.assert_array_equal(result.dominant, [0, 2, 1])
    np.testing.assert_array_equal(result.dominant_centers, subcenters[[0, 1, 2], [0, 2, 1]])
    # Independent check, image by image: angle to the dominant axis of its class.
    for i, (x, c) in enumerate(zip(embeddings, labels)):
        axis = subcenters[c, result.dominant[c]]
        angle = np.degrees(np.arccos(np.dot(x, axis) / np.linalg.norm(x) / np.linalg.norm(axis)))
        assert result.angle_to_dominant[i] == pytest.approx(angle, abs=1e-6)
        assert result.noisy[i] == (angle > 75.0)
    assert result.noisy.sum() == 6  # the two minority images of each class (~90 degrees away)


def test_split_subcenters_checks_the_row_width():
    table = np.arange(5 * 6, dtype=np.float32).reshape(5, 6)
    assert split_subcenters(table, 3).shape == (5, 3, 2)
    np.testing.assert_array_equal(split_subcenters(table, 3)[2, 1], table[2, 2:4])
    with pytest.raises(PlscError, match="sub-centres"):
        split_subcenters(table, 4)
