"""Small pieces shared by the backbones: memory layout, conv+BN(+PReLU), embedding BN, DropPath, init."""
import math

import paddle
import paddle.nn as nn

from plsc.errors import PlscError

DATA_FORMATS = ("NCHW", "NHWC")


def check_data_format(data_format):
    """Return `data_format` if it is a layout the conv backbones run in; a PlscError otherwise."""
    if data_format not in DATA_FORMATS:
        raise PlscError(f"Model.data_format: '{data_format}' is not one of {', '.join(DATA_FORMATS)}")
    return data_format


def to_layout(images, data_format):
    """images: [N, C, H, W] -> the backbone's internal layout ([N, H, W, C] for NHWC)."""
    return images.transpose([0, 2, 3, 1]) if data_format == "NHWC" else images


def to_nchw(features, data_format):
    """features in the backbone's layout -> [N, C, H, W], so flattening is layout independent."""
    return features.transpose([0, 3, 1, 2]) if data_format == "NHWC" else features


def conv2d(in_channels, out_channels, kernel_size, stride=1, groups=1, padding=None, data_format="NCHW"):
    """A bias-free conv (a BN always follows); 'same' padding for odd kernels unless told."""
    padding = kernel_size // 2 if padding is None else padding
    return nn.Conv2D(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                     groups=groups, bias_attr=False, data_format=data_format)


def batch_norm2d(channels, data_format="NCHW", epsilon=1e-5):
    return nn.BatchNorm2D(channels, epsilon=epsilon, data_format=data_format)


class ConvBN(nn.Sequential):
    """conv (no bias) -> BN -> optional per-channel PReLU; the stem/projection unit of the conv nets."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, groups=1, padding=None,
                 activation=True, data_format="NCHW"):
        parts = [conv2d(in_channels, out_channels, kernel_size, stride, groups, padding, data_format),
                 batch_norm2d(out_channels, data_format)]
        if activation:
            parts.append(nn.PReLU(out_channels, data_format=data_format))
        super().__init__(*parts)


class FixedScaleBatchNorm1D(nn.Layer):
    """BN1D whose scale is fixed at 1.0: (x - mean) / sqrt(var + eps) + bias, on [N, C].

    insightface/PLSC refill the embedding BN's weight with 1.0 on every training forward. We fix
    it instead: a BN without affine parameters plus a learned bias. (Marking a Paddle BN weight
    stop_gradient is not an option: Paddle 3.3 then computes no gradient for its bias either,
    cf. PaddlePaddle/Paddle#47634.) The fixed scale gets no gradient, so no weight decay or
    clipping share, and exports to ONNX as BatchNormalization + Add.
    """

    def __init__(self, num_features, epsilon=1e-5):
        super().__init__()
        self.norm = nn.BatchNorm1D(num_features, epsilon=epsilon, weight_attr=False, bias_attr=False)
        self.bias = self.create_parameter([num_features], is_bias=True)

    def forward(self, features):
        return self.norm(features) + self.bias


class DropPath(nn.Layer):
    """Stochastic depth: in training, zero a whole sample's residual branch with prob `drop_prob`."""

    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, branch):
        """branch: [N, ...] -> same shape; identity in eval mode or when drop_prob is 0."""
        if not self.training or self.drop_prob == 0.0:
            return branch
        keep_prob = 1.0 - self.drop_prob
        mask_shape = [branch.shape[0]] + [1] * (branch.ndim - 1)
        keep = (paddle.rand(mask_shape, dtype=branch.dtype) < keep_prob).astype(branch.dtype)
        # Dividing by keep_prob keeps the branch's expected value equal to its eval-mode value.
        return branch * keep / keep_prob

    def extra_repr(self):
        return f"drop_prob={self.drop_prob}"


def init_normal(parameter, std, mean=0.0):
    nn.initializer.Normal(mean, std)(parameter)


def init_trunc_normal(parameter, std):
    # Paddle's TruncatedNormal cuts at absolute values -2 and 2 (the timm convention).
    nn.initializer.TruncatedNormal(0.0, std)(parameter)


def init_constant(parameter, value):
    nn.initializer.Constant(value)(parameter)


def fan_out(weight, layer):
    """Output fan of a conv or linear weight (Conv2D: [out, in/g, kh, kw]; Linear: [in, out])."""
    if isinstance(layer, nn.Linear):
        return weight.shape[1]
    return weight.shape[0] * math.prod(weight.shape[2:])


def init_kaiming_fan_out(model):
    """He-normal init with the output fan (gain sqrt(2)) for every conv and linear; zero biases."""
    for layer in model.sublayers(include_self=True):
        if isinstance(layer, (nn.Conv2D, nn.Linear)):
            init_normal(layer.weight, math.sqrt(2.0 / fan_out(layer.weight, layer)))
            if layer.bias is not None:
                init_constant(layer.bias, 0.0)
