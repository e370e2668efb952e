"""Dynamic loss scaling: growth / shrink schedule, skipped steps on inf or nan, state, config.

The 2-rank case (an inf on one rank's class-centre rows stops both ranks) is in
tests/optim/test_optim_multirank.py.
"""
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

from plsc.amp import DynamicLossScaler, NonFiniteError, build_amp, next_loss_scale
from plsc.errors import PlscError
from plsc.optim import build_optimizer

sys.path.insert(0, str(Path(__file__).parent / "optim"))
from optim_fakes import FakeHead, give_gradients, parameter  # noqa: E402
from optim_reference import momentum_step  # noqa: E402

SCHEDULE = dict(incr_ratio=2.0, decr_ratio=0.5, incr_every_n_steps=3, decr_every_n_nan_or_inf=2,
                min_loss_scaling=2.0, max_loss_scaling=32.0)

# (step outcome, scale after it) worked out by hand from the rules: x2 after 3 good steps in a
# row, x0.5 after 2 bad steps in a row, within [2, 32]; a good step resets the bad count and
# a bad step the good count.
G, B = False, True
TRAJECTORY = [
    (G, 8), (G, 8), (G, 16),        # third good step in a row: grow
    (G, 16), (G, 16), (G, 32),      # again, to the maximum
    (G, 32), (G, 32), (G, 32),      # capped at max_loss_scaling
    (B, 32), (B, 16),               # second bad step in a row: shrink
    (B, 16), (G, 16), (B, 16),      # the good step in between restarts the bad count
    (B, 8), (B, 8), (B, 4), (B, 4), (B, 2),
    (B, 2), (B, 2), (B, 2), (B, 2),  # floored at min_loss_scaling
    (G, 2), (G, 2), (B, 2), (G, 2), (G, 2), (G, 4),  # a bad step restarts the good count
]


def test_next_loss_scale_follows_the_hand_worked_trajectory():
    scale, good, bad = 8.0, 0, 0
    for step, (found_inf, expected) in enumerate(TRAJECTORY):
        scale, good, bad = next_loss_scale(scale, good, bad, found_inf, **SCHEDULE)
        assert scale == expected, f"step {step}"


class OneParameterModel:
    """A dense parameter plus a class-centre head, with Momentum; grads are set directly (times the scale)."""

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.dense = parameter(rng.standard_normal((3, 2)), "amp_dense.w")
        self.head = FakeHead(rng.standard_normal((5, 2)), name="partialfc_dist_rank_00000_0.w")
        self.optimizer = build_optimizer({"name": "Momentum", "momentum": 0.9, "weight_decay": 0.01},
                                         [self.dense], [self.head], lr=0.1)

    def backward(self, scale, dense_grad, rows, grad_rows):
        """The gradients a backward of `scale * loss` gives: the true ones times the scale."""
        give_gradients([(self.dense, np.asarray(dense_grad) * scale)])
        self.head.backward_rows(rows, np.asarray(grad_rows) * scale)

    def weights(self):
        return self.dense.numpy().copy(), self.head.weight.numpy().copy()


def test_scaler_unscales_before_the_update():
    model = OneParameterModel()
    scaler = DynamicLossScaler(init_loss_scaling=1024.0, incr_every_n_steps=2)
    dense0, head0 = model.weights()
    expected_dense, velocity = dense0.astype(np.float64), 0.0
    expected_rows, row_velocity = head0[[0, 2]].astype(np.float64), 0.0
    for _ in range(3):
        dense_grad, grad_rows = model.rng.standard_normal((3, 2)), model.rng.standard_normal((2, 2))
        model.backward(scaler.loss_scale, dense_grad, [0, 2], grad_rows)
        assert scaler.step(model.optimizer) is True
        model.optimizer.clear_grad()
        expected_dense, velocity = momentum_step(expected_dense, velocity, dense_grad, 0.1, 0.9, 0.01)
        expected_rows, row_velocity = momentum_step(expected_rows, row_velocity, grad_rows, 0.1, 0.9, 0.01)
    np.testing.assert_allclose(model.dense.numpy(), expected_dense, rtol=1e-5)
    np.testing.assert_allclose(model.head.weight.numpy()[[0, 2]], expected_rows, rtol=1e-5)
    assert scaler.loss_scale == 2048.0  # grew once, after the second good step
    assert scaler.scale(paddle.to_tensor(1.5)).item() == 1.5 * 2048.0


