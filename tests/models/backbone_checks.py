"""Helpers shared by the backbone tests (not collected: no test_ prefix)."""
import numpy as np
import paddle
import paddle.nn as nn

from plsc.models.layers import FixedScaleBatchNorm1D


def randomize_norms(model, seed=0):
    """Give every BN non-trivial running statistics and affine values, and every PReLU random slopes,
    so that eval-mode outputs depend on all of them (fresh BN layers are the identity)."""
    rng = np.random.default_rng(seed)

    def fill(param, low, high):
        param.set_value(rng.uniform(low, high, param.shape).astype("float32"))

    for layer in model.sublayers():
        if isinstance(layer, nn.layer.norm._BatchNormBase):
            fill(layer._mean, -0.5, 0.5)
            fill(layer._variance, 0.5, 2.0)
            if layer.weight is not None:  # the IResNet embedding BN has no affine parameters
                fill(layer.weight, 0.5, 1.5)
                fill(layer.bias, -0.2, 0.2)
        elif isinstance(layer, FixedScaleBatchNorm1D):
            fill(layer.bias, -0.2, 0.2)
        elif isinstance(layer, nn.PReLU):
            for param in layer.parameters():
                fill(param, 0.0, 0.5)


def images(batch, size=112, seed=0):
    """Float32 images [batch, 3, size, size] in [-1, 1]."""
    rng = np.random.default_rng(seed)
    return paddle.to_tensor(rng.uniform(-1, 1, (batch, 3, size, size)).astype("float32"))


def assert_layouts_agree(build, batch=2, size=112, atol=1e-4, modes=("eval", "train")):
    """build(data_format) -> model; NCHW weights loaded into the NHWC model must give the same
    embedding, in eval mode (running statistics) and in train mode (batch statistics)."""
    paddle.seed(0)
    nchw = build("NCHW")
    randomize_norms(nchw)
    nhwc = build("NHWC")
    state = nchw.state_dict()
    assert set(state) == set(nhwc.state_dict())
    nhwc.set_state_dict(state)
    inputs = images(batch, size)
    # Train mode normalises the embedding over a tiny batch: a feature on which the samples nearly
    # agree has a tiny variance that magnifies float rounding (measured on IResNet18, batch 2: a
    # 2e-5 difference before the last BN became 1.2e-3 after it), hence the looser bound there.
    tolerances = {"eval": atol, "train": 10 * atol}
    for mode in modes:
        tolerance = tolerances[mode]
        getattr(nchw, mode)()
        getattr(nhwc, mode)()
        with paddle.no_grad():
            expected, actual = nchw(inputs).numpy(), nhwc(inputs).numpy()
        np.testing.assert_allclose(actual, expected, atol=tolerance, rtol=0, err_msg=f"{mode} mode")


def assert_finite_gradients(model, inputs, unused=()):
    """One train-mode forward/backward on `inputs`: every trainable parameter (but `unused`) gets a
    finite gradient, and the gradients are not all zero."""
    model.train()
    embedding = model(inputs)
    assert np.isfinite(embedding.numpy()).all()
    # A random linear read-out: a sum of squares would be nearly constant after a train-mode BN.
    readout = paddle.to_tensor(np.random.default_rng(1).normal(size=embedding.shape).astype("float32"))
    (embedding * readout).sum().backward()
    trainable = [(name, param) for name, param in model.named_parameters()
                 if not param.stop_gradient and name not in unused]
    missing = [name for name, param in trainable if param.grad is None]
    assert not missing, f"no gradient for {missing}"
    for name, param in trainable:
        assert np.isfinite(param.grad.numpy()).all(), name
    assert any(np.abs(param.grad.numpy()).max() > 0 for _, param in trainable)


# Parameter counts written out from the published architectures (IResNet, MobileFaceNet, FaceViT), by hand,
# independently of the model code. BN running statistics are not parameters.

def expected_iresnet_parameters(depths, widths=(64, 128, 256, 512), num_features=512, spatial=7):
    stem = 3 * 9 * widths[0] + 2 * widths[0] + widths[0]          # conv3x3, BN, PReLU
    total = stem
    in_width = widths[0]
    for depth, width in zip(depths, widths):
        for index in range(depth):
            block_in = in_width if index == 0 else width
            total += 2 * block_in + 9 * block_in * width + 2 * width + width + 9 * width * width + 2 * width
            if index == 0:  # stride 2: conv1x1 + BN shortcut
                total += block_in * width + 2 * width
        in_width = width
    total += 2 * widths[-1]                                           # BN2d before flatten
    total += widths[-1] * spatial * spatial * num_features + num_features  # fc with bias
    total += num_features                                             # embedding BN1d: bias (scale fixed)
    return total


def expected_vit_parameters(dim, depth, mlp_ratio=4, tokens=144, num_features=512, patch=9):
    hidden = dim * mlp_ratio
    block = 2 * 2 * dim + dim * 3 * dim + (dim * dim + dim) + (dim * hidden + hidden) + (hidden * dim + dim)
    stem = 3 * patch * patch * dim + dim + tokens * dim + dim          # patch conv, pos_embed, mask_token
    head = 2 * dim + tokens * dim * dim + 2 * dim + dim * num_features + 2 * num_features
    return stem + depth * block + head


def expected_mobilefacenet_parameters(blocks, scale, num_features=512):
    narrow, wide = 64 * scale, 128 * scale

    def conv_bn(in_channels, out_channels, kernel, groups=1, prelu=True):
        return in_channels // groups * out_channels * kernel * kernel + 2 * out_channels + (
            out_channels if prelu else 0)

    def depthwise(in_channels, out_channels, inner):  # 1x1 expand, 3x3 depthwise, linear 1x1
        return conv_bn(in_channels, inner, 1) + conv_bn(inner, inner, 3, inner) + conv_bn(
            inner, out_channels, 1, prelu=False)

    total = conv_bn(3, narrow, 3)
    total += conv_bn(narrow, narrow, 3, groups=64) if blocks[0] == 1 else blocks[0] * depthwise(narrow, narrow, 128)
    total += depthwise(narrow, narrow, 128) + blocks[1] * depthwise(narrow, narrow, 128)
    total += depthwise(narrow, wide, 256) + blocks[2] * depthwise(wide, wide, 256)
    total += depthwise(wide, wide, 512) + blocks[3] * depthwise(wide, wide, 256)
    total += conv_bn(wide, 512, 1)
    total += conv_bn(512, 512, 7, groups=512, prelu=False)   # global depthwise conv
    total += 512 * num_features + 2 * num_features            # linear (no bias) + BN1d
    return total


def expected_facet_parameters(dim, depth, heads, prompts, tokens, num_features=512, mlp_ratio=4, patch=8):
    hidden = dim * mlp_ratio
    block = 4 * dim + (dim * 3 * dim + 3 * dim) + (dim * dim + dim) + (dim * hidden + hidden) + (hidden * dim + dim)
    stem = 3 * patch * patch * dim + dim + tokens * dim
    prompt_part = depth * 2 * prompts * dim + 2 * heads * prompts * (dim // heads) + dim * dim + dim
    return stem + depth * block + prompt_part + dim * num_features + num_features


def expected_facet_macs(dim, depth, prompts, tokens, num_features=512, mlp_ratio=4, patch=8):
    length = tokens + prompts  # every block takes the prompts
    block = length * (dim * 3 * dim + dim * dim + 2 * dim * dim * mlp_ratio) + 2 * length * length * dim
    pool = tokens * dim * dim + 2 * prompts * tokens * dim
    return tokens * 3 * patch * patch * dim + depth * block + pool + dim * num_features
