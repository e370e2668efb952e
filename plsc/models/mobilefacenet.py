"""MobileFaceNet (Chen et al. 2018, as scaled in insightface/PLSC): MobileFaceNet, _base and _large."""
import paddle
import paddle.nn as nn

from plsc.errors import PlscError
from plsc.models.layers import ConvBN, check_data_format, init_kaiming_fan_out, to_layout, to_nchw
from plsc.models.mixfair import build_adapter
from plsc.registry import MODELS

EMBEDDING_CHANNELS = 512  # width of the 1x1 conv before the global depthwise conv, fixed for every scale


class DepthWise(nn.Layer):
    """Inverted bottleneck: 1x1 (in -> inner) -> 3x3 depthwise (inner, stride) -> linear 1x1 (inner -> out)."""

    def __init__(self, in_channels, out_channels, inner_channels, stride, data_format):
        super().__init__()
        self.body = nn.Sequential(
            ConvBN(in_channels, inner_channels, 1, data_format=data_format),
            ConvBN(inner_channels, inner_channels, 3, stride, groups=inner_channels, data_format=data_format),
            ConvBN(inner_channels, out_channels, 1, activation=False, data_format=data_format),
        )

    def forward(self, features):
        return self.body(features)


class ResidualDepthWise(DepthWise):
    """A stride-1, width-preserving DepthWise block with an identity shortcut."""

    def __init__(self, channels, inner_channels, data_format):
        super().__init__(channels, channels, inner_channels, 1, data_format)

    def forward(self, features):
        return features + self.body(features)


def residual_stack(channels, inner_channels, count, data_format):
    return nn.Sequential(*[ResidualDepthWise(channels, inner_channels, data_format) for _ in range(count)])


class GDCEmbedding(nn.Layer):
    """Global depthwise conv (7x7, no activation) -> flatten -> Linear(no bias) -> BN1D."""

    def __init__(self, channels, num_features, data_format):
        super().__init__()
        self.data_format = data_format
        self.depthwise = ConvBN(channels, channels, 7, groups=channels, padding=0, activation=False,
                                data_format=data_format)
        self.fc = nn.Linear(channels, num_features, bias_attr=False)
        self.features = nn.BatchNorm1D(num_features)

    def forward(self, feature_map):
        """feature_map: [N, C, 7, 7] in the model's layout -> [N, num_features]."""
        pooled = to_nchw(self.depthwise(feature_map), self.data_format)
        return self.features(self.fc(paddle.flatten(pooled, 1)))


def check_shape_arguments(blocks, scale):
    """PlscError unless `blocks` is four positive residual counts and `scale` a positive integer."""
    if len(blocks) != 4 or any(not isinstance(count, int) or count < 1 for count in blocks):
        raise PlscError(f"Model.blocks: {list(blocks)} must be four positive residual-block counts")
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
        raise PlscError(f"Model.scale: {scale!r} must be a positive integer width multiplier")


class MobileFaceNet(nn.Layer):
    """images [N, 3, 112, 112] in [-1, 1] -> embedding [N, num_features] (BN output).

    `blocks` are the residual counts of the four stages; `scale` multiplies the stage widths
    (64 and 128 at scale 1), while the inner (expansion) widths 64/128/256/512 stay fixed.
    The defaults are the paper's network (Chen et al. 2018: 0.99M parameters and 221M MAdds with
    its 128-d embedding); base = blocks (1, 4, 6, 2) at scale 2 gives widths 128 and 256 as in
    PLSC's MobileFaceNet_base (insightface's "mbf", 0.45 GFLOPs).
    """

    def __init__(self, *, num_features=512, data_format="NCHW", blocks=(1, 4, 6, 2), scale=1, mixfair=None):
        super().__init__()
        self.data_format = check_data_format(data_format)
        blocks = tuple(blocks)
        check_shape_arguments(blocks, scale)
        narrow, wide = 64 * scale, 128 * scale
        if blocks[0] == 1:
            # A single grouped conv (64 groups) rather than a one-block residual stage.
            first_stage = ConvBN(narrow, narrow, 3, groups=64, data_format=data_format)
        else:
            first_stage = residual_stack(narrow, 128, blocks[0], data_format)
        self.body = nn.Sequential(
            ConvBN(3, narrow, 3, stride=2, data_format=data_format),
            first_stage,
            DepthWise(narrow, narrow, 128, 2, data_format),
            residual_stack(narrow, 128, blocks[1], data_format),
            DepthWise(narrow, wide, 256, 2, data_format),
            residual_stack(wide, 256, blocks[2], data_format),
            DepthWise(wide, wide, 512, 2, data_format),
            residual_stack(wide, 256, blocks[3], data_format),
            ConvBN(wide, EMBEDDING_CHANNELS, 1, data_format=data_format),
        )
        self.embedding = GDCEmbedding(EMBEDDING_CHANNELS, num_features, data_format)
        # MixFair Adapter (plsc.models.mixfair): in training the last feature map, before the GDC
        # output layer, is also mixed across the batch and embedded; no parameters of its own.
        self.mixfair_adapter = build_adapter(mixfair)
        init_kaiming_fan_out(self)

    def forward(self, images):
        """images: [N, 3, 112, 112] float32 (always NCHW) -> [N, num_features]."""
        feature_map = self.body(to_layout(images, self.data_format))
        if self.mixfair_adapter is None:
            return self.embedding(feature_map)
        return self.mixfair_adapter(feature_map, self.embedding)


MODELS.register("MobileFaceNet")(MobileFaceNet)


@MODELS.register("MobileFaceNet_base")
def mobilefacenet_base(*, num_features=512, data_format="NCHW", mixfair=None):
    """MobileFaceNet, residual blocks 1-4-6-2, widths x2."""
    return MobileFaceNet(num_features=num_features, data_format=data_format, blocks=(1, 4, 6, 2), scale=2,
                         mixfair=mixfair)


@MODELS.register("MobileFaceNet_large")
def mobilefacenet_large(*, num_features=512, data_format="NCHW", mixfair=None):
    """MobileFaceNet, residual blocks 2-8-12-4, widths x4."""
    return MobileFaceNet(num_features=num_features, data_format=data_format, blocks=(2, 8, 12, 4), scale=4,
                         mixfair=mixfair)
