"""Optimisation: dense Momentum / AdamW plus row-sparse updates of the class shard, LR schedules, clipping."""
from plsc.optim import lr_scheduler  # noqa: F401  (fills the LR_SCHEDULERS registry)
from plsc.optim.grad_clip import GRAD_CLIPS, ClipGradByGlobalNorm, build_grad_clip
from plsc.optim.optimizer import AdamW, FaceOptimizer, Momentum, build_optimizer
from plsc.optim.sparse_momentum import sparse_adamw_update, sparse_momentum_update

__all__ = ["GRAD_CLIPS", "AdamW", "ClipGradByGlobalNorm", "FaceOptimizer", "Momentum", "build_grad_clip",
           "build_optimizer", "sparse_adamw_update", "sparse_momentum_update"]
