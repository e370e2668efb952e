"""CurricularFace against the numpy reference of the paper's formula (tests/loss/loss_reference.py)."""
import math

import numpy as np
import paddle
import pytest
from loss_reference import curricular_face

from plsc.errors import PlscError
from plsc.loss.curricular import CurricularFace


def random_case(seed, rows=6, columns=9):
    rng = np.random.default_rng(seed)
    cos = rng.uniform(-0.9, 0.9, size=(rows, columns))
    labels = rng.integers(0, columns, size=rows)
    cos[0, labels[0]] = -0.95  # theta_y + 0.5 > pi: the monotone continuation
    cos[1, labels[1]] = 0.2  # a target with several negatives above cos(theta + m): hard ones
    cos[1, (labels[1] + 1) % columns] = 0.8
    cos[2, labels[2]] = 0.95  # an easy target: no hard negatives in its row
    cos[2, :] = np.minimum(cos[2, :], 0.3)
    cos[2, labels[2]] = 0.95
    return cos, labels


def step(loss, cos, labels):
    cos_tensor = paddle.to_tensor(cos.astype(np.float32), stop_gradient=False)
    value = loss(cos_tensor, paddle.to_tensor(labels))
    value.backward()
    return float(value), cos_tensor.grad.numpy()


def test_two_steps_match_the_paper_formula_and_the_ema():
    loss = CurricularFace(m=0.5, s=16.0)
    t = 0.0
    for seed in (1, 2):
        cos, labels = random_case(seed)
        expected_loss, expected_grad, t, _ = curricular_face(cos, labels, t, m=0.5, s=16.0)
        value, grad = step(loss, cos, labels)
        assert value == pytest.approx(expected_loss, rel=1e-5)
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-6)
        assert loss.t.item() == pytest.approx(t, rel=1e-6)


def test_first_step_sets_t_to_one_percent_of_the_mean_target_cosine():
    cos, labels = random_case(3)
    loss = CurricularFace()
    assert loss.t.item() == 0.0
    step(loss, cos, labels)
    assert loss.t.item() == pytest.approx(0.01 * cos[np.arange(len(labels)), labels].mean(), rel=1e-6)


def test_hard_negatives_are_those_above_the_margined_target():
    # Row: target cos 0.5 -> cos(acos(0.5) + 0.5) ~ 0.0586; negatives at 0.3 (hard) and -0.2 (easy).
    cos = np.array([[0.5, 0.3, -0.2]])
    labels = np.array([0])
    loss = CurricularFace(m=0.5, s=1.0)
    loss.t.set_value(paddle.to_tensor([0.5], dtype="float32"))
    _, _, t, logits = curricular_face(cos, labels, 0.5, m=0.5, s=1.0)
    assert logits[0, 1] == pytest.approx(0.3 * (t + 0.3)) and logits[0, 2] == pytest.approx(-0.2)
    assert logits[0, 0] == pytest.approx(math.cos(math.acos(0.5) + 0.5))
    value, _ = step(loss, cos, labels)
    shift = logits.max()
    assert value == pytest.approx(np.log(np.exp(logits - shift).sum()) + shift - logits[0, 0], rel=1e-5)


def test_target_past_pi_minus_m_keeps_falling():
    # Two rows whose targets lie past pi - m; a worse target must give a larger loss.
    loss = CurricularFace(m=0.5, s=8.0)
    values = []
    for target in (-0.9, -0.95, -0.99):
        loss.t.set_value(paddle.zeros([1]))
        values.append(step(loss, np.array([[target, 0.1, -0.3]]), np.array([0]))[0])
    assert values[0] < values[1] < values[2]


def test_eval_mode_leaves_t_alone():
    cos, labels = random_case(4)
    loss = CurricularFace()
    loss.eval()
    step(loss, cos, labels)
    assert loss.t.item() == 0.0


def test_rejects_bad_parameters():
    with pytest.raises(PlscError):
        CurricularFace(m=-0.1)
    with pytest.raises(PlscError):
        CurricularFace(s=0.0)
