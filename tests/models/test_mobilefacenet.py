import inspect
import math

import numpy as np
import paddle
import paddle.nn as nn
import pytest

from backbone_checks import (assert_finite_gradients, assert_layouts_agree, expected_mobilefacenet_parameters,
                             images)
from plsc.errors import PlscError
from plsc.models import MODELS
from plsc.models.complexity import count_parameters
from plsc.models.mobilefacenet import MobileFaceNet, ResidualDepthWise


@pytest.fixture(scope="module")
def base():
    paddle.seed(0)
    return MODELS.build("MobileFaceNet_base")


def test_generic_parameter_count_follows_blocks_and_scale():
    model = MobileFaceNet(num_features=64, blocks=(2, 1, 1, 3), scale=3)
    assert count_parameters(model) == expected_mobilefacenet_parameters((2, 1, 1, 3), 3, num_features=64)


def test_base_and_large_are_the_generic_net():
    paddle.seed(0)
    base = MODELS.build("MobileFaceNet_base", num_features=128)
    paddle.seed(0)
    generic = MODELS.build("MobileFaceNet", num_features=128, blocks=[1, 4, 6, 2], scale=2)  # YAML gives lists
    assert [(k, v.shape) for k, v in base.state_dict().items()] == [
        (k, v.shape) for k, v in generic.state_dict().items()]
    base.eval()
    generic.eval()
    with paddle.no_grad():
        np.testing.assert_array_equal(base(images(1)).numpy(), generic(images(1)).numpy())


@pytest.mark.parametrize("kwargs, key", [
    (dict(blocks=(1, 4, 6)), "blocks"),
    (dict(blocks=(1, 0, 6, 2)), "blocks"),
    (dict(scale=0), "scale"),
    (dict(scale=1.5), "scale"),
])
def test_bad_shape_arguments(kwargs, key):
    with pytest.raises(PlscError, match=f"Model.{key}"):
        MobileFaceNet(**kwargs)


def test_large_is_wider_and_deeper():
    large = MODELS.build("MobileFaceNet_large")
    depthwise_widths = sorted({layer.weight.shape[0] for layer in large.sublayers()
                               if isinstance(layer, nn.Conv2D) and layer._groups == layer.weight.shape[0]})
    # scale 4: stage widths 256 and 512; inner widths 128/256/512 stay; the GDC conv is 512 wide.
    assert depthwise_widths == [128, 256, 512]
    stem = large.body[0][0]
    assert stem.weight.shape == [256, 3, 3, 3]
    residual_blocks = [layer for layer in large.sublayers() if type(layer).__name__ == "ResidualDepthWise"]
    assert len(residual_blocks) == 2 + 8 + 12 + 4


@pytest.mark.parametrize("data_format", ["NCHW", "NHWC"])
@pytest.mark.parametrize("name", ["MobileFaceNet", "MobileFaceNet_base"])
def test_output_shape(name, data_format):
    model = MODELS.build(name, data_format=data_format, num_features=128)
    model.eval()
    with paddle.no_grad():
        assert model(images(2)).shape == [2, 128]


def test_layouts_agree():
    assert_layouts_agree(lambda fmt: MODELS.build("MobileFaceNet_base", data_format=fmt), batch=4)


def test_gradients_finite(base):
    assert_finite_gradients(base, images(2))


def test_residual_adds_identity():
    block = ResidualDepthWise(8, 16, "NCHW")
    block.eval()
    inputs = paddle.randn([2, 8, 5, 5])
    with paddle.no_grad():
        np.testing.assert_allclose(block(inputs).numpy(), (inputs + block.body(inputs)).numpy(), atol=1e-6)


def test_kaiming_fan_out_init(base):
    # The last 1x1 conv (256 -> 512): He-normal with fan_out = 512 * 1 * 1.
    conv_sep = base.body[-1][0]
    assert conv_sep.weight.shape == [512, 256, 1, 1]
    assert conv_sep.weight.numpy().std() == pytest.approx(math.sqrt(2 / 512), rel=0.03)
    # Linear weight is [in, out]: fan_out = out = 512.
    assert base.embedding.fc.weight.numpy().std() == pytest.approx(math.sqrt(2 / 512), rel=0.03)


def test_constructor_contract():
    named_sizes = [("num_features", 512, inspect.Parameter.KEYWORD_ONLY),
                   ("data_format", "NCHW", inspect.Parameter.KEYWORD_ONLY)]
    mixfair = [("mixfair", None, inspect.Parameter.KEYWORD_ONLY)]  # the optional MixFair Adapter
    # The generic net defaults to the paper's: residual blocks 1-4-6-2 at width scale 1.
    generic = named_sizes + [("blocks", (1, 4, 6, 2), inspect.Parameter.KEYWORD_ONLY),
                             ("scale", 1, inspect.Parameter.KEYWORD_ONLY)] + mixfair
    named_sizes = named_sizes + mixfair
    for name, expected in [("MobileFaceNet", generic), ("MobileFaceNet_base", named_sizes),
                           ("MobileFaceNet_large", named_sizes)]:
        parameters = list(inspect.signature(MODELS.get(name)).parameters.values())
        assert [(p.name, p.default, p.kind) for p in parameters] == expected
        with pytest.raises(TypeError):
            MODELS.build(name, dropout=0.1)
        with pytest.raises(PlscError, match="data_format"):
            MODELS.build(name, data_format="CHW")
