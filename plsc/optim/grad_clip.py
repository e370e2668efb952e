"""Gradient clipping by global norm with PLSC's options (always_clip, no_clip_list, clip_norm_max).

PLSC semantics (its ClipGradByGlobalNorm): the norm runs over every gradient whose parameter name
contains none of the `no_clip_list` strings; the gradients are multiplied by
clip_norm / (norm + 1e-6) when norm > clip_norm, or always when `always_clip` is set. With
always_clip that factor exceeds 1 for small norms (gradients are scaled *up* to clip_norm);
`clip_norm_max`, when given, caps the factor. PLSC's face configs exclude the model-parallel
class centres with `no_clip_list: ['dist']`.
"""
import math

import paddle

from plsc import distributed
from plsc.registry import Registry

# The config's `Optimizer.grad_clip.name` picks one of these.
GRAD_CLIPS = Registry("gradient clip")

# Added to the norm before dividing, as PLSC does, so an all-zero gradient gives a finite factor.
NORM_EPSILON = 1e-6


def clip_factor(global_norm, clip_norm, always_clip=False, clip_norm_max=None):
    """The factor the gradients are multiplied by, or None when they are left alone."""
    if not always_clip and global_norm <= clip_norm:
        return None
    factor = clip_norm / (global_norm + NORM_EPSILON)
    if clip_norm_max is not None:
        factor = min(factor, clip_norm_max)
    return factor


def squared_sum(grads):
    """Sum of squares of every element of `grads` (a list of tensors) as a float32 [1] tensor."""
    total = paddle.zeros([1], dtype="float32")
    for grad in grads:
        total = total + paddle.sum(paddle.square(grad.astype("float32")))
    return total


@GRAD_CLIPS.register("ClipGradByGlobalNorm")
class ClipGradByGlobalNorm:
    """Scale the gradients so their joint L2 norm is at most `clip_norm` (see the module docstring)."""

    def __init__(self, clip_norm=1.0, always_clip=False, no_clip_list=(), clip_norm_max=None):
        self.clip_norm = float(clip_norm)
        self.always_clip = bool(always_clip)
        self.no_clip_list = [no_clip_list] if isinstance(no_clip_list, str) else list(no_clip_list or ())
        self.clip_norm_max = None if clip_norm_max is None else float(clip_norm_max)

    def clips(self, names):
        """False when any of a parameter's `names` contains a `no_clip_list` string."""
        return not any(pattern in name for pattern in self.no_clip_list for name in names)

    @paddle.no_grad()
    def __call__(self, replicated_grads, sharded_grads):
        """Clip in place; returns the global norm (a float) before clipping.

        replicated_grads: [(names, grad)] equal on every rank (the all-reduced dense gradients);
        sharded_grads: [(names, grad)] that differ per rank (the class-centre rows of each shard).
        The squared norm of the sharded part is summed across ranks, so every rank gets the norm
        of the whole model and applies the same factor.
        """
        replicated = [grad for names, grad in replicated_grads if self.clips(names)]
        sharded = [grad for names, grad in sharded_grads if self.clips(names)]
        total = squared_sum(replicated)
        if sharded:
            total = total + distributed.all_reduce(squared_sum(sharded), "sum")
        global_norm = math.sqrt(total.item())
        factor = clip_factor(global_norm, self.clip_norm, self.always_clip, self.clip_norm_max)
        if factor is not None:
            for grad in replicated + sharded:
                grad.scale_(factor)
        return global_norm


def build_grad_clip(section):
    """`Optimizer.grad_clip` ({name, kwargs} or None) -> a clip object, or None for no clipping."""
    if not section:
        return None
    kwargs = dict(section)
    name = kwargs.pop("name", "ClipGradByGlobalNorm")
    return GRAD_CLIPS.build(name, where="Optimizer.grad_clip.name", **kwargs)
