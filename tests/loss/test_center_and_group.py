"""CenterLoss (its sharded, sparsely updated table) and GroupFace's grouping loss against numpy."""
from types import SimpleNamespace

import numpy as np
import paddle
import pytest
from loss_reference import center_loss, group_loss

from plsc import distributed
from plsc.heads.class_table import batch_rows
from plsc.loss.center import CenterLoss
from plsc.loss.group import GroupLoss
from plsc.optim import build_optimizer

DIM = 5


def fake_head(num_classes, model_parallel=False):
    """The attributes CenterLoss.attach reads from a class layer."""
    return SimpleNamespace(num_classes=num_classes, embedding_size=DIM, model_parallel=model_parallel)


@pytest.fixture()
def second_of_two_ranks(monkeypatch):
    """This process plays rank 1 of 2 (the table shards by class); the cross-rank sum is left out."""
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")
    monkeypatch.setenv("PADDLE_TRAINER_ID", "1")
    monkeypatch.setattr(distributed, "all_reduce_sum_with_grad", lambda tensor: tensor)


def batch(seed, rows=10, num_classes=8):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((rows, DIM)), rng.integers(0, num_classes, size=rows)


def test_batch_rows_maps_samples_to_sorted_shard_rows():
    rows, columns = batch_rows(np.array([7, 3, 5, 3, 9, 1]), class_start=3, num_local_classes=5)
    np.testing.assert_array_equal(rows, [0, 2, 4])  # classes 3, 5, 7 of the shard [3, 8)
    np.testing.assert_array_equal(columns, [2, 0, 1, 0, -1, -1])
    rows, columns = batch_rows(np.array([0, 1]), class_start=3, num_local_classes=5)
    assert rows.size == 0 and list(columns) == [-1, -1]


@pytest.mark.parametrize("normalize", [True, False])
def test_value_and_gradients_match_the_formula(normalize):
    x, labels = batch(1)
    centers = np.random.default_rng(2).standard_normal((8, DIM)) * 0.3
    loss = CenterLoss(normalize=normalize)
    [table] = loss.attach(fake_head(8))
    table.weight.set_value(paddle.to_tensor(centers.astype(np.float32)))
    x_tensor = paddle.to_tensor(x.astype(np.float32), stop_gradient=False)
    value = loss(x_tensor, paddle.to_tensor(labels))
    value.backward()
    expected_loss, expected_grad_x, expected_grad_centers = center_loss(x, labels, centers, normalize)
    assert float(value) == pytest.approx(expected_loss, rel=1e-5)
    np.testing.assert_allclose(x_tensor.grad.numpy(), expected_grad_x, rtol=1e-4, atol=1e-7)
    used = np.unique(labels)
    np.testing.assert_array_equal(table.sampled_index.numpy(), used)
    np.testing.assert_allclose(table.sampled_weight.grad.numpy(), expected_grad_centers[used], rtol=1e-4, atol=1e-7)


def test_a_shard_scores_only_its_own_classes(second_of_two_ranks):
    x, labels = batch(3)
    centers = np.random.default_rng(4).standard_normal((8, DIM)) * 0.3
    loss = CenterLoss()
    [table] = loss.attach(fake_head(8, model_parallel=True))  # rank 1 of 2: classes 4..7
    assert (table.class_start, table.num_local_classes) == (4, 4)
    table.weight.set_value(paddle.to_tensor(centers[4:8].astype(np.float32)))
    x_tensor = paddle.to_tensor(x.astype(np.float32), stop_gradient=False)
    value = loss(x_tensor, paddle.to_tensor(labels))
    value.backward()
    mine = labels >= 4
    # The same sum restricted to this shard's samples, still divided by the whole batch size.
    partial, grad_x, grad_centers = center_loss(x[mine], labels[mine], centers)
    assert float(value) == pytest.approx(partial * mine.sum() / len(labels), rel=1e-5)
    expected_grad_x = np.zeros_like(x)
    expected_grad_x[mine] = grad_x * mine.sum() / len(labels)
    np.testing.assert_allclose(x_tensor.grad.numpy(), expected_grad_x, rtol=1e-4, atol=1e-7)
    used = np.unique(labels[mine])
    np.testing.assert_array_equal(table.sampled_index.numpy(), used - 4)
    np.testing.assert_allclose(table.sampled_weight.grad.numpy(),
                               grad_centers[used] * mine.sum() / len(labels), rtol=1e-4, atol=1e-7)


def test_a_shard_without_batch_classes_contributes_zero_and_an_empty_gradient(second_of_two_ranks):
    loss = CenterLoss()
    [table] = loss.attach(fake_head(20, model_parallel=True))  # rank 1 of 2: classes 10..19
    x = paddle.to_tensor(np.ones((3, DIM), np.float32), stop_gradient=False)
    value = loss(x, paddle.to_tensor([1, 2, 3]))
    value.backward()
    assert float(value) == 0.0
    assert table.sampled_weight.grad is not None and table.sampled_weight.grad.shape == [0, DIM]


def test_sparse_momentum_moves_only_the_batch_classes():
    x, labels = batch(5, num_classes=8)
    labels[labels == 6] = 0  # class 6 absent from the batch
    loss = CenterLoss()
    [table] = loss.attach(fake_head(8))
    start = np.random.default_rng(6).standard_normal((8, DIM)).astype(np.float32)
    table.weight.set_value(paddle.to_tensor(start))
    optimizer = build_optimizer({"name": "Momentum", "momentum": 0.9, "weight_decay": 0.0}, [], [table], lr=0.5)
    loss(paddle.to_tensor(x.astype(np.float32)), paddle.to_tensor(labels)).backward()
    optimizer.step()
    _, _, grad_centers = center_loss(x, labels, start.astype(np.float64))
    expected = start - 0.5 * grad_centers  # first momentum step: v = g
    np.testing.assert_allclose(table.weight.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(table.weight.numpy()[6], start[6])


def test_group_loss_labels_by_expectation_normalised_probability():
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((12, 4))
    logits[:, 0] += 3.0  # group 0 is everyone's favourite: balancing must move samples elsewhere
    tensor = paddle.to_tensor(logits.astype(np.float32), stop_gradient=False)
    value = GroupLoss()(tensor)
    value.backward()
    expected_loss, expected_grad, labels = group_loss(logits)
    assert len(set(labels)) > 1 and not np.all(labels == np.argmax(logits, axis=1))
    assert float(value) == pytest.approx(expected_loss, rel=1e-5)
    np.testing.assert_allclose(tensor.grad.numpy(), expected_grad, rtol=1e-4, atol=1e-7)
