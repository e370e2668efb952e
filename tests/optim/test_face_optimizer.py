"""FaceOptimizer's dense path (Paddle Momentum / AdamW semantics, weight-decay exemptions) and its state dicts."""
import numpy as np
import paddle
import pytest
from optim_fakes import FakeHead, give_gradients, parameter
from optim_reference import adamw_step, momentum_step

from plsc.errors import PlscError
from plsc.optim import build_optimizer

LRS = [0.4, 0.3, 0.2, 0.1]


def close(actual, expected, rtol=2e-5):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


@pytest.fixture
def rng():
    return np.random.default_rng(1)


def make_backbone(rng):
    """Three named parameters: (structured name, Parameter) pairs as a Layer's named_parameters() gives."""
    return [("backbone.conv.weight", parameter(rng.standard_normal((3, 4)), "conv2d.w")),
            ("backbone.bn.bias", parameter(rng.standard_normal(4), "batch_norm.b")),
            ("backbone.fc.weight", parameter(rng.standard_normal((4, 2)), "linear.w"))]


# ---- dense Momentum: L2 decay inside the momentum, exemptions by name --------------------------
@pytest.mark.parametrize("exempt_pattern", [None, "bn.bias", "batch_norm"],
                         ids=["no_exemption", "structured_name", "paddle_name"])
def test_dense_momentum_is_l2_momentum_with_exemptions(rng, exempt_pattern):
    named = make_backbone(rng)
    config = {"name": "Momentum", "momentum": 0.9, "weight_decay": 0.05, "no_weight_decay_name": exempt_pattern}
    optimizer = build_optimizer(config, named, [], lr=LRS[0])
    weights = {name: param.numpy().astype(np.float64) for name, param in named}
    velocities = {name: 0.0 for name, _ in named}
    for lr in LRS:
        grads = {name: rng.standard_normal(param.shape) for name, param in named}
        optimizer.set_lr(lr)
        give_gradients([(param, grads[name]) for name, param in named])
        optimizer.step()
        optimizer.clear_grad()
        for name, param in named:
            # the batch-norm bias is the one matched by both patterns
            decay = 0.0 if exempt_pattern and name == "backbone.bn.bias" else 0.05
            weights[name], velocities[name] = momentum_step(weights[name], velocities[name], grads[name], lr, 0.9,
                                                            decay)
            close(param.numpy(), weights[name])
    assert optimizer.get_lr() == LRS[-1]


def test_dense_adamw_is_decoupled_adamw_with_exemptions(rng):
    named = make_backbone(rng)
    config = {"name": "AdamW", "betas": [0.85, 0.99], "epsilon": 1e-7, "weight_decay": 0.1,
              "no_weight_decay_name": ["bias"]}
    optimizer = build_optimizer(config, named, [], lr=LRS[0])
    state = {name: (param.numpy().astype(np.float64), 0.0, 0.0) for name, param in named}
    for step, lr in enumerate(LRS, start=1):
        grads = {name: rng.standard_normal(param.shape) for name, param in named}
        optimizer.set_lr(lr)
        give_gradients([(param, grads[name]) for name, param in named])
        optimizer.step()
        optimizer.clear_grad()
        for name, param in named:
            decay = 0.0 if name.endswith("bias") else 0.1
            state[name] = adamw_step(*state[name], step, grads[name], lr, 0.85, 0.99, 1e-7, decay)
            close(param.numpy(), state[name][0], rtol=1e-5)


def test_frozen_parameters_are_left_alone(rng):
    trained = parameter(rng.standard_normal(3), "trained.w")
    frozen = parameter(rng.standard_normal(3), "frozen.w")
    frozen.stop_gradient = True
    optimizer = build_optimizer({"name": "Momentum", "momentum": 0.9}, [trained, frozen], [], lr=0.1)
    before = frozen.numpy().copy()
    give_gradients([(trained, np.ones(3))])
    optimizer.step()
    np.testing.assert_array_equal(frozen.numpy(), before)
    assert [names[-1] for names, _ in optimizer.dense_named] == [trained.name]


# ---- state dicts ------------------------------------------------------------------------------
CONFIGS = {"Momentum": {"name": "Momentum", "momentum": 0.9, "weight_decay": 5e-4},
           "AdamW": {"name": "AdamW", "betas": [0.9, 0.999], "weight_decay": 0.1}}


def make_model(values):
    """A fresh 'model': (structured name, Parameter) pairs with new Paddle names, and a class-centre head."""
    dense = [("stem.weight", parameter(values[0], "resume.w")), ("stem.bias", parameter(values[1], "resume.b"))]
    return dense, FakeHead(values[2], name="partialfc_dist_rank_00000_0.w")


