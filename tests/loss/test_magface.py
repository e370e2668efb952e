"""MagFace and the norm it reads, against the numpy reference of the paper's formula."""
import math

import numpy as np
import paddle
import pytest
from loss_reference import l2_softmax, mag_face

from plsc.errors import PlscError
from plsc.loss.inputs import LossInputs, safe_norm
from plsc.loss.l2_softmax import L2Softmax
from plsc.loss.magface import MagFace

PAPER = dict(l_a=10.0, u_a=110.0, l_m=0.45, u_m=0.8, lambda_g=35.0, s=64.0)


def case(seed, rows=8, columns=7):
    rng = np.random.default_rng(seed)
    cos = rng.uniform(-0.9, 0.9, size=(rows, columns))
    labels = rng.integers(0, columns, size=rows)
    norms = rng.uniform(15.0, 100.0, size=rows)
    norms[0] = 3.0  # below l_a: margin l_m, no gradient into the norm
    norms[1] = 150.0  # above u_a: margin u_m, no gradient
    cos[2, labels[2]] = -0.8  # theta + m(a) > pi: the monotone continuation (with margin gradient)
    norms[2] = 90.0
    return cos, labels, norms


def step(loss, cos, labels, norms):
    cos_tensor = paddle.to_tensor(cos.astype(np.float32), stop_gradient=False)
    norm_tensor = paddle.to_tensor(norms.astype(np.float32), stop_gradient=False)
    # One process: the global norms and this rank's norms are the same rows.
    value = loss(cos_tensor, paddle.to_tensor(labels), norm_tensor, norm_tensor)
    value.backward()
    return float(value), cos_tensor.grad.numpy(), norm_tensor.grad.numpy()


def test_matches_the_paper_formula_with_paper_defaults():
    for seed in (1, 2):
        cos, labels, norms = case(seed)
        expected_loss, expected_grad_cos, expected_grad_norms, margins = mag_face(cos, labels, norms, **PAPER)
        assert math.acos(cos[2, labels[2]]) + margins[2] > math.pi
        value, grad_cos, grad_norms = step(MagFace(), cos, labels, norms)
        assert value == pytest.approx(expected_loss, rel=1e-5)
        np.testing.assert_allclose(grad_cos, expected_grad_cos, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(grad_norms, expected_grad_norms, rtol=1e-4, atol=1e-7)
        assert grad_norms[0] == 0.0 and grad_norms[1] == 0.0


def test_margin_runs_linearly_from_l_m_to_u_m():
    _, _, _, margins = mag_face(np.zeros((3, 2)), np.zeros(3, dtype=int), np.array([10.0, 60.0, 110.0]), **PAPER)
    np.testing.assert_allclose(margins, [0.45, 0.625, 0.8])


def test_regulariser_alone_is_minimal_at_u_a():
    # lambda_g only: with s tiny the softmax part is ~log(C) and flat; g(a) = 1/a + a/u_a^2 dominates.
    loss = MagFace(lambda_g=1.0, s=1e-6)
    values = [step(loss, np.zeros((1, 2)), np.array([0]), np.array([a]))[0] for a in (50.0, 109.0)]
    g = [1 / a + a / 110.0 ** 2 for a in (50.0, 109.0)]
    assert values[0] - values[1] == pytest.approx(g[0] - g[1], rel=1e-4)


def test_zero_norm_embedding_gives_finite_norm_and_gradient():
    embeddings = paddle.to_tensor(np.array([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]], np.float32), stop_gradient=False)
    norms = safe_norm(embeddings)
    np.testing.assert_allclose(norms.numpy(), [1e-6, 5.0], rtol=1e-5)
    norms.sum().backward()
    np.testing.assert_allclose(embeddings.grad.numpy(), [[0, 0, 0], [0.6, 0.8, 0]], atol=1e-6)
    # Through MagFace: the zero row is clipped to l_a and contributes no NaN.
    embeddings.clear_gradient()
    cos = paddle.to_tensor(np.array([[0.2, 0.1], [0.3, -0.1]], np.float32))
    inputs = LossInputs(cos, paddle.to_tensor([0, 1]), embeddings, paddle.to_tensor([0, 1]), head=None)
    loss = MagFace(l_a=1.0, u_a=10.0)(cos, inputs.labels_local, inputs.embedding_norms_global,
                                        inputs.embedding_norms)
    loss.backward()
    assert np.isfinite(float(loss)) and np.all(np.isfinite(embeddings.grad.numpy()))


def test_rejects_bad_ranges():
    for kwargs in ({"l_a": 110.0}, {"l_m": 0.9}, {"lambda_g": -1.0}, {"s": 0.0}):
        with pytest.raises(PlscError):
            MagFace(**kwargs)


def test_l2_softmax_is_scaled_cosine_softmax():
    cos, labels, _ = case(5)
    cos_tensor = paddle.to_tensor(cos.astype(np.float32), stop_gradient=False)
    value = L2Softmax(s=30.0)(cos_tensor, paddle.to_tensor(labels))
    value.backward()
    expected_loss, expected_grad = l2_softmax(cos, labels, 30.0)
    assert float(value) == pytest.approx(expected_loss, rel=1e-5)
    np.testing.assert_allclose(cos_tensor.grad.numpy(), expected_grad, rtol=1e-4, atol=1e-7)
    with pytest.raises(PlscError):
        L2Softmax(s=-1.0)
