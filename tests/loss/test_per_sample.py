"""Per-sample losses for logging (plsc.loss.per_sample): rows against numpy, their mean against each loss's value."""
import numpy as np
import paddle
import pytest

from plsc.loss.combined import CombinedLoss
from plsc.loss.inputs import LossInputs
from plsc import fast_cpu
from plsc.loss.target_softmax import row_softmax_cross_entropy

ROWS, CLASSES, DIM = 8, 5, 6


class FakeHead:
    model_parallel = False
    num_classes = CLASSES


class FakeMixFairBackbone:
    """Offers the adapter's outputs directly (plsc.models.mixfair.mixfair_outputs reads `mixfair_outputs`)."""

    def __init__(self, mixed, permutation):
        self.mixfair_outputs = (mixed, permutation)


def numpy_rows(logits, labels):
    """Softmax cross-entropy of each row in float64: [N, C], [N] -> [N]."""
    logits = np.asarray(logits, np.float64)
    shift = logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(logits - shift).sum(axis=1)) + shift[:, 0]
    return log_norm - logits[np.arange(len(labels)), labels]


def gradients(inputs):
    """The gradients the loss left on the step's tensors (None where it reads none)."""
    return [None if tensor.grad is None else tensor.grad.numpy().copy()
            for tensor in (inputs.cos_logits, inputs.embeddings)]


def step_inputs(seed=0):
    rng = np.random.default_rng(seed)
    embeddings = paddle.to_tensor(rng.standard_normal((ROWS, DIM)).astype(np.float32) * 3, stop_gradient=False)
    cos = paddle.to_tensor(np.tanh(rng.standard_normal((ROWS, CLASSES))).astype(np.float32), stop_gradient=False)
    labels = paddle.to_tensor(rng.integers(0, CLASSES, ROWS))
    mixed = paddle.to_tensor(rng.standard_normal((ROWS, DIM)).astype(np.float32))
    backbone = FakeMixFairBackbone(mixed, paddle.to_tensor(rng.permutation(ROWS)))
    return LossInputs(cos, labels, embeddings, labels, FakeHead(), backbone)


def test_rows_match_numpy():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((ROWS, CLASSES)).astype(np.float32) * 10
    labels = rng.integers(0, CLASSES, ROWS)
    rows = row_softmax_cross_entropy(paddle.to_tensor(logits), paddle.to_tensor(labels), False)
    np.testing.assert_allclose(rows.numpy(), numpy_rows(logits, labels), rtol=1e-5, atol=1e-5)


SOFTMAX_ENTRIES = {
    "MarginLoss": {"m1": 1.0, "m2": 0.3, "m3": 0.1, "s": 16.0},
    "CurricularFace": {"m": 0.5, "s": 16.0},
    "AdaFace": {"s": 16.0},
    "MagFace": {"l_a": 1.0, "u_a": 10.0, "lambda_g": 0.0, "s": 16.0},  # lambda_g 0: the softmax part alone
    "L2Softmax": {"s": 16.0},
    "MixFairCosFace": {"s": 16.0, "m": 0.2, "cifp": True},
}


@pytest.mark.parametrize("kernels", ["numpy", "paddle"])
@pytest.mark.parametrize("name", list(SOFTMAX_ENTRIES))
def test_the_rows_mean_is_the_loss_and_value_and_gradients_are_untouched(name, kernels, request):
    if kernels == "paddle":
        request.getfixturevalue("reference_kernels")
    entry = [{name: SOFTMAX_ENTRIES[name]}]
    plain, with_rows = CombinedLoss(entry), CombinedLoss(entry)
    for combined in (plain, with_rows):
        combined.attach(FakeHead())
    inputs = step_inputs()
    total, _ = plain(inputs)
    total.backward()
    plain_gradients = gradients(inputs)

    inputs = step_inputs()
    total_with_rows, _, rows = with_rows.with_sample_losses(inputs)
    total_with_rows.backward()
    assert float(total_with_rows) == float(total)
    for actual, expected in zip(gradients(inputs), plain_gradients):
        assert (actual is None) == (expected is None)
        if expected is not None:
            np.testing.assert_array_equal(actual, expected)
    assert rows.shape == [ROWS] and rows.stop_gradient
    assert float(rows.mean()) == pytest.approx(float(total), rel=1e-5)


@pytest.fixture
def reference_kernels():
    with fast_cpu.reference_only():
        yield


@pytest.mark.parametrize("kernels", ["numpy", "paddle"])
def test_margin_loss_rows_are_the_cosface_cross_entropy(kernels, request):
    if kernels == "paddle":
        request.getfixturevalue("reference_kernels")
    combined = CombinedLoss([{"MarginLoss": {"m1": 1.0, "m2": 0.0, "m3": 0.35, "s": 20.0}}])
    combined.attach(FakeHead())
    inputs = step_inputs(3)
    _, _, rows = combined.with_sample_losses(inputs)
    cos, labels = inputs.cos_logits.numpy().astype(np.float64), inputs.labels.numpy()
    logits = 20.0 * (cos - 0.35 * np.eye(CLASSES)[labels])
    np.testing.assert_allclose(rows.numpy(), numpy_rows(logits, labels), rtol=1e-5, atol=1e-5)


def test_rows_are_weighted_like_the_total_and_entries_without_rows_add_nothing():
    combined = CombinedLoss([{"L2Softmax": {"s": 8.0, "weight": 0.5}}, {"MarginLoss": {"s": 8.0, "m2": 0.2}},
                             {"CenterLoss": {"weight": 0.3}}])
    combined.attach(type("Head", (), {"model_parallel": False, "num_classes": CLASSES, "embedding_size": DIM})())
    inputs = step_inputs(4)
    _, parts, rows = combined.with_sample_losses(inputs)
    assert float(rows.mean()) == pytest.approx(0.5 * float(parts["L2Softmax"]) + float(parts["MarginLoss"]), rel=1e-5)
    only_center = CombinedLoss([{"CenterLoss": {}}])
    only_center.attach(type("Head", (), {"model_parallel": False, "num_classes": CLASSES, "embedding_size": DIM})())
    assert only_center.with_sample_losses(step_inputs(5))[2] is None


def test_no_loss_holds_a_steps_logits_after_the_call():
    combined = CombinedLoss([{"L2Softmax": {"s": 8.0}}, {"MixFairCosFace": {"s": 8.0}}])
    combined.attach(FakeHead())
    combined(step_inputs(6))
    assert all(loss.kept_rows.take() is None for _, _, _, loss in combined.parts)
