"""Checkpoints: dense state once, each rank's class-centre shard beside it; resume and reshard.

Layout (PLSC's names) in `{output_dir}/{Model.name}/`, prefix P in {latest, epoch_N, best_model}:
  P.pdparams        backbone parameters and buffers, keys `backbone.<name>`
  P.pdopt           dense optimizer state, loss scaler, best metrics
  P_rank{R}.pdparams  rank R's shard of the class centres (+ its class range)
  P_rank{R}.pdopt     rank R's sparse optimizer state (row-aligned with the shard) and RNG states
  P.pdstates        epoch, step, world size, ...; written last, so it marks a complete checkpoint
Every file is written to a temporary name and renamed, and carries the global step it belongs
to, so a checkpoint torn by a crash is detected instead of silently mixed.
"""
import glob
import os
import re
import time

import paddle

from plsc import distributed
from plsc.errors import PlscError
from plsc.heads.partial_fc import shard_range


def _atomic_save(obj, path):
    temporary = f"{path}.tmp{os.getpid()}"
    paddle.save(obj, temporary)
    os.replace(temporary, path)


def _load(path):
    if not os.path.isfile(path):
        raise PlscError(f"checkpoint file not found: {path}")
    return paddle.load(path)


def checkpoint_prefix(path):
    """Accept `dir/latest`, `dir/latest.pdparams` or `dir/latest.pdstates` for the same checkpoint."""
    return re.sub(r"\.(pdparams|pdopt|pdstates)$", "", path)


class CheckpointManager:
    """Saves and restores the training state of backbone, head, optimizer, scaler and RNGs."""

    def __init__(self, directory, max_num_latest_checkpoint=0, logger=None):
        self.directory = directory
        self.max_num_latest = max_num_latest_checkpoint
        self.logger = logger

    # ---- save -------------------------------------------------------------------------------
    def save(self, prefix, trainer_state, backbone, head, optimizer, scaler, extra_dense=None):
        """Write checkpoint `prefix`; every rank writes its shard, rank 0 the dense part."""
        os.makedirs(self.directory, exist_ok=True)
        base = os.path.join(self.directory, prefix)
        step = trainer_state["global_step"]
        rank = distributed.rank()
        _atomic_save({"weight": head.weight, "class_start": head.class_start,
                      "num_local_classes": head.num_local_classes, "num_classes": head.num_classes,
                      "global_step": step}, f"{base}_rank{rank}.pdparams")
        _atomic_save({"sparse": optimizer.sparse_state_dict(), "head_rng": head.rng_state(),
                      "paddle_rng": paddle.get_rng_state(), "global_step": step}, f"{base}_rank{rank}.pdopt")
        if distributed.is_main_process():
            params = {f"backbone.{key}": value for key, value in backbone.state_dict().items()}
            _atomic_save({**params, "global_step": step}, f"{base}.pdparams")
            _atomic_save({"optimizer": optimizer.dense_state_dict(), "scaler": scaler.state_dict(),
                          **(extra_dense or {}), "global_step": step}, f"{base}.pdopt")
        distributed.barrier()
        if distributed.is_main_process():
            _atomic_save({**trainer_state, "world_size": distributed.world_size(),
                          "timestamp": time.time()}, f"{base}.pdstates")
            if prefix.startswith("epoch_"):
                self._prune_epoch_checkpoints()
        distributed.barrier()
        return base

    def _prune_epoch_checkpoints(self):
        """Keep the newest `max_num_latest_checkpoint` epoch_N checkpoints (0 = keep none)."""
        epochs = sorted(int(m.group(1)) for path in glob.glob(os.path.join(self.directory, "epoch_*.pdstates"))
                        if (m := re.search(r"epoch_(\d+)\.pdstates$", path)))
        for epoch in epochs[: max(0, len(epochs) - self.max_num_latest)]:
            for path in glob.glob(os.path.join(self.directory, f"epoch_{epoch}[._]*")):
                os.remove(path)

    # ---- load -------------------------------------------------------------------------------
    def load(self, path, backbone, head, optimizer, scaler):
        """Restore a training checkpoint (resharding the class centres if the world size changed).

        Returns (trainer_state, extra_dense) where extra_dense holds the remaining `P.pdopt` entries.
        """
        base = checkpoint_prefix(path)
        states = _load(f"{base}.pdstates")
        step = states["global_step"]
        dense = self._checked(f"{base}.pdparams", step)
        load_backbone_state(backbone, dense, f"{base}.pdparams")
        dense_opt = self._checked(f"{base}.pdopt", step)
        optimizer.set_dense_state_dict(dense_opt.pop("optimizer"))
        scaler.set_state_dict(dense_opt.pop("scaler"))
        dense_opt.pop("global_step", None)

        saved_world = states["world_size"]
        same_layout = saved_world == distributed.world_size()
        shards, sparse = self._load_shards(base, step, saved_world, head)
        head.weight.set_value(shards)
        optimizer.set_sparse_state_dict(sparse)
        if same_layout:
            rank_opt = self._checked(f"{base}_rank{distributed.rank()}.pdopt", step)
            head.set_rng_state(rank_opt["head_rng"])
            paddle.set_rng_state(rank_opt["paddle_rng"])
        elif self.logger:
            self.logger.info(f"resharded class centres from {saved_world} to {distributed.world_size()} "
                             f"ranks; negative sampling continues from a fresh random stream")
        # Nobody may overwrite these files (e.g. the next save of `latest`) while a rank still reads them.
        distributed.barrier()
        return states, dense_opt

    def _checked(self, path, step):
        content = _load(path)
        if content.get("global_step") != step:
            raise PlscError(f"{path} belongs to step {content.get('global_step')}, its .pdstates to step "
                            f"{step}: the checkpoint was torn by an interrupted save")
        return content

    def _load_shards(self, base, step, saved_world, head):
        """This rank's rows of the class centres and of their row-aligned sparse optimizer state."""
        start, count = head.class_start, head.num_local_classes
        weights, sparse_parts = [], []
        for old_rank in range(saved_world):
            old_start, old_count = shard_range(head.num_classes, saved_world, old_rank)
            if head.replicated:  # every old rank holds all classes: rank 0's copy is enough
                old_start, old_count = 0, head.num_classes
            low, high = max(start, old_start), min(start + count, old_start + old_count)
            if low >= high:
                continue
            shard = self._checked(f"{base}_rank{old_rank}.pdparams", step)
            if shard["num_classes"] != head.num_classes:
                raise PlscError(f"{base}_rank{old_rank}.pdparams has {shard['num_classes']} classes, "
                                f"Model.class_num is {head.num_classes}")
            rows = slice(low - old_start, high - old_start)
            weights.append(shard["weight"][rows])
            sparse = self._checked(f"{base}_rank{old_rank}.pdopt", step)["sparse"]
            sparse_parts.append(_slice_rows(sparse, rows, old_count))
            if head.replicated:
                break
        return paddle.concat(weights, axis=0), _concat_rows(sparse_parts)


