"""Row-sparse Momentum / AdamW of the class-centre table against numpy references and Paddle's dense optimizers."""
import contextlib

import numpy as np
import paddle
import pytest
from optim_fakes import FakeHead, give_gradients, parameter
from optim_reference import RowAdamW, RowMomentum, adamw_step, momentum_step

from plsc.heads.partial_fc import PartialFC
from plsc.loss.margin import MarginLoss
from plsc.optim import build_optimizer, sparse_adamw_update, sparse_momentum_update

ROWS, DIM = 10, 4
LRS = [0.5, 0.2, 0.1, 0.05]  # a different rate each step, as a schedule gives
MOMENTUM_CONFIG = {"name": "Momentum", "momentum": 0.9, "weight_decay": 0.05}
ADAMW_CONFIG = {"name": "AdamW", "betas": (0.8, 0.95), "epsilon": 1e-6, "weight_decay": 0.1}


def close(actual, expected, rtol=2e-5):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


def tensor(values, dtype="float32"):
    return paddle.to_tensor(np.asarray(values), dtype=dtype)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ---- the pure update functions, every row sampled ---------------------------------------------
@pytest.mark.parametrize("order", ["sorted", "permuted"])
def test_sparse_momentum_over_all_rows_is_dense_momentum(rng, order):
    weight0 = rng.standard_normal((ROWS, DIM))
    weight, velocity = tensor(weight0), paddle.zeros([ROWS, DIM])
    expected_weight, expected_velocity = weight0.copy(), np.zeros((ROWS, DIM))
    for lr in LRS:
        grad = rng.standard_normal((ROWS, DIM))
        index = np.arange(ROWS) if order == "sorted" else rng.permutation(ROWS)
        # grad_rows follow the order of index: row k of grad_rows belongs to weight row index[k]
        sparse_momentum_update(weight, velocity, tensor(index, "int64"), tensor(grad[index]), lr, 0.9, 0.05)
        expected_weight, expected_velocity = momentum_step(expected_weight, expected_velocity, grad, lr, 0.9, 0.05)
        close(weight.numpy(), expected_weight)
        close(velocity.numpy(), expected_velocity)


def test_sparse_adamw_over_all_rows_is_dense_adamw(rng):
    beta1, beta2, epsilon, decay = 0.8, 0.95, 1e-6, 0.1
    weight0 = rng.standard_normal((ROWS, DIM))
    weight, moment1, moment2 = tensor(weight0), paddle.zeros([ROWS, DIM]), paddle.zeros([ROWS, DIM])
    row_steps = paddle.zeros([ROWS], dtype="int64")
    expected, m1, m2 = weight0.copy(), np.zeros((ROWS, DIM)), np.zeros((ROWS, DIM))
    for step, lr in enumerate(LRS, start=1):
        grad = rng.standard_normal((ROWS, DIM))
        sparse_adamw_update(weight, moment1, moment2, row_steps, tensor(np.arange(ROWS), "int64"), tensor(grad),
                            lr, beta1, beta2, epsilon, decay)
        expected, m1, m2 = adamw_step(expected, m1, m2, step, grad, lr, beta1, beta2, epsilon, decay)
        close(weight.numpy(), expected)
        close(moment1.numpy(), m1)
        close(moment2.numpy(), m2)
        np.testing.assert_array_equal(row_steps.numpy(), step)


# ---- through FaceOptimizer: sparse rows vs Paddle's dense optimizer on the same numbers ------
@pytest.mark.parametrize("config", [MOMENTUM_CONFIG, ADAMW_CONFIG], ids=["Momentum", "AdamW"])
def test_all_rows_sampled_equals_paddle_dense_optimizer(rng, config):
    weight0 = rng.standard_normal((ROWS, DIM))
    dense = parameter(weight0, "dense_twin.w")
    head = FakeHead(weight0)
    optimizer = build_optimizer(config, [dense], [head], lr=LRS[0])
    for lr in LRS:
        grad = rng.standard_normal((ROWS, DIM))
        optimizer.set_lr(lr)
        give_gradients([(dense, grad)])
        head.backward_rows(np.arange(ROWS), grad)
        optimizer.step()
        optimizer.clear_grad()
        close(head.weight.numpy(), dense.numpy(), rtol=1e-5)


# ---- sampled subsets: the other rows and their state do not move -----------------------------
SUBSETS = [[0, 3, 4, 9], [1, 3, 5], [3, 4, 7, 8, 9], [0, 2]]


@pytest.mark.parametrize("config", [MOMENTUM_CONFIG, ADAMW_CONFIG], ids=["Momentum", "AdamW"])
def test_subset_update_moves_only_sampled_rows(rng, config):
    weight0 = rng.standard_normal((ROWS, DIM))
    head = FakeHead(weight0)
    optimizer = build_optimizer(config, [], [head], lr=LRS[0])
    if config["name"] == "Momentum":
        reference = RowMomentum(weight0, config["momentum"], config["weight_decay"])
    else:
        reference = RowAdamW(weight0, *config["betas"], config["epsilon"], config["weight_decay"])
    for rows, lr in zip(SUBSETS, LRS):
        grad_rows = rng.standard_normal((len(rows), DIM))
        optimizer.set_lr(lr)
        head.backward_rows(rows, grad_rows)
        weight_before = head.weight.numpy().copy()
        state_before = {name: table.numpy().copy()
                        for name, table in optimizer.sparse_state_dict().get("head0", {}).items()}
        optimizer.step()
        optimizer.clear_grad()
        reference.step(rows, grad_rows, lr)

        untouched = np.setdiff1d(np.arange(ROWS), rows)
        # Bit for bit: compare the raw float32 bit patterns, not values within a tolerance.
        np.testing.assert_array_equal(head.weight.numpy()[untouched].view(np.uint32),
                                      weight_before[untouched].view(np.uint32))
        state_after = optimizer.sparse_state_dict()["head0"]
        for name, before in state_before.items():
            np.testing.assert_array_equal(state_after[name].numpy()[untouched], before[untouched])
        close(head.weight.numpy(), reference.weight)
    if config["name"] == "AdamW":  # each row counted its own updates
        np.testing.assert_array_equal(optimizer.sparse_state_dict()["head0"]["row_steps"].numpy(), reference.steps)
    else:
        close(optimizer.sparse_state_dict()["head0"]["velocity"].numpy(), reference.velocity)


