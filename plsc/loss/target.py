"""The target column of sharded cosine logits: read it, share it across ranks, write a margined value back.

Shared by the margin losses that change the target logit per sample (CurricularFace, AdaFace,
MagFace). Rows whose class lives on another rank have label -1 here; exactly one rank holds each
row's target (Partial FC keeps every positive).
"""
import math

import paddle
import paddle.nn.functional as F

from plsc import distributed

# acos has an infinite derivative at +-1: the angle is taken of a cosine clipped this far inside.
ACOS_CLIP_EPS = 1e-7


def target_cosines(cos, labels_local):
    """Each row's target cosine and whether it is on this rank: [N, S], [N] -> ([N, 1], [N, 1] float32).

    Rows without a target here read column 0 and get has_target 0; multiply by it before use.
    """
    labels = labels_local.reshape([-1, 1])
    has_target = (labels >= 0).astype(cos.dtype)
    return paddle.take_along_axis(cos, labels.clip(min=0), axis=1), has_target


def shared_target_cosines(cos_target, has_target, model_parallel):
    """Every row's target cosine on every rank (no gradient): [N, 1] -> [N, 1].

    The owning rank contributes the value, the others 0, so a sum over ranks restores it. With a
    replicated class layer every rank already holds all targets.
    """
    values = (cos_target * has_target).detach()
    return distributed.all_reduce(values.clone(), "sum") if model_parallel else values


def write_targets(values, labels_local, new_targets, has_target):
    """`values` with each row's target column replaced by `new_targets`: [N, S], [N], [N, 1] -> [N, S].

    Rows whose target is on another rank are left as they are.
    """
    labels = labels_local.reshape([-1])
    onehot = F.one_hot(labels.clip(min=0), values.shape[1]).astype(values.dtype)
    old_targets = paddle.take_along_axis(values, labels.reshape([-1, 1]).clip(min=0), axis=1)
    return values + onehot * ((new_targets - old_targets) * has_target)


def target_angles(cos_target):
    """theta = acos(cos), clipped off +-1 so its gradient stays finite: [...] -> [...] in (0, pi)."""
    return paddle.acos(paddle.clip(cos_target, -1.0 + ACOS_CLIP_EPS, 1.0 - ACOS_CLIP_EPS))


def additive_angular_target(cos_target, margin):
    """cos(theta + m) with a per-row margin m >= 0, kept monotone past theta + m = pi: [N, 1] -> [N, 1].

    `margin` is a float or a [N, 1] tensor (it may carry a gradient, as MagFace's does). Past
    theta = pi - m the target continues as cos(theta) - 1 + cos(m): it meets cos(theta + m) = -1
    there, keeps falling with theta, and has slope 1 in cos(theta) (the same continuation as
    margin.margined_target_cosine, whose margin is a scalar).
    """
    theta = target_angles(cos_target)
    arc = paddle.cos(theta + margin)
    cos_margin = paddle.cos(margin) if isinstance(margin, paddle.Tensor) else math.cos(margin)
    fallback = cos_target - 1.0 + cos_margin
    return paddle.where(theta + margin <= math.pi, arc, fallback)


@paddle.no_grad()
def ema_update_(running, value, momentum):
    """running <- momentum * value + (1 - momentum) * running, in place (a buffer): [k], [k]."""
    paddle.assign(momentum * value.astype(running.dtype) + (1.0 - momentum) * running, output=running)
    return running