def _slice_rows(state, rows, num_rows):
    """Slice every tensor of a (nested) state whose first axis runs over the shard's rows."""
    if isinstance(state, dict):
        return {key: _slice_rows(value, rows, num_rows) for key, value in state.items()}
    if isinstance(state, paddle.Tensor) and state.ndim >= 1 and state.shape[0] == num_rows:
        return state[rows]
    return state


def _concat_rows(parts):
    first = parts[0]
    if isinstance(first, dict):
        return {key: _concat_rows([part[key] for part in parts]) for key in first}
    if isinstance(first, paddle.Tensor) and first.ndim >= 1 and len(parts) > 1:
        return paddle.concat(parts, axis=0)
    return first


def load_backbone_state(backbone, state, source):
    """Set the backbone from `backbone.*` entries of a state dict; a mismatch names the keys."""
    wanted = backbone.state_dict()
    found = {key[len("backbone."):]: value for key, value in state.items() if key.startswith("backbone.")}
    missing = sorted(set(wanted) - set(found))
    unexpected = sorted(set(found) - set(wanted))
    if missing or unexpected:
        raise PlscError(f"{source} does not fit Model.name's backbone: missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}")
    for key, value in found.items():
        if list(value.shape) != list(wanted[key].shape):
            raise PlscError(f"{source}: {key} has shape {list(value.shape)}, the model needs "
                            f"{list(wanted[key].shape)}")
    backbone.set_state_dict({key: value.astype(wanted[key].dtype) for key, value in found.items()})
