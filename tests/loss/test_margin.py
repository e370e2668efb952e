"""Combined margin logits and softmax cross-entropy against independent numpy computations."""
import math

import numpy as np
import paddle
import pytest

from plsc.errors import PlscError
from plsc.loss.margin import MarginLoss, margin_logits, margined_target_cosine
from plsc.loss.target_softmax import model_parallel_softmax_cross_entropy
from plsc.registry import LOSSES

MARGINS = {  # (m1, m2, m3)
    "arcface": (1.0, 0.5, 0.0),
    "cosface": (1.0, 0.0, 0.4),
    "sphereface": (1.35, 0.0, 0.0),
    "combined": (1.0, 0.3, 0.2),
    "combined_m1": (1.2, 0.4, 0.1),
}


# ---- numpy reference ------------------------------------------------------------------------
def reference_target(cos_value, m1, m2, m3):
    """Scalar margined target cosine and its derivative d/dcos, written from the formula."""
    theta = math.acos(cos_value)
    theta_max = (math.pi - m2) / m1
    if theta <= theta_max:
        value = math.cos(m1 * theta + m2) - m3
        # d/dc cos(m1*acos(c) + m2) = m1 * sin(m1*theta + m2) / sin(theta)
        slope = m1 * math.sin(m1 * theta + m2) / math.sin(theta)
    else:  # linear continuation meeting -1 - m3 at theta_max
        value = cos_value - 1.0 - math.cos(theta_max) - m3
        slope = 1.0
    return value, slope


def reference_logits_and_slopes(cos, labels, m1, m2, m3, s):
    """Numpy logits and d logit / d cos, element by element."""
    logits = s * cos.astype(np.float64)
    slopes = np.full(cos.shape, s, dtype=np.float64)
    for row, label in enumerate(labels):
        if label >= 0:
            value, slope = reference_target(float(cos[row, label]), m1, m2, m3)
            logits[row, label] = s * value
            slopes[row, label] = s * slope
    return logits, slopes


def reference_cross_entropy(logits, labels):
    """Mean softmax CE and its gradient w.r.t. the logits (float64)."""
    logits = logits.astype(np.float64)
    shift = logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(logits - shift).sum(axis=1)) + shift[:, 0]
    rows = np.arange(len(labels))
    loss = np.mean(log_norm - logits[rows, labels])
    softmax = np.exp(logits - log_norm[:, None])
    onehot = np.zeros_like(logits)
    onehot[rows, labels] = 1.0
    return loss, (softmax - onehot) / len(labels)


def random_case(seed, rows=6, columns=9):
    rng = np.random.default_rng(seed)
    cos = rng.uniform(-0.97, 0.97, size=(rows, columns))
    labels = rng.integers(0, columns, size=rows)
    cos[0, labels[0]] = -0.95  # theta + 0.5 > pi: on the fallback branch for ArcFace
    cos[1, labels[1]] = 0.9
    return cos, labels


def test_reference_slope_matches_finite_differences():
    # Guards the test's own analytic derivative.
    for m1, m2, m3 in MARGINS.values():
        for cos_value in (-0.95, -0.6, -0.1, 0.3, 0.8):
            step = 1e-6
            numeric = (reference_target(cos_value + step, m1, m2, m3)[0]
                       - reference_target(cos_value - step, m1, m2, m3)[0]) / (2 * step)
            assert reference_target(cos_value, m1, m2, m3)[1] == pytest.approx(numeric, rel=1e-5, abs=1e-6)


