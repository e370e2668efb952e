"""IResNet (insightface's "improved ResNet" for 112x112 faces): IResNet18 ... IResNet200 and a generic IResNet."""
import paddle
import paddle.nn as nn

from plsc.errors import PlscError
from plsc.models.layers import (ConvBN, FixedScaleBatchNorm1D, batch_norm2d, check_data_format, conv2d,
                                init_normal, to_layout, to_nchw)
from plsc.models.mixfair import build_adapter
from plsc.registry import MODELS

# Stage depths of the published models (insightface's and PLSC's iresnet).
DEPTHS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    200: (6, 26, 60, 6),
}
WIDTHS = (64, 128, 256, 512)
CONV_INIT_STD = 0.1  # insightface/PLSC initialise every IResNet conv with N(0, 0.1)


class IRBlock(nn.Layer):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, plus shortcut; no activation after the add."""

    def __init__(self, in_channels, out_channels, stride, data_format):
        super().__init__()
        self.residual = nn.Sequential(
            batch_norm2d(in_channels, data_format),
            conv2d(in_channels, out_channels, 3, data_format=data_format),
            batch_norm2d(out_channels, data_format),
            nn.PReLU(out_channels, data_format=data_format),
            conv2d(out_channels, out_channels, 3, stride=stride, data_format=data_format),
            batch_norm2d(out_channels, data_format),
        )
        reshapes = stride != 1 or in_channels != out_channels
        self.shortcut = (ConvBN(in_channels, out_channels, 1, stride, activation=False, data_format=data_format)
                         if reshapes else nn.Identity())

    def forward(self, features):
        return self.residual(features) + self.shortcut(features)


def make_stage(in_channels, out_channels, depth, data_format):
    """`depth` blocks; the first halves the resolution and changes the width."""
    blocks = [IRBlock(in_channels, out_channels, 2, data_format)]
    blocks += [IRBlock(out_channels, out_channels, 1, data_format) for _ in range(depth - 1)]
    return nn.Sequential(*blocks)


def norm_aware_pool(features, epsilon=1e-6):
    """Global norm-aware pooling: features [N, C, H, W] -> [N, C].

    With n_hw = sqrt(sum_c x_chw^2 + eps) the L2 norm of the feature vector at position hw and
    m = mean_hw n_hw its mean over positions, the output is
        y_c = mean_hw( x_chw * m / n_hw ),
    i.e. every position is rescaled to the average norm before average pooling, so a few
    high-norm positions cannot dominate the embedding (GNAP, "mobilefacenet++" / FFEM).
    eps keeps the gradient of the square root finite at an all-zero position.
    """
    norms = paddle.sqrt(paddle.sum(features * features, axis=1, keepdim=True) + epsilon)
    mean_norm = paddle.mean(norms, axis=[2, 3], keepdim=True)
    return paddle.mean(features * (mean_norm / norms), axis=[2, 3])


class FCEmbedding(nn.Layer):
    """flatten (NCHW order) -> Dropout -> Linear(C*H*W -> num_features) -> BN1D with its scale fixed at 1."""

    def __init__(self, channels, spatial_size, num_features, dropout):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels * spatial_size * spatial_size, num_features)
        self.features = FixedScaleBatchNorm1D(num_features)

    def forward(self, feature_map):
        """feature_map: [N, C, H, W] -> [N, num_features]."""
        return self.features(self.fc(self.dropout(paddle.flatten(feature_map, 1))))


class GNAPEmbedding(nn.Layer):
    """norm-aware pooling -> Dropout -> [Linear(C -> num_features), only if C differs] -> BN1D (weight 1)."""

    def __init__(self, channels, spatial_size, num_features, dropout):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        # A 1x1 projection of a pooled vector is a bias-free linear map (a BN follows).
        self.projection = (nn.Linear(channels, num_features, bias_attr=False)
                           if channels != num_features else nn.Identity())
        self.features = FixedScaleBatchNorm1D(num_features)

    def forward(self, feature_map):
        """feature_map: [N, C, H, W] -> [N, num_features]."""
        return self.features(self.projection(self.dropout(norm_aware_pool(feature_map))))


OUTPUT_LAYERS = {"fc": FCEmbedding, "gnap": GNAPEmbedding}


def output_spatial_size(input_size, stem_stride, num_stages):
    """Side of the last feature map; a PlscError when the strides do not divide the input evenly."""
    reduction = stem_stride * 2 ** num_stages
    if input_size % reduction:
        raise PlscError(f"Model.input_size: {input_size} is not divisible by the total stride {reduction} "
                        f"(stem_stride {stem_stride}, {num_stages} stages)")
    return input_size // reduction


class IResNet(nn.Layer):
    """Generic IResNet: images [N, 3, H, W] in [-1, 1] -> embedding [N, num_features] (BN output).

    `mixfair` ({alpha: 0.5}) adds the MixFair Adapter (plsc.models.mixfair): in training the last
    feature map, before the final BN, is also mixed across the batch and embedded.
    """

    def __init__(self, *, num_features=512, data_format="NCHW", dropout=0.0, output_layer="fc",
                 layers=(1, 1, 1, 1), widths=WIDTHS, stem_stride=1, input_size=112, mixfair=None):
        super().__init__()
        self.data_format = check_data_format(data_format)
        layers, widths = tuple(layers), tuple(widths)
        if len(layers) != len(widths) or not layers or min(layers) < 1:
            raise PlscError(f"Model.layers {list(layers)} and Model.widths {list(widths)} must be "
                            "non-empty lists of equal length with at least one block per stage")
        if output_layer not in OUTPUT_LAYERS:
            raise PlscError(f"Model.output_layer: '{output_layer}' is not one of {', '.join(OUTPUT_LAYERS)}")
        spatial_size = output_spatial_size(input_size, stem_stride, len(layers))

        self.stem = ConvBN(3, widths[0], 3, stride=stem_stride, data_format=data_format)
        in_widths = (widths[0],) + widths[:-1]
        self.stages = nn.Sequential(*[make_stage(in_width, width, depth, data_format)
                                      for in_width, width, depth in zip(in_widths, widths, layers)])
        self.final_norm = batch_norm2d(widths[-1], data_format)
        self.embedding = OUTPUT_LAYERS[output_layer](widths[-1], spatial_size, num_features, dropout)
        self.mixfair_adapter = build_adapter(mixfair)

        for layer in self.sublayers():
            if isinstance(layer, nn.Conv2D):
                init_normal(layer.weight, CONV_INIT_STD)

    def forward(self, images):
        """images: [N, 3, H, W] float32 (always NCHW) -> [N, num_features]."""
        feature_map = self.feature_map(images)
        if self.mixfair_adapter is None:
            return self.output_layer(feature_map)
        return self.mixfair_adapter(feature_map, self.output_layer)

    def feature_map(self, images):
        """images [N, 3, H, W] -> the last feature map, before the final BN, in the backbone's data_format."""
        return self.stages(self.stem(to_layout(images, self.data_format)))

    def output_layer(self, feature_map):
        """The last feature map (backbone layout) -> embedding: final BN, flatten or GNAP, Linear, BN1D."""
        return self.embedding(to_nchw(self.final_norm(feature_map), self.data_format))


MODELS.register("IResNet")(IResNet)


def register_depth(depth):
    """Register `IResNet{depth}`: the generic IResNet with the published stage depths DEPTHS[depth]."""
    def build(*, num_features=512, data_format="NCHW", dropout=0.0, output_layer="fc", mixfair=None):
        return IResNet(num_features=num_features, data_format=data_format, dropout=dropout,
                       output_layer=output_layer, layers=DEPTHS[depth], mixfair=mixfair)

    build.__name__ = f"iresnet{depth}"
    build.__doc__ = f"IResNet-{depth}, stages {'-'.join(map(str, DEPTHS[depth]))}."
    MODELS.register(f"IResNet{depth}")(build)


for _depth in DEPTHS:
    register_depth(_depth)
