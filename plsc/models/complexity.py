"""Model size facts: parameter count and multiply-accumulates (reported as "GFLOPs" = MACs * 1e-9).

Face-recognition papers and insightface quote backbone cost as multiply-accumulates of convs and
matmuls (IResNet50 "6.3 GFLOPs"); BN, activations, additions and pooling are not counted.
`paddle.flops` is not used: in Paddle 3.3.1 it raises a TypeError under numpy 2 when it sums its
per-layer counters, and as a per-layer hook it cannot see functional matmuls (ViT attention).
"""
import math

import paddle
import paddle.nn as nn


def batch_norm_statistics(layer):
    """Ids of the BN running mean/variance tensors (Paddle keeps them as non-trainable parameters)."""
    ids = set()
    for sublayer in layer.sublayers(include_self=True):
        if isinstance(sublayer, nn.layer.norm._BatchNormBase):
            ids.update({id(sublayer._mean), id(sublayer._variance)})
    return ids


def count_parameters(layer):
    """Number of learnable values in `layer` (frozen weights included, BN running statistics not)."""
    statistics = batch_norm_statistics(layer)
    return sum(math.prod(param.shape) for param in layer.parameters() if id(param) not in statistics)


def conv_macs(layer, output):
    """Each output value of a conv is a dot product over (in_channels / groups) * kh * kw inputs."""
    return math.prod(output.shape) * math.prod(layer.weight.shape[1:])


def linear_macs(layer, output):
    """Each output value of a linear layer is a dot product over in_features inputs (weight [in, out])."""
    return math.prod(output.shape) * layer.weight.shape[0]


MAC_COUNTERS = {nn.Conv2D: conv_macs, nn.Linear: linear_macs}


def layer_macs(layer, inputs, output):
    """MACs of one call of `layer`; layers with matmuls outside Conv2D/Linear report them via `count_macs`."""
    own = layer.count_macs(inputs, output) if hasattr(layer, "count_macs") else 0
    counter = MAC_COUNTERS.get(type(layer))
    return own + (counter(layer, output) if counter else 0)


def count_flops(layer, input_shape=(1, 3, 112, 112)):
    """Multiply-accumulates of one eval-mode forward on zeros of `input_shape` (the "FLOPs" convention)."""
    total = [0]

    def record(sublayer, inputs, output):
        total[0] += layer_macs(sublayer, inputs, output)

    handles = [sublayer.register_forward_post_hook(record) for sublayer in layer.sublayers(include_self=True)]
    was_training = layer.training
    layer.eval()
    try:
        with paddle.no_grad():
            layer(paddle.zeros(list(input_shape), dtype="float32"))
    finally:
        for handle in handles:
            handle.remove()
        if was_training:
            layer.train()
    return total[0]


def model_facts(layer, input_shape=(1, 3, 112, 112)):
    """Parameters in millions and GFLOPs (MACs * 1e-9) per image of `layer` at `input_shape`."""
    return {
        "params_m": count_parameters(layer) / 1e6,
        "gflops": count_flops(layer, input_shape) * 1e-9 / input_shape[0],
    }
