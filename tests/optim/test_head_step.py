"""The pieces of a head step that were rewritten for speed, against numpy written from the formulas:
cosine logits' hand-written backward, and the sparse Momentum update's in-place, chunked and whole-table paths."""
import numpy as np
import paddle
import pytest
from optim_reference import momentum_step

from plsc.heads import partial_fc
from plsc.heads.partial_fc import cosine_logits
from plsc.optim import sparse_momentum
from plsc.optim.sparse_momentum import covers_every_row, row_chunks, sparse_momentum_update


def numpy_cosines_and_grads(x, w, upstream):
    """cos [N, S] of rows of x and w, and the gradients of sum(upstream * cos) w.r.t. x and w (float64)."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    x_norm, w_norm = np.linalg.norm(x, axis=1, keepdims=True), np.linalg.norm(w, axis=1, keepdims=True)
    x_unit, w_unit = x / x_norm, w / w_norm
    cos = x_unit @ w_unit.T
    # d(u/|u|)/du = (I - u_hat u_hat^T) / |u|: project out the radial part, divide by the norm.
    toward_centres = upstream @ w_unit
    grad_x = (toward_centres - np.sum(toward_centres * x_unit, axis=1, keepdims=True) * x_unit) / x_norm
    toward_embeddings = upstream.T @ x_unit
    grad_w = (toward_embeddings - np.sum(toward_embeddings * w_unit, axis=1, keepdims=True) * w_unit) / w_norm
    return cos, grad_x, grad_w


@pytest.fixture
def inputs():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 16)).astype(np.float32) * 3.0
    w = rng.standard_normal((11, 16)).astype(np.float32) * 0.01  # PartialFC's init scale
    w[4] = x[2] * 0.05  # a centre along an embedding: cos = 1, where the clip acts
    upstream = rng.standard_normal((6, 11)).astype(np.float32)
    return x, w, upstream


@pytest.fixture(params=["one_chunk", "chunks_of_3_rows"])
def chunking(request, monkeypatch):
    """Run with the default row chunks (one chunk here) and with 3-row chunks, as large tables get."""
    if request.param == "chunks_of_3_rows":
        monkeypatch.setattr(partial_fc, "CHUNK_BYTES", 3 * 16 * 4)  # rows of 16 float32
        monkeypatch.setattr(sparse_momentum, "CHUNK_BYTES", 3 * 5 * 4)  # rows of 5 float32
    return request.param


@pytest.mark.parametrize("trainable", ["both", "embeddings", "centers"])
def test_cosine_logits_and_gradients_match_numpy(inputs, trainable, chunking):
    x_values, w_values, upstream = inputs
    x = paddle.to_tensor(x_values, stop_gradient=trainable == "centers")
    w = paddle.to_tensor(w_values, stop_gradient=trainable == "embeddings")
    cos = cosine_logits(x, w)
    (cos * paddle.to_tensor(upstream)).sum().backward()
    expected_cos, expected_grad_x, expected_grad_w = numpy_cosines_and_grads(x_values, w_values, upstream)
    np.testing.assert_allclose(cos.numpy(), expected_cos, atol=1e-6)
    assert cos.numpy().max() <= 1.0 and cos.dtype == paddle.float32
    if trainable in ("both", "embeddings"):
        np.testing.assert_allclose(x.grad.numpy(), expected_grad_x, rtol=1e-4,
                                   atol=1e-5 * np.abs(expected_grad_x).max())
    else:
        assert x.grad is None
    if trainable in ("both", "centers"):
        np.testing.assert_allclose(w.grad.numpy(), expected_grad_w, rtol=1e-4,
                                   atol=1e-5 * np.abs(expected_grad_w).max())
    else:
        assert w.grad is None


def test_cosine_gradient_matches_finite_differences(inputs):
    x_values, w_values, upstream = inputs
    w = paddle.to_tensor(w_values, stop_gradient=False)
    (cosine_logits(paddle.to_tensor(x_values), w) * paddle.to_tensor(upstream)).sum().backward()

    def loss(centres):
        return float(np.sum(upstream * numpy_cosines_and_grads(x_values, centres, upstream)[0]))

    step = 1e-6
    for row, column in [(0, 0), (7, 3), (10, 15)]:
        shifted_up, shifted_down = w_values.astype(np.float64), w_values.astype(np.float64)
        shifted_up[row, column] += step
        shifted_down[row, column] -= step
        numeric = (loss(shifted_up) - loss(shifted_down)) / (2 * step)
        assert w.grad.numpy()[row, column] == pytest.approx(numeric, rel=1e-3)


def test_covers_every_row_only_for_the_identity_index():
    def index(values):
        return paddle.to_tensor(np.asarray(values, np.int64))

    assert covers_every_row(index(range(5)), 5)
    assert not covers_every_row(index([1, 0, 2, 3, 4]), 5)  # a permutation goes the gather way
    assert not covers_every_row(index(range(4)), 5)


def test_row_chunks_cover_every_row_once():
    chunks = row_chunks(10, row_length=2 ** 20)  # 4 MiB rows of float32: 4 rows per 16 MiB chunk
    assert chunks == [(0, 4), (4, 8), (8, 10)]
    assert row_chunks(3, row_length=2 ** 30) == [(0, 1), (1, 2), (2, 3)]  # at least one row per chunk


@pytest.mark.parametrize("index", [np.arange(8), np.array([6, 0, 3, 7, 1])], ids=["every_row", "subset"])
def test_sparse_momentum_consumes_its_gradient_and_matches_numpy(index, chunking):
    rng = np.random.default_rng(6)
    weight0, velocity0 = rng.standard_normal((8, 5)), rng.standard_normal((8, 5))
    grad_rows = rng.standard_normal((len(index), 5))
    weight, velocity = paddle.to_tensor(weight0, dtype="float32"), paddle.to_tensor(velocity0, dtype="float32")
    sparse_momentum_update(weight, velocity, paddle.to_tensor(index), paddle.to_tensor(grad_rows, dtype="float32"),
                           lr=0.3, momentum=0.9, weight_decay=0.01)
    expected_weight, expected_velocity = weight0.copy(), velocity0.copy()
    expected_weight[index], expected_velocity[index] = momentum_step(weight0[index], velocity0[index], grad_rows,
                                                                     0.3, 0.9, 0.01)
    np.testing.assert_allclose(weight.numpy(), expected_weight, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(velocity.numpy(), expected_velocity, rtol=1e-5, atol=1e-6)


def test_sparse_momentum_updates_the_given_row_copy_in_place(chunking):
    rng = np.random.default_rng(7)
    weight0, index = rng.standard_normal((9, 5)), np.array([1, 2, 4, 5, 8])
    grad_rows = rng.standard_normal((5, 5))
    weight = paddle.to_tensor(weight0, dtype="float32")
    velocity = paddle.zeros([9, 5])
    rows = paddle.gather(weight, paddle.to_tensor(index))  # what the head keeps as sampled_weight
    sparse_momentum_update(weight, velocity, paddle.to_tensor(index), paddle.to_tensor(grad_rows, dtype="float32"),
                           lr=0.2, momentum=0.9, weight_decay=0.05, weight_rows=rows)
    expected_rows, _ = momentum_step(weight0[index], 0.0, grad_rows, 0.2, 0.9, 0.05)
    np.testing.assert_allclose(weight.numpy()[index], expected_rows, rtol=1e-5)
    np.testing.assert_array_equal(rows.numpy(), weight.numpy()[index])
    untouched = np.setdiff1d(np.arange(9), index)
    np.testing.assert_array_equal(weight.numpy()[untouched], weight0[untouched].astype(np.float32))
