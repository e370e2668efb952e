import inspect

import numpy as np
import paddle
import pytest

from backbone_checks import (assert_finite_gradients, assert_layouts_agree, expected_iresnet_parameters, images,
                             randomize_norms)
from plsc.errors import PlscError
from plsc.models import MODELS
from plsc.models.complexity import count_parameters
from plsc.models.iresnet import IResNet, norm_aware_pool

IRESNET_NAMES = ["IResNet18", "IResNet34", "IResNet50", "IResNet100", "IResNet200"]
TINY = dict(layers=(1, 1), widths=(8, 16), input_size=16)  # 16 -> 8 -> 4


@pytest.fixture(scope="module")
def iresnet50():
    paddle.seed(0)
    return MODELS.build("IResNet50")


def test_generic_parameter_count_follows_widths():
    model = IResNet(num_features=32, layers=(2, 1), widths=(8, 16), input_size=16)
    assert count_parameters(model) == expected_iresnet_parameters((2, 1), (8, 16), num_features=32, spatial=4)


def test_iresnet50_output_shape_nhwc(iresnet50):
    model = MODELS.build("IResNet50", data_format="NHWC")
    model.set_state_dict(iresnet50.state_dict())
    model.eval()
    with paddle.no_grad():
        assert model(images(1)).shape == [1, 512]


@pytest.mark.parametrize("data_format", ["NCHW", "NHWC"])
def test_output_shapes(data_format):
    model = MODELS.build("IResNet18", data_format=data_format, num_features=128)
    model.eval()
    with paddle.no_grad():
        assert model(images(1)).shape == [1, 128]
    tiny = IResNet(num_features=24, data_format=data_format, **TINY)
    assert tiny(images(3, 16)).shape == [3, 24]


def test_stem_stride_halves_the_map():
    model = IResNet(num_features=16, stem_stride=2, layers=(1, 1), widths=(8, 16), input_size=32)
    assert model.embedding.fc.weight.shape == [16 * 4 * 4, 16]
    assert model(images(2, 32)).shape == [2, 16]


@pytest.mark.parametrize("output_layer", ["fc", "gnap"])
def test_layouts_agree(output_layer):
    assert_layouts_agree(lambda fmt: IResNet(num_features=12, data_format=fmt, output_layer=output_layer,
                                             layers=(2, 1), widths=(8, 16), input_size=16), batch=4, size=16)


def test_iresnet18_layouts_agree():
    # Eval mode only: see assert_layouts_agree on train mode with a batch of two.
    assert_layouts_agree(lambda fmt: MODELS.build("IResNet18", data_format=fmt), batch=2, modes=("eval",))


@pytest.mark.parametrize("output_layer", ["fc", "gnap"])
def test_gradients_finite(output_layer):
    paddle.seed(0)
    model = IResNet(num_features=12, dropout=0.2, output_layer=output_layer, **TINY)
    assert_finite_gradients(model, images(4, 16))
    # The embedding BN's scale is fixed at 1: it is not a parameter, its bias is (and learns).
    embedding_norm = model.embedding.features
    assert [name for name, _ in embedding_norm.named_parameters() if "norm._" not in name] == ["bias"]
    assert np.abs(embedding_norm.bias.grad.numpy()).max() > 0


def test_conv_init_std():
    paddle.seed(0)
    model = IResNet(num_features=8, layers=(1,), widths=(64,), input_size=8)
    # The 3x3 64->64 conv of the block has 36864 weights: their std estimates 0.1 closely.
    weight = model.stages[0][0].residual[1].weight.numpy()
    assert weight.std() == pytest.approx(0.1, rel=0.03)
    assert abs(weight.mean()) < 0.003


def numpy_norm_aware_pool(features, epsilon=1e-6):
    """GNAP written independently: rescale each position's vector to the mean norm, then average."""
    batch, channels, height, width = features.shape
    vectors = features.reshape(batch, channels, height * width)
    norms = np.sqrt((vectors ** 2).sum(axis=1) + epsilon)            # [N, HW]
    weights = norms.mean(axis=1, keepdims=True) / norms                # [N, HW]
    return (vectors * weights[:, None, :]).mean(axis=2)


def test_norm_aware_pool_matches_numpy():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2, 5, 3, 4)).astype("float32")
    features[1, :, 0, 0] *= 20  # one dominant position must not dominate the pooled vector
    pooled = norm_aware_pool(paddle.to_tensor(features)).numpy()
    np.testing.assert_allclose(pooled, numpy_norm_aware_pool(features.astype("float64")), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("num_features", [16, 12])
def test_gnap_embedding_matches_numpy(num_features):
    paddle.seed(0)
    model = IResNet(num_features=num_features, output_layer="gnap", **TINY)
    model.eval()
    head = model.embedding
    rng = np.random.default_rng(1)
    feature_map = rng.normal(size=(3, 16, 4, 4)).astype("float32")
    pooled = numpy_norm_aware_pool(feature_map.astype("float64"))
    # 1x1 projection only when the width differs from num_features; GNAP has no flatten-FC.
    projected = pooled if num_features == 16 else pooled @ head.projection.weight.numpy()
    assert ("projection.weight" in dict(head.named_parameters())) == (num_features != 16)
    # A fresh BN in eval mode: (x - 0) / sqrt(1 + eps) * 1 + 0.
    expected = projected / np.sqrt(1 + 1e-5)
    with paddle.no_grad():
        np.testing.assert_allclose(head(paddle.to_tensor(feature_map)).numpy(), expected, rtol=1e-4, atol=1e-5)
    assert model(images(2, 16)).shape == [2, num_features]


def test_constructor_contract():
    for name in IRESNET_NAMES + ["IResNet"]:
        parameters = inspect.signature(MODELS.get(name)).parameters
        first = next(iter(parameters.values()))
        assert first.name == "num_features" and first.default == 512
        assert all(p.kind == p.KEYWORD_ONLY for p in parameters.values())
        assert parameters["data_format"].default == "NCHW" and parameters["dropout"].default == 0.0
        with pytest.raises(TypeError):
            MODELS.build(name, fp16=False)
        with pytest.raises(PlscError, match="data_format"):
            MODELS.build(name, data_format="nhwc")
    generic = MODELS.parameters("IResNet")
    assert (generic["layers"], generic["widths"], generic["stem_stride"], generic["input_size"]) == (
        (1, 1, 1, 1), (64, 128, 256, 512), 1, 112)


@pytest.mark.parametrize("kwargs, key", [
    (dict(output_layer="avg"), "output_layer"),
    (dict(input_size=18), "input_size"),  # 18 is not a multiple of the total stride 4
    (dict(layers=(1, 1), widths=(8, 16, 32)), "layers"),
    (dict(layers=(1, 0)), "layers"),
])
def test_bad_generic_arguments(kwargs, key):
    with pytest.raises(PlscError, match=key):
        IResNet(**{**TINY, **kwargs})


def test_eval_is_deterministic_with_dropout():
    model = IResNet(num_features=8, dropout=0.5, **TINY)
    randomize_norms(model)
    model.eval()
    inputs = images(2, 16)
    with paddle.no_grad():
        np.testing.assert_array_equal(model(inputs).numpy(), model(inputs).numpy())
