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
