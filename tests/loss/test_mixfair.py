"""MixFairCosFace and the MixFair Adapter against the numpy reference (mixfair_reference.py)."""
import numpy as np
import paddle
import pytest
from mixfair_reference import cifp_margin, identity_bias, mixfair_cosface_loss

from plsc.errors import PlscError
from plsc.loss import mixfair
from plsc.loss.inputs import LossInputs, call_loss
from plsc.models.iresnet import IResNet

ROWS, CLASSES, DIM = 7, 6, 5


def batch(seed=0):
    rng = np.random.default_rng(seed)
    cos = np.tanh(rng.standard_normal((ROWS, CLASSES))).astype(np.float32)
    labels = rng.integers(0, CLASSES, ROWS)
    # Every other row's target is near 1: its largest negatives can sit below target - m (CIFP keeps them).
    cos[np.arange(0, ROWS, 2), labels[::2]] = 0.97
    return cos, labels, rng


class FakeHead:
    model_parallel = False
    num_classes = CLASSES


def build_loss(**kwargs):
    loss = mixfair.MixFairCosFace(**kwargs)
    loss.attach(FakeHead())
    return loss


def test_identity_bias_matches_reference():
    rng = np.random.default_rng(1)
    embeddings, mixed = rng.standard_normal((2, ROWS, DIM)).astype(np.float32)
    permutation = rng.permutation(ROWS)
    actual = mixfair.identity_bias(paddle.to_tensor(embeddings), paddle.to_tensor(mixed),
                                   paddle.to_tensor(permutation, dtype="int64")).numpy()
    np.testing.assert_allclose(actual, identity_bias(embeddings, mixed, permutation), rtol=1e-5, atol=1e-6)


def test_cifp_margin_matches_reference():
    cos, labels, _ = batch(2)
    actual = mixfair.cifp_margin(paddle.to_tensor(cos), paddle.to_tensor(labels, dtype="int64"), 0.1, CLASSES,
                                 False).numpy()[:, 0]
    expected = cifp_margin(cos.astype(np.float64), labels, 0.1)
    assert (expected > 0).any() and (expected == 0).any()  # the batch exercises both cases
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("cifp", [False, True])
def test_loss_and_gradients_match_reference(cifp):
    cos, labels, rng = batch(3)
    bias = (0.1 * rng.standard_normal(ROWS)).astype(np.float32)
    cos_tensor = paddle.to_tensor(cos, stop_gradient=False)
    bias_tensor = paddle.to_tensor(bias, stop_gradient=False)
    loss = build_loss(s=8.0, m=0.1, cifp=cifp).loss(cos_tensor, paddle.to_tensor(labels, dtype="int64"), bias_tensor)
    expected = mixfair_cosface_loss(cos, labels, bias, 8.0, 0.1, cifp)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    loss.backward()

    def numeric(values, place):
        step = 1e-4
        grad = np.zeros_like(values, dtype=np.float64)
        for index in np.ndindex(values.shape):
            shifted = [values.astype(np.float64).copy() for _ in range(2)]
            shifted[0][index] += step
            shifted[1][index] -= step
            args = [(cos, bias), (cos, bias)]
            args = [(shift, bias) if place == "cos" else (cos, shift) for shift in shifted]
            up, down = (mixfair_cosface_loss(c, labels, b, 8.0, 0.1, cifp) for c, b in args)
            grad[index] = (up - down) / (2 * step)
        return grad

    np.testing.assert_allclose(cos_tensor.grad.numpy(), numeric(cos, "cos"), atol=2e-4)
    np.testing.assert_allclose(bias_tensor.grad.numpy(), numeric(bias, "bias"), atol=2e-4)


def test_zero_bias_without_cifp_is_cosface():
    from plsc.loss.margin import MarginLoss

    cos, labels, _ = batch(4)
    labels_tensor = paddle.to_tensor(labels, dtype="int64")
    mixfair_value = build_loss(s=16.0, m=0.35, cifp=False).loss(paddle.to_tensor(cos), labels_tensor,
                                                                paddle.zeros([ROWS]))
    cosface = MarginLoss(m1=1.0, m2=0.0, m3=0.35, s=16.0)(paddle.to_tensor(cos), labels_tensor)
    assert float(mixfair_value) == pytest.approx(float(cosface), rel=1e-6)


def tiny_iresnet(**kwargs):
    paddle.seed(0)
    return IResNet(num_features=8, layers=(1, 1), widths=(4, 8), input_size=16, **kwargs)


def test_adapter_keeps_mixed_embeddings_in_training_only():
    model = tiny_iresnet(mixfair={"alpha": 0.5})
    plain = tiny_iresnet()
    assert set(model.state_dict()) == set(plain.state_dict())  # no parameters: checkpoints interchange
    images = paddle.to_tensor(np.random.default_rng(0).uniform(-1, 1, (6, 3, 16, 16)).astype(np.float32))
    model.train()
    embeddings = model(images)
    mixed, permutation = model.mixfair_adapter.outputs
    assert mixed.shape == embeddings.shape and sorted(permutation.numpy()) == list(range(6))
    cos = paddle.to_tensor(np.tanh(np.random.default_rng(1).standard_normal((6, 4))).astype(np.float32))
    labels = paddle.to_tensor([0, 1, 2, 3, 0, 1], dtype="int64")
    loss = build_loss(s=8.0)
    loss.attach(type("Head", (), {"model_parallel": False, "num_classes": 4})())
    value = call_loss(loss, LossInputs(cos, labels, embeddings, labels, FakeHead(), model))
    value.backward()  # the bias term reaches the backbone
    assert model.embedding.fc.weight.grad is not None
    model.eval()
    paddle.seed(5)
    evaluated = model(images)
    assert model.mixfair_adapter.outputs == (None, None)
    plain.set_state_dict(model.state_dict())
    plain.eval()
    np.testing.assert_allclose(evaluated.numpy(), plain(images).numpy(), rtol=1e-6)


def test_mobilefacenet_takes_the_adapter_too():
    from plsc.registry import MODELS

    paddle.seed(0)
    model = MODELS.build("MobileFaceNet", num_features=16, mixfair={"alpha": 0.5})
    paddle.seed(0)
    plain = MODELS.build("MobileFaceNet", num_features=16)
    assert set(model.state_dict()) == set(plain.state_dict())
    images = paddle.to_tensor(np.random.default_rng(0).uniform(-1, 1, (4, 3, 112, 112)).astype(np.float32))
    model.train()
    embeddings = model(images)
    mixed, permutation = model.mixfair_adapter.outputs
    # The mixed embedding is the output layer on alpha k + (1 - alpha) k[p] of the same feature maps.
    feature_map = model.body(images)
    expected = model.embedding(0.5 * feature_map + 0.5 * paddle.gather(feature_map, permutation, axis=0))
    assert mixed.shape == embeddings.shape == [4, 16]
    np.testing.assert_allclose(mixed.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)
    model.eval()
    model(images)
    assert model.mixfair_adapter.outputs == (None, None)


def test_bad_settings_are_one_line_errors():
    with pytest.raises(PlscError, match="Model.mixfair.beta"):
        tiny_iresnet(mixfair={"beta": 0.5})
    with pytest.raises(PlscError, match="alpha"):
        tiny_iresnet(mixfair={"alpha": 1.0})
    cos, labels, _ = batch(5)
    with pytest.raises(PlscError, match="Model.mixfair"):
        call_loss(build_loss(), LossInputs(paddle.to_tensor(cos), paddle.to_tensor(labels), paddle.zeros([ROWS, 4]),
                                           paddle.to_tensor(labels), FakeHead(), tiny_iresnet()))
