"""Checkpoints: written in one atomic step, read without running code, resumed on any layout.

On disk, in `{output_dir}/{Model.name}/`, each named checkpoint ("slot": latest, best_model,
epoch_N) is a symlink to a directory of one save:

  latest -> latest.step250/
              latest.pdparams          backbone parameters and buffers, keys `backbone.<name>`
              latest.pdopt             dense optimizer state, loss scaler, evaluator and loss statistics
              latest_rank{R}.pdparams  rank R's rows of every class table, with the table's layout
              latest_rank{R}.pdopt     rank R's sparse optimizer rows of those tables, its RNG states
              latest.pdstates          epoch, step, world size, the layout of every class table

A save writes every file into `latest.step250.tmp/`, fsyncs them, renames the directory to
`latest.step250` and only then swaps the `latest` symlink (rename over the old link, atomic on
POSIX). A crash at any point leaves the previous checkpoint intact and `latest` pointing at it;
the next start removes the half-written directory. Every file also carries the global step, so
files mixed from two saves are detected instead of used.

Resume reads the saved table layouts (class ranges of each rank, sharded or replicated) and
fills this run's shards from them (plsc.heads.class_table.reshard_pieces), so 1 <-> N ranks and
model-parallel <-> replicated are the same code path; a different class count is an error.
Files are read by plsc.serialization.load_state, which refuses anything but data.
Checkpoints of plsc before this layout, and PLSC 2.x checkpoints, are flat files
(`{dir}/latest.pdparams`, ...): their weights still load (Global.pretrained_model, plsc-eval,
plsc-export); resuming from them is refused with that advice.
"""
import os
import re
import shutil
import time

import numpy as np
import paddle

from plsc import distributed
from plsc.errors import PlscError
from plsc.heads.class_table import check_layout, reshard_pieces
from plsc.serialization import fsync_directory, load_state, save_state

SUFFIXES = ("pdparams", "pdopt", "pdstates")
STAGING_SUFFIX = ".tmp"
# A save's directory: '{slot}.step{N}', '.{k}' appended when that name is taken.
SAVE_DIRECTORY = re.compile(r"^(?P<slot>.+)\.step\d+(\.\d+)?$")
FORMAT_VERSION = 2
# paddle.save adds this entry (structured name -> Paddle's parameter name) to every state dict.
PADDLE_NAME_TABLE = "StructuredToParameterName@@"


# ---- finding checkpoints ------------------------------------------------------------------------
def checkpoint_prefix(path):
    """`dir/latest` (a save directory or its symlink), `dir/latest.pdparams` or a legacy flat prefix ->
    the prefix of the checkpoint's files (`dir/latest.step250/latest`), or the path minus its suffix."""
    path = os.fspath(path)
    if os.path.isdir(path):
        states = [name for name in os.listdir(path) if name.endswith(".pdstates")]
        if len(states) != 1:
            raise PlscError(f"{path}: not a checkpoint directory (expected one .pdstates file, found {len(states)})")
        return os.path.join(os.path.realpath(path), states[0][: -len(".pdstates")])
    stem = re.sub(r"\.(pdparams|pdopt|pdstates)$", "", path)
    # PLSC's habit `output/X/latest.pdparams` names the save directory `output/X/latest` here.
    return checkpoint_prefix(stem) if stem != path and os.path.isdir(stem) else stem


def weights_path(path):
    """A `.pdparams` file, or any checkpoint path `checkpoint_prefix` accepts -> the `.pdparams` path."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return path
    candidate = f"{checkpoint_prefix(path)}.pdparams"  # also PLSC's `dir/latest.pdparams` for a save directory
    if not os.path.isfile(candidate):
        raise PlscError(f"{path}: no weights found (give a .pdparams file or a checkpoint such as "
                        "output/IResNet50/latest)")
    return candidate


def load_weights(path):
    """The state dict of a weights file or checkpoint (numpy arrays), read safely: (dict, file path)."""
    path = weights_path(path)
    state = load_state(path)
    if not isinstance(state, dict):
        raise PlscError(f"{path}: expected a state dict, found {type(state).__name__}")
    state.pop(PADDLE_NAME_TABLE, None)
    return state, path


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
        if list(np.shape(value)) != list(wanted[key].shape):
            raise PlscError(f"{source}: {key} has shape {list(np.shape(value))}, the model needs "
                            f"{list(wanted[key].shape)}")
    backbone.set_state_dict({key: paddle.to_tensor(np.asarray(value)).astype(wanted[key].dtype)
                             for key, value in found.items()})


def read_global_table(path, key="head"):
    """The whole class table `key` of a training checkpoint, joined from its rank files: [C, width] float32."""
    prefix = checkpoint_prefix(path)
    states = _read(f"{prefix}.pdstates")
    layouts = states.get("tables")
    if layouts is None or key not in layouts:
        raise PlscError(f"{path}: no class table '{key}' in this checkpoint "
                        f"(found: {', '.join(layouts or []) or 'none - not a training checkpoint of this plsc'})")
    layout = layouts[key]
    ranges = layout["ranges"] if layout["model_parallel"] else layout["ranges"][:1]
    rows = [_read(f"{prefix}_rank{rank}.pdparams")["tables"][key]["weight"] for rank in range(len(ranges))]
    return np.concatenate(rows, axis=0) if len(rows) > 1 else np.asarray(rows[0])


# ---- Paddle's RNG as plain data ------------------------------------------------------------------
def paddle_rng_state():
    """Paddle's generator states as plain tuples (the objects themselves are not data)."""
    return [state.__getstate__() for state in paddle.get_rng_state()]


