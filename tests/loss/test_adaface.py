"""AdaFace against the numpy reference of the paper's formula, incl. its clips and running statistics."""
import math

import numpy as np
import paddle
import pytest
from loss_reference import ada_face

from plsc.errors import PlscError
from plsc.loss.adaface import AdaFace

S = 16.0


def case(seed, rows=8, columns=7):
    rng = np.random.default_rng(seed)
    cos = rng.uniform(-0.9, 0.9, size=(rows, columns))
    labels = rng.integers(0, columns, size=rows)
    norms = rng.uniform(10.0, 40.0, size=rows)
    norms[0] = 0.0  # zero-norm embedding: clipped to 0.001, the lowest quality
    norms[1] = 500.0  # beyond the safe range: clipped to 100
    cos[2, labels[2]] = 0.97  # theta ~ 0.24 with a high norm: theta - m z_hat clips at eps (no gradient)
    norms[2] = 100.0
    cos[3, labels[3]] = -0.97  # theta + m beyond pi for a low norm: clips at pi - eps (no gradient)
    norms[3] = 0.0
    cos[4, labels[4]] = 0.5
    return cos, labels, norms


def step(loss, cos, labels, norms):
    cos_tensor = paddle.to_tensor(cos.astype(np.float32), stop_gradient=False)
    norm_tensor = paddle.to_tensor(norms.astype(np.float32), stop_gradient=False)
    value = loss(cos_tensor, paddle.to_tensor(labels), norm_tensor)
    value.backward()
    return float(value), cos_tensor.grad.numpy(), norm_tensor.grad


def test_two_steps_match_the_paper_formula():
    loss = AdaFace(m=0.4, h=0.333, s=S, t_alpha=0.01)
    mean, std = 20.0, 100.0  # the paper code's starting statistics
    for seed in (1, 2):
        cos, labels, norms = case(seed)
        expected_loss, expected_grad, (mean, std), _, z_hat = ada_face(cos, labels, norms, mean, std, s=S)
        value, grad, norm_grad = step(loss, cos, labels, norms)
        assert value == pytest.approx(expected_loss, rel=1e-5)
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-6)
        assert loss.norm_mean.item() == pytest.approx(mean, rel=1e-6)
        assert loss.norm_std.item() == pytest.approx(std, rel=1e-6)
        # The norm is a quality signal only: no gradient flows into it.
        assert norm_grad is None or not np.any(norm_grad.numpy())


def test_first_step_statistics_and_the_clipped_rows():
    cos, labels, norms = case(3)
    loss = AdaFace(h=10.0, s=S)  # a large h saturates z_hat at +-1 for the extreme norms
    _, grad, _ = step(loss, cos, labels, norms)
    *_, z_hat = ada_face(cos, labels, norms, 20.0, 100.0, h=10.0, s=S)
    assert z_hat[2] == 1.0 and z_hat[3] == -1.0
    safe = np.clip(norms, 0.001, 100.0)
    assert loss.norm_mean.item() == pytest.approx(0.01 * safe.mean() + 0.99 * 20.0, rel=1e-6)
    assert loss.norm_std.item() == pytest.approx(0.01 * safe.std(ddof=1) + 0.99 * 100.0, rel=1e-6)
    # Rows 2 and 3 sit at the angle clips: their target logits get no gradient.
    assert grad[2, labels[2]] == 0.0 and grad[3, labels[3]] == 0.0
    assert np.all(np.isfinite(grad))


def test_margin_moves_from_arcface_to_cosface_with_the_norm():
    # z_hat = -1 (low norm): cos(theta + m); z_hat = +1 (high norm): cos(theta - m) - 2m.
    cos = np.array([[0.5, 0.0], [0.5, 0.0]])
    labels = np.array([0, 0])
    norms = np.array([1.0, 1000.0])
    *_, logits, z_hat = ada_face(cos, labels, norms, 20.0, 100.0, h=10.0, s=1.0)
    assert list(z_hat) == [-1.0, 1.0]
    theta = math.acos(0.5)
    assert logits[0, 0] == pytest.approx(math.cos(theta + 0.4))
    assert logits[1, 0] == pytest.approx(math.cos(theta - 0.4) - 0.8)
    loss = AdaFace(h=10.0, s=1.0)
    value, _, _ = step(loss, cos, labels, norms)
    expected = np.mean([np.log(np.exp(row).sum()) - row[0] for row in logits])
    assert value == pytest.approx(expected, rel=1e-5)


def test_eval_mode_keeps_the_statistics():
    cos, labels, norms = case(4)
    loss = AdaFace()
    loss.eval()
    step(loss, cos, labels, norms)
    assert (loss.norm_mean.item(), loss.norm_std.item()) == (20.0, 100.0)


def test_a_single_sample_batch_has_zero_spread():
    loss = AdaFace(s=S)
    step(loss, np.array([[0.3, 0.1]]), np.array([0]), np.array([25.0]))
    assert loss.norm_std.item() == pytest.approx(0.99 * 100.0)


def test_rejects_bad_parameters():
    for kwargs in ({"m": -1.0}, {"s": 0.0}, {"t_alpha": 0.0}, {"h": -0.1}):
        with pytest.raises(PlscError):
            AdaFace(**kwargs)
