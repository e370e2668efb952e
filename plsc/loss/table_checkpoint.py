"""Checkpoint files of the losses' class tables: `{prefix}_rank{R}.pdloss`, one per rank, beside the class layer's.

Each file holds this rank's rows of every table (keyed like the Loss.Train entry that owns it),
the shard's class range and the global step, so a torn checkpoint is detected as for the other
files (plsc.checkpoint). Loading reshards by class range when the world size changed, the same
rule the class layer's rows follow. Written before the trainer's `.pdstates`, which marks a
complete checkpoint.
"""
import os

import paddle

from plsc import distributed
from plsc.errors import PlscError
from plsc.heads.partial_fc import shard_range

SUFFIX = "pdloss"


def table_file(prefix, rank):
    return f"{prefix}_rank{rank}.{SUFFIX}"


def save_table_shards(prefix, global_step, tables):
    """Write this rank's rows of `tables` ({key: ClassRowTable}); nothing when there are none."""
    if not tables:
        return
    first = next(iter(tables.values()))
    content = {"tables": {key: table.weight for key, table in tables.items()},
               "class_start": first.class_start, "num_local_classes": first.num_local_classes,
               "num_classes": first.num_classes, "global_step": global_step}
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    path = table_file(prefix, distributed.rank())
    temporary = f"{path}.tmp{os.getpid()}"
    paddle.save(content, temporary)
    os.replace(temporary, path)


def _read(path, global_step):
    if not os.path.isfile(path):
        raise PlscError(f"checkpoint file not found: {path} (the loss tables of this checkpoint)")
    content = paddle.load(path)
    if content.get("global_step") != global_step:
        raise PlscError(f"{path} belongs to step {content.get('global_step')}, the checkpoint to step "
                        f"{global_step}: the checkpoint was torn by an interrupted save")
    return content


def load_table_shards(prefix, global_step, saved_world_size, tables):
    """Fill `tables` ({key: ClassRowTable}) with their rows from the files of a `saved_world_size`-rank run."""
    if not tables:
        return
    first = next(iter(tables.values()))
    start, count, num_classes = first.class_start, first.num_local_classes, first.num_classes
    pieces = {key: [] for key in tables}
    for old_rank in range(saved_world_size):
        old_start, old_count = shard_range(num_classes, saved_world_size, old_rank)
        if not first.model_parallel:  # replicated: every old rank holds all classes, rank 0 suffices
            old_start, old_count = 0, num_classes
        low, high = max(start, old_start), min(start + count, old_start + old_count)
        if low >= high:
            continue
        path = table_file(prefix, old_rank)
        content = _read(path, global_step)
        if content["num_classes"] != num_classes:
            raise PlscError(f"{path} has tables of {content['num_classes']} classes, Model.class_num is {num_classes}")
        for key in tables:
            if key not in content["tables"]:
                raise PlscError(f"{path} has no table for Loss.Train entry {key} (found: "
                                f"{', '.join(content['tables']) or 'none'})")
            pieces[key].append(content["tables"][key][low - old_start:high - old_start])
        if not first.model_parallel:
            break
    for key, table in tables.items():
        rows = paddle.concat(pieces[key], axis=0) if len(pieces[key]) > 1 else pieces[key][0]
        if list(rows.shape) != list(table.weight.shape):
            raise PlscError(f"{table_file(prefix, 0)}: table of Loss.Train entry {key} has shape "
                            f"{list(rows.shape)}, this run needs {list(table.weight.shape)}")
        table.weight.set_value(rows.astype(table.weight.dtype))