# ---- margin_logits -------------------------------------------------------------------------
@pytest.mark.parametrize("name", MARGINS)
def test_margin_logits_value_and_gradient(name):
    m1, m2, m3 = MARGINS[name]
    s = 64.0
    cos, labels = random_case(1)
    labels[3] = -1  # target on another rank: the row keeps plain s * cos
    expected, slopes = reference_logits_and_slopes(cos, labels, m1, m2, m3, s)

    cos_tensor = paddle.to_tensor(cos, dtype="float64", stop_gradient=False)
    logits = margin_logits(cos_tensor, paddle.to_tensor(labels, dtype="int64"), m1, m2, m3, s)
    weights = np.random.default_rng(2).standard_normal(cos.shape)
    (logits * paddle.to_tensor(weights)).sum().backward()

    np.testing.assert_allclose(logits.numpy(), expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(cos_tensor.grad.numpy(), weights * slopes, rtol=1e-6, atol=1e-8)


def test_margin_logits_float32_matches_reference():
    m1, m2, m3 = MARGINS["arcface"]
    cos, labels = random_case(3)
    expected, _ = reference_logits_and_slopes(cos, labels, m1, m2, m3, 64.0)
    logits = margin_logits(paddle.to_tensor(cos, dtype="float32"), paddle.to_tensor(labels), m1, m2, m3, 64.0)
    assert logits.dtype == paddle.float32
    np.testing.assert_allclose(logits.numpy(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", ["arcface", "sphereface", "combined", "combined_m1"])
def test_target_is_continuous_and_decreasing_in_theta(name):
    m1, m2, m3 = MARGINS[name]
    step = 1e-3
    theta = np.arange(0.01, math.pi - 0.01, step)
    values = margined_target_cosine(paddle.to_tensor(np.cos(theta)), m1, m2, m3).numpy()
    differences = np.diff(values)
    assert np.all(differences < 0), "margined target cosine must fall as the angle grows"
    # |d value / d theta| <= m1 on the arc and <= 1 on the continuation: no jump anywhere.
    assert np.max(np.abs(differences)) <= max(m1, 1.0) * step * 1.01
    theta_max = (math.pi - m2) / m1
    if theta_max < math.pi:  # both branches are exercised
        assert theta.min() < theta_max < theta.max()
        around = margined_target_cosine(paddle.to_tensor(np.cos([theta_max - 1e-6, theta_max + 1e-6])),
                                        m1, m2, m3).numpy()
        assert around[0] == pytest.approx(-1.0 - m3, abs=1e-5)
        assert around[1] == pytest.approx(-1.0 - m3, abs=1e-5)


def test_arcface_at_cos_minus_095_uses_the_continuation():
    # theta = acos(-0.95) = 2.82 > pi - 0.5: cos(theta + m2) would be -0.79, above the -1 of theta_max.
    value = margined_target_cosine(paddle.to_tensor([-0.95], dtype="float64"), 1.0, 0.5, 0.0).numpy()[0]
    assert value == pytest.approx(-0.95 - 1.0 + math.cos(0.5), abs=1e-12)
    assert value < -1.0


def test_gradient_stays_finite_at_unit_cosine():
    cos = paddle.to_tensor([[1.0, 0.2], [-1.0, 0.1]], dtype="float32", stop_gradient=False)
    logits = margin_logits(cos, paddle.to_tensor([0, 0]), 1.0, 0.5, 0.0, 64.0)
    logits.sum().backward()
    assert np.all(np.isfinite(logits.numpy())) and np.all(np.isfinite(cos.grad.numpy()))


# ---- softmax cross-entropy and MarginLoss ----------------------------------------------------
@pytest.mark.parametrize("model_parallel", [False, True])  # one process: the collectives are no-ops
def test_softmax_cross_entropy_value_and_gradient(model_parallel):
    rng = np.random.default_rng(4)
    logits = rng.normal(0.0, 30.0, size=(7, 11))
    logits[2] += 900.0  # exp would overflow without the max shift
    labels = rng.integers(0, 11, size=7)
    expected_loss, expected_grad = reference_cross_entropy(logits, labels)

    logits_tensor = paddle.to_tensor(logits, dtype="float64", stop_gradient=False)
    loss = model_parallel_softmax_cross_entropy(logits_tensor, paddle.to_tensor(labels), model_parallel)
    loss.backward()
    assert loss.shape == []
    assert float(loss) == pytest.approx(expected_loss, rel=1e-10)
    np.testing.assert_allclose(logits_tensor.grad.numpy(), expected_grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name", MARGINS)
def test_margin_loss_value_and_gradient_wrt_cosines(name):
    m1, m2, m3 = MARGINS[name]
    s = 32.0
    cos, labels = random_case(5, rows=8, columns=13)
    logits, slopes = reference_logits_and_slopes(cos, labels, m1, m2, m3, s)
    expected_loss, logits_grad = reference_cross_entropy(logits, labels)

    loss_fn = LOSSES.build("MarginLoss", m1=m1, m2=m2, m3=m3, s=s, model_parallel=False)
    cos_tensor = paddle.to_tensor(cos, dtype="float32", stop_gradient=False)
    loss = loss_fn(cos_tensor, paddle.to_tensor(labels, dtype="int64"))
    loss.backward()
    assert loss.dtype == paddle.float32
    assert float(loss) == pytest.approx(expected_loss, rel=1e-5)
    expected_grad = logits_grad * slopes
    np.testing.assert_allclose(cos_tensor.grad.numpy(), expected_grad, rtol=1e-4,
                               atol=1e-5 * np.abs(expected_grad).max())


def test_margin_loss_computes_in_float32_for_other_input_dtypes():
    cos, labels = random_case(6)
    reference = MarginLoss()(paddle.to_tensor(cos, dtype="float32"), paddle.to_tensor(labels))
    from_double = MarginLoss()(paddle.to_tensor(cos, dtype="float64"), paddle.to_tensor(labels))
    assert from_double.dtype == paddle.float32
    assert float(from_double) == pytest.approx(float(reference), rel=1e-6)


def test_margin_loss_signature_is_the_config_contract():
    assert LOSSES.parameters("MarginLoss") == {"m1": 1.0, "m2": 0.5, "m3": 0.0, "s": 64.0,
                                               "model_parallel": False}


@pytest.mark.parametrize("kwargs", [{"m1": 0.0}, {"s": -1.0}, {"m2": -0.1}])
def test_margin_loss_rejects_meaningless_margins(kwargs):
    with pytest.raises(PlscError, match="MarginLoss"):
        MarginLoss(**kwargs)