@pytest.mark.parametrize("where", ["class_rows_inf", "class_rows_nan", "dense_inf"])
def test_non_finite_gradient_skips_the_whole_step(where):
    model = OneParameterModel()
    scaler = DynamicLossScaler(init_loss_scaling=64.0, decr_every_n_nan_or_inf=1)
    dense_grad, grad_rows = np.ones((3, 2)), np.ones((2, 2))
    bad = {"class_rows_inf": np.inf, "class_rows_nan": np.nan, "dense_inf": np.inf}[where]
    (grad_rows if where.startswith("class") else dense_grad)[1, 0] = bad
    before = model.weights()
    model.backward(scaler.loss_scale, dense_grad, [1, 3], grad_rows)
    assert scaler.step(model.optimizer) is False
    assert scaler.skipped_last_step
    for after, expected in zip(model.weights(), before):
        np.testing.assert_array_equal(after, expected)
    # nothing was even accumulated: no velocity anywhere
    assert model.optimizer.sparse_state_dict() == {}
    assert model.optimizer.dense_state_dict() == {}
    assert scaler.loss_scale == 32.0

    # the next, finite step goes through with the smaller scale
    model.optimizer.clear_grad()
    model.backward(scaler.loss_scale, np.ones((3, 2)), [1, 3], np.ones((2, 2)))
    assert scaler.step(model.optimizer) is True
    assert not np.array_equal(model.weights()[0], before[0])


def test_scale_never_drops_below_min_loss_scaling():
    model = OneParameterModel()
    scaler = DynamicLossScaler(init_loss_scaling=8.0, min_loss_scaling=2.0, decr_every_n_nan_or_inf=1)
    for _ in range(6):
        model.backward(scaler.loss_scale, np.full((3, 2), np.inf), [0], np.ones((1, 2)))
        scaler.step(model.optimizer)
        model.optimizer.clear_grad()
    assert scaler.loss_scale == 2.0


def test_static_scale_still_skips_but_keeps_its_value():
    model = OneParameterModel()
    scaler = DynamicLossScaler(init_loss_scaling=16.0, dynamic=False, decr_every_n_nan_or_inf=1,
                               incr_every_n_steps=1)
    before = model.weights()
    model.backward(16.0, np.ones((3, 2)), [0], np.array([[np.inf, 0.0]]))
    assert scaler.step(model.optimizer) is False
    np.testing.assert_array_equal(model.weights()[1], before[1])
    model.optimizer.clear_grad()
    model.backward(16.0, np.ones((3, 2)), [0], np.ones((1, 2)))
    assert scaler.step(model.optimizer) is True
    assert scaler.loss_scale == 16.0


def test_without_loss_scaling_a_non_finite_gradient_raises_before_the_step():
    """FP16 O0: no overflow is expected, so inf/nan is a diverged run, not a step to skip silently."""
    model = OneParameterModel()
    scaler = DynamicLossScaler(enable=False)
    before = model.weights()
    model.backward(1.0, np.ones((3, 2)), [0], np.array([[np.nan, 0.0]]))
    with pytest.raises(NonFiniteError, match="not finite"):
        scaler.step(model.optimizer)
    for old, new in zip(before, model.weights()):
        np.testing.assert_array_equal(new, old)
    model.optimizer.clear_grad()
    model.backward(1.0, np.ones((3, 2)), [0], np.ones((1, 2)))
    assert scaler.step(model.optimizer) is True


def test_no_unscale_list_leaves_those_gradients_alone():
    model = OneParameterModel()
    scaler = DynamicLossScaler(init_loss_scaling=4.0, no_unscale_list=["dist"])
    model.backward(4.0, np.ones((3, 2)), [0], np.ones((1, 2)))
    scaler.unscale_and_check(model.optimizer)
    np.testing.assert_array_equal(model.dense.grad.numpy(), 1.0)
    np.testing.assert_array_equal(model.head.sampled_weight.grad.numpy(), 4.0)  # neither unscaled ...
    model.optimizer.clear_grad()
    model.backward(4.0, np.ones((3, 2)), [0], np.array([[np.inf, 0.0]]))
    assert scaler.unscale_and_check(model.optimizer) is False  # ... nor checked


