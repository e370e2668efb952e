"""Rank/world helpers and the few collectives plsc needs, each a no-op in a single process.

One code path serves 1 and N processes (DESIGN section 6): callers never test the world size.
`all_gather_with_grad` and `all_reduce_sum_with_grad` carry gradients, which Paddle's plain
collectives do not.
"""
import os

import paddle
import paddle.distributed as dist
from paddle.autograd import PyLayer

_initialised = False


def world_size():
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def rank():
    return int(os.environ.get("PADDLE_TRAINER_ID", "0"))


def is_main_process():
    return rank() == 0


def init():
    """Join the process group started by paddle.distributed.launch (gloo on CPU, NCCL on GPU)."""
    global _initialised
    if world_size() > 1 and not _initialised:
        dist.init_parallel_env()
        _initialised = True


def all_reduce(tensor, op="sum"):
    """In-place all-reduce ('sum' or 'max'); returns the tensor."""
    if world_size() > 1:
        reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
        dist.all_reduce(tensor, op=reduce_op)
    return tensor


def all_gather(tensor):
    """Concatenate every rank's `tensor` along axis 0 (rank order); no gradient."""
    if world_size() == 1:
        return tensor
    parts = []
    dist.all_gather(parts, tensor)
    return paddle.concat(parts, axis=0)


def barrier():
    if world_size() > 1:
        dist.barrier()


def broadcast_object(obj, src=0):
    """The `src` rank's picklable object on every rank."""
    if world_size() == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def all_gather_object(obj):
    """A list with every rank's picklable object, in rank order."""
    if world_size() == 1:
        return [obj]
    gathered = []
    dist.all_gather_object(gathered, obj)
    return gathered


def rows_of_this_rank(gathered, rows):
    """This rank's block of a tensor gathered in rank order: [world * rows, ...] -> [rows, ...]."""
    start = rank() * rows
    return gathered[start:start + rows]


class _AllGatherWithGrad(PyLayer):
    # sum_grads=True (class layer sharded): each rank saw the gathered rows only through its own
    # shard, so the gradient of this rank's rows is the sum over ranks. sum_grads=False (class
    # layer replicated): every rank already computed the full gradient, so it is only sliced.
    @staticmethod
    def forward(ctx, tensor, sum_grads):
        ctx.rows = tensor.shape[0]
        ctx.sum_grads = sum_grads
        return all_gather(tensor)

    @staticmethod
    def backward(ctx, grad):
        if ctx.sum_grads:
            grad = all_reduce(grad.clone(), "sum")
        return rows_of_this_rank(grad, ctx.rows)


class _AllReduceSumWithGrad(PyLayer):
    # The result enters the same global loss on every rank, so each rank's local addend
    # receives the upstream gradient unchanged (identity backward).
    @staticmethod
    def forward(ctx, tensor):
        return all_reduce(tensor.clone(), "sum")

    @staticmethod
    def backward(ctx, grad):
        return grad


def all_gather_with_grad(tensor, sum_grads=True):
    """all_gather whose backward returns this rank's slice of the (summed) gradient.

    tensor: [n, ...] with the same n on every rank -> [world * n, ...].
    """
    if world_size() == 1:
        return tensor
    return _AllGatherWithGrad.apply(tensor, sum_grads)


def all_reduce_sum_with_grad(tensor):
    """Sum over ranks whose gradient flows back to each rank's own addend."""
    if world_size() == 1:
        return tensor
    return _AllReduceSumWithGrad.apply(tensor)


def broadcast_parameters(parameters, src=0):
    """Make every rank start from `src`'s values (data-parallel replicas must be identical)."""
    if world_size() == 1:
        return
    for param in parameters:
        dist.broadcast(param, src=src)


def local_rank():
    """This process's index among the ranks of its node (its GPU id)."""
    return int(os.environ.get("PADDLE_LOCAL_RANK", os.environ.get("PADDLE_RANK_IN_NODE", "0")))