def set_paddle_rng_state(plain):
    state_type = type(paddle.get_rng_state()[0])
    states = []
    for values in plain:
        state = state_type.__new__(state_type)
        state.__setstate__(tuple(values))
        states.append(state)
    paddle.set_rng_state(states)


# ---- the manager ---------------------------------------------------------------------------------
class CheckpointManager:
    """Saves and restores backbone, class tables, optimizer, scaler and RNGs of a training run."""

    def __init__(self, directory, max_num_latest_checkpoint=0, logger=None):
        self.directory = directory
        self.max_num_latest = max_num_latest_checkpoint
        self.logger = logger

    def _log(self, message):
        if self.logger:
            self.logger.info(message)

    # ---- save -----------------------------------------------------------------------------
    def save(self, slot, trainer_state, model_state, tables, optimizer, scaler, extra_dense=None, rank_state=None):
        """Write checkpoint `slot` on every rank; returns the slot's path once it is complete.

        model_state: the `.pdparams` entries (`backbone.*`, ...); tables: {key: ClassTable} (the
        class layer and the losses' tables); rank_state: this
        rank's extra state (RNGs), restored only on the same layout. The phases below run on
        every rank in this order, separated by barriers.
        """
        step = trainer_state["global_step"]
        staging = self.begin_save(slot, step) if distributed.is_main_process() else None
        staging = distributed.broadcast_object(staging)
        distributed.barrier()
        self.write_rank_files(staging, slot, step, tables, optimizer, rank_state)
        if distributed.is_main_process():
            self.write_dense_files(staging, slot, step, model_state, optimizer, scaler, extra_dense)
        distributed.barrier()
        if distributed.is_main_process():
            self.finish_save(staging, slot, trainer_state, tables)
        distributed.barrier()
        return os.path.join(self.directory, slot)

    def begin_save(self, slot, step):
        """(rank 0) An empty staging directory for the save of `slot` at `step`; returns its path."""
        os.makedirs(self.directory, exist_ok=True)
        staging = os.path.join(self.directory, self._free_name(f"{slot}.step{step}") + STAGING_SUFFIX)
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        return staging

    @staticmethod
    def write_rank_files(staging, slot, step, tables, optimizer, rank_state=None):
        """(every rank) This rank's rows of every class table and of their sparse optimizer state."""
        prefix = os.path.join(staging, slot)
        rank = distributed.rank()
        sparse = optimizer.sparse_state_dict()
        state_keys = {id(head): key for key, head in optimizer.heads.items()}
        save_state({"global_step": step,
                    "tables": {key: {"class_start": table.class_start, "num_local_classes": table.num_local_classes,
                                     "weight": table.weight} for key, table in tables.items()}},
                   f"{prefix}_rank{rank}.pdparams")
        save_state({"global_step": step, "rank_state": rank_state or {},
                    "tables": {key: sparse.get(state_keys.get(id(table)), {}) for key, table in tables.items()}},
                   f"{prefix}_rank{rank}.pdopt")

    @staticmethod
    def write_dense_files(staging, slot, step, model_state, optimizer, scaler, extra_dense=None):
        """(rank 0) The model (`backbone.*`, ...), the dense optimizer state and the replicated extras."""
        prefix = os.path.join(staging, slot)
        save_state({**model_state, "global_step": step}, f"{prefix}.pdparams")
        save_state({"optimizer": optimizer.dense_state_dict(), "scaler": scaler.state_dict(),
                    **(extra_dense or {}), "global_step": step}, f"{prefix}.pdopt")

    def finish_save(self, staging, slot, trainer_state, tables):
        """(rank 0) The .pdstates, then make the save visible in one rename and point `slot` at it."""
        save_state({**trainer_state, "world_size": distributed.world_size(), "timestamp": time.time(),
                    "format_version": FORMAT_VERSION,
                    "tables": {key: table.layout() for key, table in tables.items()}},
                   os.path.join(staging, f"{slot}.pdstates"))
        final = os.path.basename(staging)[: -len(STAGING_SUFFIX)]
        os.rename(staging, os.path.join(self.directory, final))
        fsync_directory(self.directory)
        self._point(slot, final)
        if slot.startswith("epoch_"):
            self._prune_epoch_checkpoints()

    def _free_name(self, name):
        """`name`, or `name.2`, `name.3`, ... when a save of that name exists (a re-save at the same step)."""
        candidate, count = name, 1
        while os.path.lexists(os.path.join(self.directory, candidate)):
            count += 1
            candidate = f"{name}.{count}"
        return candidate

    def _point(self, slot, target):
        """Atomically make `slot` a symlink to `target`, then delete the save it pointed at before."""
        link = os.path.join(self.directory, slot)
        if os.path.exists(link) and not os.path.islink(link):
            raise PlscError(f"{link} exists and is not a plsc checkpoint link; move it away to save '{slot}'")
        previous = os.readlink(link) if os.path.islink(link) else None
        temporary = os.path.join(self.directory, f".{slot}.link{STAGING_SUFFIX}")
        if os.path.lexists(temporary):
            os.remove(temporary)
        os.symlink(target, temporary)  # relative: the output folder can be moved or copied whole
        os.replace(temporary, link)
        fsync_directory(self.directory)
        if previous and previous != target and previous not in self._link_targets():
            shutil.rmtree(os.path.join(self.directory, previous), ignore_errors=True)

    def _link_targets(self):
        """The saves some slot points at (a half-made link of an interrupted swap does not count)."""
        return {os.readlink(os.path.join(self.directory, name)) for name in os.listdir(self.directory)
                if os.path.islink(os.path.join(self.directory, name)) and not name.endswith(STAGING_SUFFIX)}

    def _prune_epoch_checkpoints(self):
        """Keep the newest `max_num_latest_checkpoint` epoch_N checkpoints (0 = keep none)."""
        epochs = sorted(int(match.group(1)) for name in os.listdir(self.directory)
                        if (match := re.fullmatch(r"epoch_(\d+)", name)))
        for epoch in epochs[: max(0, len(epochs) - self.max_num_latest)]:
            link = os.path.join(self.directory, f"epoch_{epoch}")
            target = os.readlink(link) if os.path.islink(link) else None
            os.remove(link)
            if target and target not in self._link_targets():
                shutil.rmtree(os.path.join(self.directory, target), ignore_errors=True)

    def remove_leftovers(self, keep=None):
        """Delete what killed saves left behind (staging directories, temporary files, saves no slot
        points at); `keep`: a checkpoint path this run still reads. Returns the removed names."""
        if not distributed.is_main_process() or not os.path.isdir(self.directory):
            return []
        keep_real = os.path.realpath(keep) if keep else None
        targets = self._link_targets()
        removed = []
        for name in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, name)
            leftover = (name.endswith(STAGING_SUFFIX)
                        or re.search(r"\.tmp\d+$", name)  # a temporary file of save_state
                        or (SAVE_DIRECTORY.match(name) and os.path.isdir(path) and not os.path.islink(path)
                            and name not in targets))
            if not leftover or (keep_real and keep_real.startswith(os.path.realpath(path))):
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)
            removed.append(name)
        if removed:
            fsync_directory(self.directory)
            self._log(f"removed what interrupted saves left: {', '.join(removed)}")
        return removed

    def saved_states(self, slot):
        """The `.pdstates` of checkpoint `slot` in this directory, or None when there is none."""
        link = os.path.join(self.directory, slot)
        if not os.path.isdir(link):
            return None
        return load_state(f"{checkpoint_prefix(link)}.pdstates")

    # ---- load -----------------------------------------------------------------------------
    def load(self, path, load_model_state, tables, optimizer, scaler):
        """Restore a training checkpoint into this run's layout.

        load_model_state(state, source) takes the `.pdparams` entries (e.g. the task's).

        Returns (trainer_state, extra_dense, rank_state): extra_dense holds the remaining `P.pdopt`
        entries; rank_state is this rank's saved extra state, or None when the layout changed.
        """
        prefix = checkpoint_prefix(path)
        states = _read(f"{prefix}.pdstates")
        if "tables" not in states:
            raise PlscError(f"{path}: a checkpoint of an older plsc or of PLSC 2.x, which records no class-table "
                            f"layout; resume is not possible, but its weights load: -o Global.pretrained_model={path}")
        step = states["global_step"]
        dense = self._checked(f"{prefix}.pdparams", step)
        load_model_state(dense, f"{prefix}.pdparams")
        dense_opt = self._checked(f"{prefix}.pdopt", step)
        optimizer.set_dense_state_dict(dense_opt.pop("optimizer"))
        scaler.set_state_dict(dense_opt.pop("scaler"))
        dense_opt.pop("global_step", None)

        saved_layouts = states["tables"]
        for key, table in tables.items():
            if key not in saved_layouts:
                raise PlscError(f"{path}: has no class table '{key}' (it has: {', '.join(saved_layouts) or 'none'}); "
                                "was it trained with another Loss.Train or Model.pfc_config?")
            check_layout(saved_layouts[key], table, path)
        weights, sparse = self._read_tables(prefix, step, saved_layouts, tables)
        state_keys = {id(head): key for key, head in optimizer.heads.items()}
        for key, table in tables.items():
            table.weight.set_value(weights[key])
        optimizer.set_sparse_state_dict({state_keys[id(table)]: sparse[key] for key, table in tables.items()
                                         if sparse[key]})

        same_layout = all(saved_layouts[key] == table.layout() for key, table in tables.items())
        rank_state = None
        if same_layout:
            rank_state = self._checked(f"{prefix}_rank{distributed.rank()}.pdopt", step)["rank_state"]
        else:
            self._log(f"class tables resharded from {states['world_size']} rank(s) to {distributed.world_size()} "
                      f"({', '.join(f'{key}: ' + _describe(saved_layouts[key]) + ' -> ' + _describe(table.layout()) for key, table in tables.items())}); "
                      "negative sampling continues from a fresh random stream")
        # Nobody may overwrite these files (e.g. the next save of `latest`) while a rank still reads them.
        distributed.barrier()
        return states, dense_opt, rank_state

    def _checked(self, path, step):
        content = _read(path)
        if not isinstance(content, dict) or content.get("global_step") != step:
            found = content.get("global_step") if isinstance(content, dict) else None
            raise PlscError(f"{path} belongs to step {found}, its .pdstates to step {step}: "
                            "files of two different saves were mixed")
        return content

    def _read_tables(self, prefix, step, saved_layouts, tables):
        """This rank's rows of every table and of its sparse optimizer state, from the saved ranks' files."""
        pieces = {key: reshard_pieces(saved_layouts[key], table.class_start, table.num_local_classes)
                  for key, table in tables.items()}
        weights = {key: None for key in tables}
        sparse = {key: {} for key in tables}
        for rank in sorted({rank for parts in pieces.values() for rank, _, _ in parts}):
            params = self._checked(f"{prefix}_rank{rank}.pdparams", step)["tables"]
            states = self._checked(f"{prefix}_rank{rank}.pdopt", step)["tables"]
            for key, table in tables.items():
                saved_start, saved_count = saved_layouts[key]["ranges"][rank]
                shard = params.get(key)
                if shard is None or (shard["class_start"], shard["num_local_classes"]) != (saved_start, saved_count):
                    raise PlscError(f"{prefix}_rank{rank}.pdparams does not hold the rows of '{key}' its "
                                    ".pdstates describes (classes from {saved_start}, {saved_count} rows)")
                for piece_rank, source, target in pieces[key]:
                    if piece_rank != rank:
                        continue
                    weights[key] = _place(weights[key], shard["weight"], source, target, table.num_local_classes)
                    for name, rows in states.get(key, {}).items():
                        sparse[key][name] = _place(sparse[key].get(name), rows, source, target,
                                                   table.num_local_classes)
        return weights, sparse


def _place(buffer, rows, source, target, num_rows):
    """Copy rows[source] into buffer[target]; the saved array itself when it is the whole target."""
    rows = np.asarray(rows)
    if target == slice(0, num_rows) and source.stop - source.start == rows.shape[0]:
        return rows
    if buffer is None:
        buffer = np.empty((num_rows,) + rows.shape[1:], dtype=rows.dtype)
    buffer[target] = rows[source]
    return buffer


def _describe(layout):
    kind = "sharded" if layout["model_parallel"] else "replicated"
    return f"{kind} over {layout['world_size']}"


def _read(path):
    if not os.path.isfile(path):
        raise PlscError(f"checkpoint file not found: {path}")
    return load_state(path)
