"""arcface_torch backbones by their names (`r18` ... `r200`, `mbf`) -> the plsc model and a parameter name map.

A name map is a list of `(plsc layer, source prefix, kind)` in forward order; the source prefix is
the layer's name in arcface_torch's state dict (and in an ONNX export that kept those names).
Kinds say how tensors move: `conv` (weight, same OIHW layout), `bn` (weight, bias, running mean and
variance), `prelu` (slope per channel), `linear` (torch [out, in] -> paddle [in, out], optional bias),
`fixed_bn` (IResNet's `features`, whose scale arcface_torch keeps at 1.0).
"""
from collections import namedtuple

from plsc.errors import PlscError
from plsc.models.iresnet import DEPTHS

Architecture = namedtuple("Architecture", ["model_name", "model_kwargs", "name_map"])
Architecture.__doc__ = "A plsc model (registered name + constructor keywords) and its arcface_torch name map."


def conv_bn(plsc_layer, source_conv, source_bn, source_prelu=None):
    """A conv -> BN [-> PReLU] unit that plsc keeps as one ConvBN (sub-layers 0, 1, 2)."""
    entries = [(f"{plsc_layer}.0", source_conv, "conv"), (f"{plsc_layer}.1", source_bn, "bn")]
    if source_prelu is not None:
        entries.append((f"{plsc_layer}.2", source_prelu, "prelu"))
    return entries


def iresnet_name_map(depths):
    """IResNet with stage depths `depths` (every stage's first block downsamples, as in arcface_torch)."""
    entries = conv_bn("stem", "conv1", "bn1", "prelu")
    for stage, depth in enumerate(depths):
        for block in range(depth):
            plsc_block, source_block = f"stages.{stage}.{block}", f"layer{stage + 1}.{block}"
            for index, (name, kind) in enumerate((("bn1", "bn"), ("conv1", "conv"), ("bn2", "bn"),
                                                  ("prelu", "prelu"), ("conv2", "conv"), ("bn3", "bn"))):
                entries.append((f"{plsc_block}.residual.{index}", f"{source_block}.{name}", kind))
            if block == 0:
                entries += conv_bn(f"{plsc_block}.shortcut", f"{source_block}.downsample.0",
                                   f"{source_block}.downsample.1")
    entries += [("final_norm", "bn2", "bn"), ("embedding.fc", "fc", "linear"),
                ("embedding.features", "features", "fixed_bn")]
    return entries


def _convblock(plsc_layer, source, activation=True):
    """arcface_torch's ConvBlock / LinearBlock (`<source>.layers.{0,1[,2]}`) -> a plsc ConvBN."""
    return conv_bn(plsc_layer, f"{source}.layers.0", f"{source}.layers.1",
                   f"{source}.layers.2" if activation else None)


def _depthwise(plsc_layer, source):
    """DepthWise: ConvBlock 1x1, ConvBlock 3x3 depthwise, LinearBlock 1x1 (`<source>.layers.{0,1,2}`)."""
    return (_convblock(f"{plsc_layer}.body.0", f"{source}.layers.0")
            + _convblock(f"{plsc_layer}.body.1", f"{source}.layers.1")
            + _convblock(f"{plsc_layer}.body.2", f"{source}.layers.2", activation=False))


def mobilefacenet_name_map(blocks):
    """MobileFaceNet with residual counts `blocks` (arcface_torch's `layers` list, conv_sep, GDC features)."""
    entries = _convblock("body.0", "layers.0")
    if blocks[0] == 1:
        entries += _convblock("body.1", "layers.1")
    else:
        for index in range(blocks[0]):
            entries += _depthwise(f"body.1.{index}", f"layers.1.layers.{index}")
    for stage, count in zip((3, 5, 7), blocks[1:]):
        entries += _depthwise(f"body.{stage - 1}", f"layers.{stage - 1}")
        for index in range(count):
            entries += _depthwise(f"body.{stage}.{index}", f"layers.{stage}.layers.{index}")
    entries += _convblock("body.8", "conv_sep")
    entries += _convblock("embedding.depthwise", "features.layers.0", activation=False)
    entries += [("embedding.fc", "features.layers.2", "linear"), ("embedding.features", "features.layers.3", "bn")]
    return entries


ARCHITECTURES = {
    **{f"r{depth}": Architecture(f"IResNet{depth}", {}, iresnet_name_map(stages)) for depth, stages in DEPTHS.items()},
    "mbf": Architecture("MobileFaceNet_base", {}, mobilefacenet_name_map((1, 4, 6, 2))),
    "mbf_large": Architecture("MobileFaceNet_large", {}, mobilefacenet_name_map((2, 8, 12, 4))),
}


def get_architecture(name):
    """An arcface_torch network name -> Architecture; anything else is refused in one line."""
    if name not in ARCHITECTURES:
        raise PlscError(f"unknown architecture {name!r}; plsc-import knows {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]