@pytest.mark.parametrize("rebuild", [False, True], ids=["same_model", "rebuilt_model"])
@pytest.mark.parametrize("config_name", list(CONFIGS))
def test_state_round_trip_resumes_bit_exactly(rng, tmp_path, config_name, rebuild):
    """Save after two steps, load into a new optimizer, and the next steps match an uninterrupted run.

    same_model: the new optimizer holds the very same parameters (plain list, keyed by position);
    rebuilt_model: a new model in this process, whose Paddle names differ, keyed by structured names.
    """
    config = CONFIGS[config_name]
    initial = [rng.standard_normal((3, 4)), rng.standard_normal(4), rng.standard_normal((8, 4))]
    subsets = [[0, 2, 5], [1, 2, 7], [2, 3, 5, 6], [0, 7]]
    dense_grads = [[rng.standard_normal(values.shape) for values in initial[:2]] for _ in subsets]
    row_grads = [rng.standard_normal((len(rows), 4)) for rows in subsets]

    def run(optimizer, dense, head, steps):
        for step in steps:
            give_gradients([(param, grad) for (_, param), grad in zip(dense, dense_grads[step])])
            head.backward_rows(subsets[step], row_grads[step])
            optimizer.set_lr(LRS[step])
            optimizer.step()
            optimizer.clear_grad()

    def snapshot(dense, head):
        return [param.numpy().copy() for _, param in dense] + [head.weight.numpy().copy()]

    dense, head = make_model(initial)
    first = build_optimizer(config, dense if rebuild else [param for _, param in dense], [head], lr=LRS[0])
    run(first, dense, head, [0, 1])
    saved_weights = snapshot(dense, head)
    paddle.save(first.state_dict(), str(tmp_path / "opt.pdopt"))
    run(first, dense, head, [2, 3])
    uninterrupted = snapshot(dense, head)

    if rebuild:
        dense, head = make_model(saved_weights)
        assert dense[0][1].name != first.dense_named[0][1].name
    else:
        for (_, param), values in zip(dense, saved_weights):
            param.set_value(values)
        head.weight.set_value(saved_weights[2])
    resumed = build_optimizer(config, dense if rebuild else [param for _, param in dense], [head], lr=LRS[2])
    resumed.set_state_dict(paddle.load(str(tmp_path / "opt.pdopt")))
    run(resumed, dense, head, [2, 3])
    for actual, expected in zip(snapshot(dense, head), uninterrupted):
        np.testing.assert_array_equal(actual, expected)


def test_sparse_state_dict_holds_one_table_per_state_and_row(rng):
    head = FakeHead(rng.standard_normal((6, 3)), name="pfc_state.w")
    optimizer = build_optimizer({"name": "AdamW"}, [], [head], lr=0.1)
    head.backward_rows([1, 4], rng.standard_normal((2, 3)))
    optimizer.step()
    state = optimizer.sparse_state_dict()
    assert list(state) == ["head0"]
    assert {name: list(table.shape) for name, table in state["head0"].items()} == {
        "moment1": [6, 3], "moment2": [6, 3], "row_steps": [6]}
    np.testing.assert_array_equal(state["head0"]["row_steps"].numpy(), [0, 1, 0, 0, 1, 0])


def test_loaded_sparse_state_is_a_copy(rng):
    head = FakeHead(rng.standard_normal((4, 2)), name="pfc_copy.w")
    optimizer = build_optimizer({"name": "Momentum"}, [], [head], lr=0.1)
    velocity = paddle.ones([4, 2])
    optimizer.set_sparse_state_dict({"head0": {"velocity": velocity}})
    velocity.scale_(5.0)
    np.testing.assert_array_equal(optimizer.sparse_state_dict()["head0"]["velocity"].numpy(), 1.0)


@pytest.mark.parametrize("state, words", [
    ({"head1": {"velocity": np.zeros((4, 2), np.float32)}}, "head1"),
    ({"head0": {"moment1": np.zeros((4, 2), np.float32)}}, "velocity"),
    ({"head0": {"velocity": np.zeros((5, 2), np.float32)}}, "5 rows"),
], ids=["unknown_head", "other_optimizer", "other_shard_size"])
def test_mismatched_sparse_state_is_a_user_error(rng, state, words):
    head = FakeHead(rng.standard_normal((4, 2)), name="pfc_bad.w")
    optimizer = build_optimizer({"name": "Momentum"}, [], [head], lr=0.1)
    with pytest.raises(PlscError, match=words):
        optimizer.set_sparse_state_dict(state)


# ---- config errors ------------------------------------------------------------------------------
@pytest.mark.parametrize("config, words", [
    ({"momentum": 0.9}, "Optimizer.name"),
    ({"name": "Momentun"}, "did you mean 'Momentum'"),
    ({"name": "Momentum", "beta1": 0.9}, "Optimizer.beta1"),
    ({"name": "AdamW", "betas": [0.9]}, "betas"),
])
def test_config_mistakes_are_user_errors(config, words):
    with pytest.raises(PlscError, match=words):
        build_optimizer(config, [], [], lr=0.1)
