import math

import numpy as np
import paddle
import paddle.nn as nn
import pytest

from plsc.errors import PlscError
from plsc.models.layers import (ConvBN, DropPath, FixedScaleBatchNorm1D, check_data_format, init_kaiming_fan_out,
                                to_layout, to_nchw)


def test_data_format_check():
    assert check_data_format("NCHW") == "NCHW" and check_data_format("NHWC") == "NHWC"
    for bad in ("nchw", "NCL", None):
        with pytest.raises(PlscError, match="Model.data_format"):
            check_data_format(bad)


def test_layout_round_trip():
    array = np.arange(2 * 3 * 4 * 5, dtype="float32").reshape(2, 3, 4, 5)
    nhwc = to_layout(paddle.to_tensor(array), "NHWC")
    np.testing.assert_array_equal(nhwc.numpy(), array.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(to_nchw(nhwc, "NHWC").numpy(), array)
    assert to_layout(paddle.to_tensor(array), "NCHW").shape == [2, 3, 4, 5]


def test_drop_path_drops_whole_samples_and_rescales():
    paddle.seed(0)
    layer = DropPath(0.3)
    branch = paddle.ones([4000, 2, 3])
    out = layer(branch).numpy()
    per_sample = out.reshape(4000, -1)
    # Each sample is either dropped entirely or kept and scaled by 1 / keep_prob.
    assert np.all((per_sample == 0).all(axis=1) | np.isclose(per_sample, 1 / 0.7).all(axis=1))
    dropped = (per_sample == 0).all(axis=1).mean()
    assert abs(dropped - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 4000)
    assert abs(out.mean() - 1.0) < 0.05
    layer.eval()
    np.testing.assert_array_equal(layer(branch).numpy(), branch.numpy())
    assert DropPath(0.0)(branch) is branch


def test_fixed_scale_batch_norm_matches_numpy():
    paddle.seed(0)
    layer = FixedScaleBatchNorm1D(3)
    layer.bias.set_value(np.array([0.5, -1.0, 2.0], "float32"))
    rng = np.random.default_rng(0)
    features = rng.normal(2.0, 3.0, size=(6, 3)).astype("float32")
    expected = (features - features.mean(0)) / np.sqrt(features.var(0) + 1e-5) + [0.5, -1.0, 2.0]
    layer.train()
    np.testing.assert_allclose(layer(paddle.to_tensor(features)).numpy(), expected, rtol=1e-4, atol=1e-4)
    # Running statistics follow Paddle's momentum 0.9 (torch's 0.1), unbiased variance.
    np.testing.assert_allclose(layer.norm._mean.numpy(), 0.1 * features.mean(0), rtol=1e-5)
    assert [name for name, param in layer.named_parameters() if not param.stop_gradient] == ["bias"]


def test_conv_bn_prelu_layout():
    block = ConvBN(4, 6, 3, stride=2, data_format="NHWC")
    conv, norm, prelu = block
    assert conv.weight.shape == [6, 4, 3, 3] and conv.bias is None
    assert len(prelu.parameters()[0].numpy()) == 6
    assert block(paddle.randn([2, 8, 8, 4])).shape == [2, 4, 4, 6]  # padding 1: 8 -> 4, not 3
    assert len(ConvBN(4, 6, 1, activation=False)) == 2


def test_kaiming_fan_out():
    paddle.seed(0)
    model = nn.Sequential(nn.Conv2D(64, 128, 3, bias_attr=True), nn.Linear(512, 256))
    init_kaiming_fan_out(model)
    assert model[0].weight.numpy().std() == pytest.approx(math.sqrt(2 / (128 * 9)), rel=0.03)
    assert model[1].weight.numpy().std() == pytest.approx(math.sqrt(2 / 256), rel=0.03)
    assert not model[0].bias.numpy().any() and not model[1].bias.numpy().any()