def test_disabled_scaler_is_plain_training():
    model = OneParameterModel()
    scaler = build_amp(None).scaler
    assert not scaler.enable and scaler.loss_scale == 1.0
    loss = paddle.to_tensor(3.0)
    assert scaler.scale(loss) is loss
    model.backward(1.0, np.ones((3, 2)), [0], np.ones((1, 2)))
    before = model.weights()
    assert scaler.step(model.optimizer) is True
    assert not np.array_equal(model.weights()[0], before[0])


def test_state_round_trip_continues_the_same_schedule(tmp_path):
    first = DynamicLossScaler(init_loss_scaling=8.0, **SCHEDULE)
    outcomes = [found_inf for found_inf, _ in TRAJECTORY]

    def advance(scaler, found):
        scaler.scale_value, scaler.good_steps, scaler.bad_steps = next_loss_scale(
            scaler.scale_value, scaler.good_steps, scaler.bad_steps, found, **SCHEDULE)
        return scaler.loss_scale

    for found in outcomes[:14]:  # stop after one bad step: only a restored bad count shrinks at the next
        advance(first, found)
    paddle.save(first.state_dict(), str(tmp_path / "scaler.pdopt"))
    second = DynamicLossScaler(init_loss_scaling=8.0, **SCHEDULE)
    second.set_state_dict(paddle.load(str(tmp_path / "scaler.pdopt")))
    assert second.state_dict() == first.state_dict()
    assert second.bad_steps == 1
    assert [advance(second, found) for found in outcomes[14:]] == [advance(first, found) for found in outcomes[14:]]
    assert second.loss_scale == TRAJECTORY[-1][1]


def test_state_round_trip_through_real_steps():
    model = OneParameterModel()
    scaler = DynamicLossScaler(init_loss_scaling=8.0, **SCHEDULE)
    for found in [False, False, True]:  # good, good, bad: counters (good 0, bad 1)
        grad_rows = np.array([[np.inf, 0.0]]) if found else np.ones((1, 2))
        model.backward(scaler.loss_scale, np.ones((3, 2)), [0], grad_rows)
        scaler.step(model.optimizer)
        model.optimizer.clear_grad()
    state = scaler.state_dict()
    assert state == {"scale": 8.0, "good_steps": 0, "bad_steps": 1}
    restored = DynamicLossScaler()
    restored.set_state_dict(state)
    model.backward(restored.loss_scale, np.ones((3, 2)), [0], np.array([[np.nan, 0.0]]))
    restored.step(model.optimizer)  # the second bad step in a row: shrinks
    assert restored.loss_scale == 4.0


# ---- config ----------------------------------------------------------------------------------
def test_build_amp_reads_plsc_keys():
    policy = build_amp({"level": "O1", "GradScaler": {"init_loss_scaling": 27648.0, "incr_every_n_steps": 500,
                                                      "use_dynamic_loss_scaling": False}})
    assert policy.level == "O1"
    assert policy.loss_scale == 27648.0
    assert policy.scaler.incr_every_n_steps == 500
    assert not policy.dynamic


@pytest.mark.parametrize("section, words", [
    ({"level": "O2"}, "O2"),
    ({"level": "O1", "GradScaler": {"init_loss_scale": 2.0}}, "FP16.GradScaler.init_loss_scale"),
    ({"level": "O1", "GradScaler": {"init_loss_scaling": 0.5, "min_loss_scaling": 1.0}}, "init_loss_scaling"),
    ({"level": "O1", "GradScalr": {}}, "FP16.GradScalr"),
])
def test_amp_config_mistakes_are_user_errors(section, words):
    with pytest.raises(PlscError, match=words):
        build_amp(section)


def test_autocast_runs_the_forward():
    policy = build_amp({"level": "O1"})
    x = paddle.ones([2, 3])
    with policy.autocast():
        y = paddle.matmul(x, x, transpose_y=True)
    np.testing.assert_allclose(y.astype("float32").numpy(), 3.0)
    with build_amp({"level": "O0"}).autocast():
        assert paddle.matmul(x, x, transpose_y=True).dtype == paddle.float32
