"""MixFairCosFace (Wang et al., "MixFairFace", AAAI 2023): CosFace whose target margin carries an identity bias.

For row i of the global batch, with target cosine cos_i,y and unit embeddings f (the backbone's
output) and f_mix (its MixFair Adapter's embedding of the mixed feature map, partner p(i)):

    logit_i,y = s * (cos_i,y - (m + e_i + m_cifp,i)),   other columns s * cos_i,j
    e_i       = <f_mix,i, f_p(i)>^2 - <f_mix,i, f_i>^2      (not detached: it trains the backbone)

m_cifp (CIFP, Xu et al., CVPR 2021, optional): of all negative cosines of the batch keep the K
largest (K = ceil(#negatives / (C - 1)), the batch size with a full class layer) that also satisfy
cos_i,y - m > cos_i,j; m_cifp,i is the mean of row i's kept negatives squared (0 without any),
with gradient, as the authors train it. With Partial FC the negatives are the sampled columns, and K
keeps the same share of them.

Every term is per row on the data-parallel side; the logits may be sharded by class (model parallel):
e_i is gathered like PartialFC gathers the embeddings, CIFP's top-K threshold and per-row sums are
assembled with collectives, and the softmax is margin.py's model-parallel cross-entropy.
"""
import math

import paddle
import paddle.nn.functional as F

from plsc import distributed
from plsc.errors import PlscError
from plsc.loss.target_softmax import TargetSoftmaxLoss
from plsc.models.mixfair import mixfair_outputs
from plsc.registry import LOSSES


def identity_bias(embeddings, mixed, permutation):
    """e_i = <f_mix,i, f_p(i)>^2 - <f_mix,i, f_i>^2 on unit vectors: [n, D], [n, D], [n] int64 -> [n]."""
    unit = F.normalize(embeddings.astype("float32"), axis=1)
    unit_mixed = F.normalize(mixed.astype("float32"), axis=1)
    partner = paddle.gather(unit, permutation, axis=0)
    return (unit_mixed * partner).sum(axis=1) ** 2 - (unit_mixed * unit).sum(axis=1) ** 2


def sum_over_ranks(tensor, model_parallel):
    """Sum of every rank's `tensor` [N, ...] whose gradient reaches every rank's addend.

    The sum feeds the target logit on one rank only, so (unlike margin.py's identity-backward sum)
    each addend's gradient is the sum of all ranks' gradients: gather with summed gradients, then add.
    """
    if not model_parallel or distributed.world_size() == 1:
        return tensor
    gathered = distributed.all_gather_with_grad(tensor.unsqueeze(0), sum_grads=True)
    return gathered.sum(axis=0)


def cifp_margin(cos, labels_local, m, num_classes, model_parallel):
    """CIFP margin per row: cos [N, S_local] float32, labels_local [N] int64 (-1: not here) -> [N, 1].

    Negatives are every column but a row's target; a negative is kept when it is among the K
    largest negatives of the whole (global, all shards) batch and below its row's target cosine minus m.
    """
    labels_local = labels_local.reshape([-1, 1])
    rows, columns = cos.shape
    has_target = labels_local >= 0
    target_mask = F.one_hot(labels_local.clip(min=0).reshape([-1]), columns).astype("bool") & has_target
    is_negative = ~target_mask
    with paddle.no_grad():
        target_cos = (paddle.take_along_axis(cos, labels_local.clip(min=0), axis=1)
                      * has_target.astype(cos.dtype))
        num_negatives = paddle.to_tensor([float(rows * columns) - float(has_target.astype("float32").sum())])
        if model_parallel:
            distributed.all_reduce(target_cos, "sum")
            distributed.all_reduce(num_negatives, "sum")
        # The authors keep ceil(#negatives / (C - 1)) of them: the batch size with every class present.
        keep = max(1, math.ceil(round(float(num_negatives.item()) / max(num_classes - 1, 1), 6)))
        negatives = paddle.where(is_negative, cos, paddle.full_like(cos, -math.inf)).reshape([-1])
        local_top = paddle.topk(negatives, k=min(keep, negatives.shape[0]))[0]
        if local_top.shape[0] < keep:  # ranks gather equal lengths; -inf pads never win
            local_top = paddle.concat([local_top, paddle.full([keep - local_top.shape[0]], -math.inf)])
        candidates = distributed.all_gather(local_top) if model_parallel else local_top
        threshold = paddle.topk(candidates, k=keep)[0][-1]
        kept = is_negative & (cos >= threshold) & (target_cos - m > cos)
    kept = kept.astype(cos.dtype)
    squared_sum = sum_over_ranks((cos * cos * kept).sum(axis=1, keepdim=True), model_parallel)
    with paddle.no_grad():
        count = kept.sum(axis=1, keepdim=True)
        if model_parallel:
            distributed.all_reduce(count, "sum")
    return squared_sum / count.clip(min=1.0)


@LOSSES.register("MixFairCosFace")
class MixFairCosFace(TargetSoftmaxLoss):
    """(cos_logits [N, S_local], labels_local [N], embeddings [n, D], backbone) -> scalar float32.

    The backbone must be built with `Model.mixfair`; its last training forward supplies f_mix and the
    permutation. model_parallel follows Model.pfc_config.
    """

    inputs = ("cos_logits", "labels_local", "embeddings", "backbone")

    def __init__(self, s=64.0, m=0.35, cifp=True):
        if s <= 0:
            raise PlscError(f"MixFairCosFace: s ({s}) must be > 0")
        super().__init__(s, False)  # model_parallel: set by attach()
        self.m, self.cifp = float(m), bool(cifp)
        self.num_classes = None

    def attach(self, head):
        """Learn the class layer's layout (sharded or not, number of classes); owns no class table."""
        self.model_parallel = bool(head.model_parallel)
        self.num_classes = int(head.num_classes)
        return []

    def forward(self, cos_logits, labels_local, embeddings, backbone):
        outputs = mixfair_outputs(backbone)
        if outputs is None or outputs[0] is None:
            raise PlscError("MixFairCosFace needs a backbone built with Model.mixfair (e.g. {alpha: 0.5}) run in "
                            f"training mode; {type(getattr(backbone, '_layers', backbone)).__name__} gave no mixed "
                            "embeddings")
        mixed, permutation = outputs
        return self.loss(cos_logits, labels_local, identity_bias(embeddings, mixed, permutation))

    def loss(self, cos_logits, labels_local, bias_local):
        """The loss from this rank's bias terms bias_local [n] (with gradient): scalar, equal on every rank."""
        cos = cos_logits.astype("float32")
        bias = distributed.all_gather_with_grad(bias_local.reshape([-1, 1]), sum_grads=self.model_parallel)
        margin = self.m + bias
        if self.cifp:
            margin = margin + cifp_margin(cos, labels_local, self.m, self.num_classes or cos.shape[1],
                                          self.model_parallel)
        return self.cross_entropy(cos, labels_local, lambda cos_target: cos_target - margin)
