"""CenterLoss centres get no weight decay; CurricularFace's t and AdaFace's norm statistics skip non-finite batches."""
import math
from types import SimpleNamespace

import numpy as np
import paddle
import pytest

from plsc.heads.class_table import ClassTable
from plsc.loss.adaface import AdaFace
from plsc.loss.center import CenterLoss
from plsc.loss.curricular import T_MOMENTUM, CurricularFace
from plsc.optim import build_optimizer

DIM = 4


def test_center_loss_centres_skip_weight_decay_and_reach_the_class_mean():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(6, DIM)).astype(np.float32) + 3.0
    labels = np.array([0, 0, 0, 1, 1, 1])
    loss = CenterLoss(normalize=False)
    [table] = loss.attach(SimpleNamespace(num_classes=2, embedding_size=DIM, model_parallel=False))
    assert table.weight_decay is False
    # A table left to the default decays: the control.
    control = ClassTable("control", 2, DIM, model_parallel=False)
    weight_decay, lr = 0.5, 0.2
    optimizer = build_optimizer({"name": "Momentum", "momentum": 0.0, "weight_decay": weight_decay}, [],
                                [table, control], lr=lr)
    x = paddle.to_tensor(features)
    y = paddle.to_tensor(labels)
    for _ in range(200):
        centres, columns = control.gather_batch_rows(y)
        control_loss = 0.5 * paddle.sum((x - paddle.gather(centres, columns)) ** 2) / 6
        (loss(x, y) + control_loss).backward()
        optimizer.step()
        optimizer.clear_grad()
    means = np.stack([features[:3].mean(axis=0), features[3:].mean(axis=0)])
    np.testing.assert_allclose(table.weight.numpy(), means, atol=1e-4)
    # With decay the fixed point of c - lr * ((c - mean) * n / N + wd * c) is mean * (n / N) / (n / N + wd).
    share = 3 / 6
    np.testing.assert_allclose(control.weight.numpy(), means * share / (share + weight_decay), atol=1e-4)


def curricular_step(loss, cos, labels):
    value = loss(paddle.to_tensor(cos.astype(np.float32)), paddle.to_tensor(labels))
    return float(value)


def test_curricular_t_skips_a_non_finite_batch():
    rng = np.random.default_rng(1)
    loss = CurricularFace(m=0.5, s=16.0)
    labels = np.array([0, 2, 1, 3])
    first = rng.uniform(-0.5, 0.9, size=(4, 5))
    curricular_step(loss, first, labels)
    t_after_first = T_MOMENTUM * first[np.arange(4), labels].mean()
    assert loss.t.item() == pytest.approx(t_after_first, rel=1e-5)
    poisoned = rng.uniform(-0.5, 0.9, size=(4, 5))
    poisoned[1, labels[1]] = np.nan
    curricular_step(loss, poisoned, labels)
    assert loss.t.item() == pytest.approx(t_after_first, rel=1e-5)  # unchanged, not NaN
    third = rng.uniform(-0.5, 0.9, size=(4, 5))
    assert math.isfinite(curricular_step(loss, third, labels))
    expected = T_MOMENTUM * third[np.arange(4), labels].mean() + (1 - T_MOMENTUM) * t_after_first
    assert loss.t.item() == pytest.approx(expected, rel=1e-5)


def test_adaface_statistics_skip_a_batch_with_a_nan_norm():
    rng = np.random.default_rng(2)
    loss = AdaFace(m=0.4, h=0.333, s=16.0, t_alpha=0.1)
    labels = paddle.to_tensor(np.array([0, 1, 2, 0]))
    cos = paddle.to_tensor(rng.uniform(-0.5, 0.9, size=(4, 3)).astype(np.float32))
    norms = np.array([12.0, 25.0, 31.0, 18.0])
    loss(cos, labels, paddle.to_tensor(norms.astype(np.float32)))
    mean = 0.1 * norms.mean() + 0.9 * 20.0
    std = 0.1 * norms.std(ddof=1) + 0.9 * 100.0
    assert loss.norm_mean.item() == pytest.approx(mean, rel=1e-5)
    assert loss.norm_std.item() == pytest.approx(std, rel=1e-5)
    for bad in (np.nan, np.inf):  # inf is clipped to 100 (finite, counted); NaN is skipped
        poisoned = norms.copy()
        poisoned[2] = bad
        loss(cos, labels, paddle.to_tensor(poisoned.astype(np.float32)))
        if np.isnan(bad):
            assert loss.norm_mean.item() == pytest.approx(mean, rel=1e-5)
            assert loss.norm_std.item() == pytest.approx(std, rel=1e-5)
        else:
            clipped = np.minimum(poisoned, 100.0)
            mean = 0.1 * clipped.mean() + 0.9 * mean
            std = 0.1 * clipped.std(ddof=1) + 0.9 * std
            assert loss.norm_mean.item() == pytest.approx(mean, rel=1e-5)
            assert loss.norm_std.item() == pytest.approx(std, rel=1e-5)
