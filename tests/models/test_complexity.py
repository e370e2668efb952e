import paddle.nn as nn
import pytest

from plsc.models.complexity import count_flops, count_parameters, model_facts
from plsc.models.face_vit import Attention


def small_net():
    return nn.Sequential(
        nn.Conv2D(3, 8, 3, stride=2, padding=1, bias_attr=False),   # 8x8 -> 4x4
        nn.BatchNorm2D(8),
        nn.Conv2D(8, 8, 3, padding=1, groups=4),                    # grouped, with bias
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 5),
    )


def test_count_parameters_skips_batch_norm_statistics():
    expected = 3 * 8 * 9 + (8 + 8) + (8 * 2 * 9 + 8) + (128 * 5 + 5)   # conv, BN affine, grouped conv, fc
    assert count_parameters(small_net()) == expected


def test_count_flops_by_hand():
    conv = 4 * 4 * 8 * (3 * 9)       # every output value: a 3x3 window over 3 input channels
    grouped = 4 * 4 * 8 * (2 * 9)    # 4 groups: 2 input channels per output channel
    linear = 5 * 128
    assert count_flops(small_net(), (1, 3, 8, 8)) == conv + grouped + linear
    assert count_flops(small_net(), (3, 3, 8, 8)) == 3 * (conv + grouped + linear)


def test_attention_matmuls_are_counted():
    tokens, dim = 7, 12
    projections = tokens * dim * 3 * dim + tokens * dim * dim
    matmuls = 2 * tokens * tokens * dim   # q k^T and weights v, summed over heads
    assert count_flops(Attention(dim, num_heads=3), (1, tokens, dim)) == projections + matmuls


def test_count_flops_restores_mode_and_hooks():
    net = small_net()
    net.train()
    count_flops(net, (1, 3, 8, 8))
    assert net.training and all(layer.training for layer in net.sublayers())
    assert all(not layer._forward_post_hooks for layer in net.sublayers(include_self=True))


def test_model_facts_is_per_image():
    facts = model_facts(small_net(), (4, 3, 8, 8))
    assert facts["gflops"] == pytest.approx(count_flops(small_net(), (1, 3, 8, 8)) * 1e-9)
    assert facts["params_m"] == count_parameters(small_net()) / 1e6