def test_rows_never_sampled_keep_zero_state_and_initial_values(rng):
    weight0 = rng.standard_normal((ROWS, DIM)).astype(np.float32)
    head = FakeHead(weight0)
    optimizer = build_optimizer(MOMENTUM_CONFIG, [], [head], lr=0.1)
    for rows in SUBSETS:
        head.backward_rows(rows, rng.standard_normal((len(rows), DIM)))
        optimizer.step()
        optimizer.clear_grad()
    never = np.setdiff1d(np.arange(ROWS), np.concatenate(SUBSETS))
    assert never.size > 0
    np.testing.assert_array_equal(head.weight.numpy()[never], weight0[never])
    np.testing.assert_array_equal(optimizer.sparse_state_dict()["head0"]["velocity"].numpy()[never], 0.0)


def test_head_without_gradient_is_not_updated(rng):
    weight0 = rng.standard_normal((ROWS, DIM)).astype(np.float32)
    dense = parameter(np.ones(3), "backbone.w")
    head = FakeHead(weight0)
    optimizer = build_optimizer(MOMENTUM_CONFIG, [dense], [head], lr=0.1)
    give_gradients([(dense, np.ones(3))])  # the head took no part in this step
    optimizer.step()
    np.testing.assert_array_equal(head.weight.numpy(), weight0)
    assert optimizer.sparse_state_dict() == {}


def test_no_weight_decay_name_exempts_the_class_centres(rng):
    weight0 = rng.standard_normal((ROWS, DIM))
    head = FakeHead(weight0, name="partialfc_dist_rank_00000_0.w")
    optimizer = build_optimizer(dict(MOMENTUM_CONFIG, no_weight_decay_name="partialfc"), [], [head], lr=0.1)
    rows, grad_rows = [1, 2, 6], rng.standard_normal((3, DIM))
    head.backward_rows(rows, grad_rows)
    optimizer.step()
    expected, _ = momentum_step(weight0[rows], 0.0, grad_rows, 0.1, 0.9, weight_decay=0.0)
    close(head.weight.numpy()[rows], expected)


# ---- with the real head: PartialFC sampling + MarginLoss ------------------------------------
@pytest.mark.parametrize("sample_ratio", [1.0, 0.4])
def test_partial_fc_step_updates_exactly_its_sampled_rows(rng, sample_ratio):
    num_classes, dim, batch = 20, 8, 6
    head = PartialFC(num_classes, dim, sample_ratio=sample_ratio, seed=3)
    loss_fn = MarginLoss(m1=1.0, m2=0.5, m3=0.0, s=16.0)
    optimizer = build_optimizer(MOMENTUM_CONFIG, [], [head], lr=0.3)
    reference = RowMomentum(head.weight.numpy(), 0.9, 0.05)
    for _ in range(3):
        weight_before = head.weight.numpy().copy()
        embeddings = paddle.to_tensor(rng.standard_normal((batch, dim)).astype(np.float32))
        labels = paddle.to_tensor(rng.integers(0, num_classes, size=batch))
        cos, local_labels = head(embeddings, labels)
        loss_fn(cos, local_labels).backward()
        sampled = head.sampled_index.numpy()
        grad_rows = head.sampled_weight.grad.numpy().copy()
        assert len(sampled) == max(int(np.ceil(sample_ratio * num_classes)), len(np.unique(labels.numpy())))
        optimizer.step()
        optimizer.clear_grad()
        reference.step(sampled, grad_rows, 0.3)
        untouched = np.setdiff1d(np.arange(num_classes), sampled)
        np.testing.assert_array_equal(head.weight.numpy()[untouched], weight_before[untouched])
        close(head.weight.numpy(), reference.weight)
        assert head.sampled_weight.grad is None  # cleared: the next forward starts afresh


@pytest.mark.parametrize("kernels", ["numpy", "paddle"])
def test_an_empty_index_leaves_both_tables_as_they_were(kernels):
    # A model-parallel shard none of whose rows the batch used (CenterLoss) has nothing to update.
    from plsc import fast_cpu

    weight, velocity = paddle.ones([5, 4]), paddle.full([5, 4], 0.5)
    context = fast_cpu.reference_only() if kernels == "paddle" else contextlib.nullcontext()
    with context:
        sparse_momentum_update(weight, velocity, paddle.zeros([0], dtype="int64"), paddle.zeros([0, 4]),
                               0.1, 0.9, 5e-4)
    np.testing.assert_array_equal(weight.numpy(), np.ones([5, 4]))
    np.testing.assert_array_equal(velocity.numpy(), np.full([5, 4], 0.5))
