"""GroupFace (Kim et al., CVPR 2020): group-aware embeddings on top of an IResNet, registered in MODELS.

A backbone produces a shared feature x; from it GroupFace builds
  - an instance representation  v_x = FC(x),
  - K group-aware representations  v_k = FC_k(x),
  - a group decision network (GDN, an MLP on v_x) giving p(G_k | x) = softmax over K logits,
and the final embedding  v = v_x + sum_k p(G_k | x) v_k  (soft aggregation; `hard` keeps only the
most probable group). The GDN is trained by the self-distributed grouping loss (plsc.loss.group,
Loss.Train entry `GroupLoss`, weight 0.1 in the paper); the margin loss trains v as usual.

Why a MODELS wrapper and not a head option: the group layers are part of the embedding network.
They run at evaluation, IJB-C and ONNX export, so they must live in the model that is saved,
evaluated and exported; the class layer (head) is dropped after training. The wrapper's forward
returns only the embedding (what the evaluator and the exporter call); in training mode it also
keeps the group logits of the last forward for GroupLoss.

MixFair Adapter (`Model.mixfair: {alpha: 0.5}`, plsc.models.mixfair): the trunk's last feature
map k is mixed, and f_mix is the whole GroupFace embedding of k_mix (instance + aggregated groups,
through the same layers), so MixFairCosFace compares vectors of one kind. GroupLoss still sees the
group logits of k, never of the mix: the groups describe real faces.

Names: `GroupFace_IResNet` (the generic IResNet's keys) and `GroupFace_IResNet18/34/50/100/200`.
The trunk's embedding layer outputs the shared feature (`shared_features` wide), so the trunk's
`output_layer` (fc or gnap) still applies. Representations are Linear + BN1D (no activation, as
the trunk's own embedding); the GDN is Linear -> BN1D -> ReLU -> Linear (hidden width 256).
All K group layers are one Linear(shared, K * D) and one BN1D(K * D), which exports as one matmul.
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from plsc.errors import PlscError
from plsc.models.iresnet import DEPTHS, WIDTHS, IResNet
from plsc.models.mixfair import build_adapter
from plsc.registry import MODELS

DEFAULT_NUM_GROUPS = 32  # the paper's best setting
DEFAULT_GDN_HIDDEN = 256
AGGREGATIONS = ("soft", "hard")


def aggregate_groups(instance, groups, probabilities):
    """v_x + sum_k p_k v_k: [N, D], [N, K, D], [N, K] -> [N, D]."""
    return instance + paddle.sum(probabilities.unsqueeze(2) * groups, axis=1)


class GroupFaceLayers(nn.Layer):
    """Shared feature [N, S] -> (embedding [N, D], group logits [N, K])."""

    def __init__(self, shared_features, num_features, num_groups, gdn_hidden, aggregation):
        super().__init__()
        if num_groups < 1 or gdn_hidden < 1:
            raise PlscError(f"Model.num_groups ({num_groups}) and Model.gdn_hidden ({gdn_hidden}) must be >= 1")
        if aggregation not in AGGREGATIONS:
            raise PlscError(f"Model.aggregation: '{aggregation}' is not one of {', '.join(AGGREGATIONS)}")
        self.num_groups, self.num_features, self.aggregation = num_groups, num_features, aggregation
        self.instance = nn.Sequential(nn.Linear(shared_features, num_features), nn.BatchNorm1D(num_features))
        self.groups = nn.Sequential(nn.Linear(shared_features, num_groups * num_features),
                                    nn.BatchNorm1D(num_groups * num_features))
        self.decision = nn.Sequential(nn.Linear(num_features, gdn_hidden), nn.BatchNorm1D(gdn_hidden), nn.ReLU(),
                                      nn.Linear(gdn_hidden, num_groups))

    def forward(self, shared):
        instance = self.instance(shared)
        groups = self.groups(shared).reshape([-1, self.num_groups, self.num_features])
        group_logits = self.decision(instance)
        probabilities = F.softmax(group_logits, axis=1)
        if self.aggregation == "hard":
            probabilities = F.one_hot(paddle.argmax(probabilities, axis=1), self.num_groups).astype(instance.dtype)
        return aggregate_groups(instance, groups, probabilities), group_logits


class GroupFace(nn.Layer):
    """images [N, 3, H, W] -> embedding [N, num_features]; `group_logits` [N, K] after a training forward.

    `trunk` is an IResNet without an adapter of its own; `mixfair` adds one around the group layers.
    """

    def __init__(self, trunk, shared_features, num_features, num_groups, gdn_hidden, aggregation, mixfair=None):
        super().__init__()
        self.trunk = trunk
        self.group_layers = GroupFaceLayers(shared_features, num_features, num_groups, gdn_hidden, aggregation)
        self.mixfair_adapter = build_adapter(mixfair)
        # A plain dict: a Tensor attribute of a Layer would be registered (and saved) as a buffer.
        self._last_step = {"group_logits": None}

    @property
    def group_logits(self):
        """Group-decision logits [N, K] of the last training forward (None before one, or in eval mode)."""
        return self._last_step["group_logits"]

    def forward(self, images):
        feature_map = self.trunk.feature_map(images)
        embedding, group_logits = self.embed(feature_map)
        self._last_step["group_logits"] = group_logits if self.training else None
        if self.mixfair_adapter is not None:
            # f_mix is the embedding alone; the mix's group logits are not kept (GroupLoss reads k's).
            self.mixfair_adapter.embed_mix(feature_map, lambda mixed_map: self.embed(mixed_map)[0])
        return embedding

    def embed(self, feature_map):
        """The trunk's last feature map -> (embedding [N, D], group logits [N, K])."""
        return self.group_layers(self.trunk.output_layer(feature_map))


@MODELS.register("GroupFace_IResNet")
def groupface_iresnet(*, num_features=512, data_format="NCHW", dropout=0.0, output_layer="fc",
                      layers=(1, 1, 1, 1), widths=WIDTHS, stem_stride=1, input_size=112,
                      num_groups=DEFAULT_NUM_GROUPS, shared_features=512, gdn_hidden=DEFAULT_GDN_HIDDEN,
                      aggregation="soft", mixfair=None):
    """GroupFace on the generic IResNet (depths and widths from the config)."""
    trunk = IResNet(num_features=shared_features, data_format=data_format, dropout=dropout,
                    output_layer=output_layer, layers=layers, widths=widths, stem_stride=stem_stride,
                    input_size=input_size)
    return GroupFace(trunk, shared_features, num_features, num_groups, gdn_hidden, aggregation, mixfair)


def _register_depth(depth):
    def build(*, num_features=512, data_format="NCHW", dropout=0.0, output_layer="fc",
              num_groups=DEFAULT_NUM_GROUPS, shared_features=512, gdn_hidden=DEFAULT_GDN_HIDDEN,
              aggregation="soft", mixfair=None):
        return groupface_iresnet(num_features=num_features, data_format=data_format, dropout=dropout,
                                 output_layer=output_layer, layers=DEPTHS[depth], num_groups=num_groups,
                                 shared_features=shared_features, gdn_hidden=gdn_hidden, aggregation=aggregation,
                                 mixfair=mixfair)

    build.__name__ = f"groupface_iresnet{depth}"
    build.__doc__ = f"GroupFace on IResNet-{depth} (stages {'-'.join(map(str, DEPTHS[depth]))})."
    MODELS.register(f"GroupFace_IResNet{depth}")(build)


for _depth in DEPTHS:
    _register_depth(_depth)
