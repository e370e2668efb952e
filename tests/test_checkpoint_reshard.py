"""Resharding class tables between every layout: 1 <-> N ranks, model-parallel <-> replicated.

Ranks are simulated in one process (PADDLE_TRAINER_ID / PADDLE_TRAINERS_NUM, collectives off):
each saved rank writes its files through the same CheckpointManager phases a real save runs, and
each rank of the new layout loads. Every table row and every momentum row must equal the saved
global row of the same class exactly.
"""
import itertools

import numpy as np
import paddle
import pytest

from plsc import distributed
from plsc.amp import DynamicLossScaler
from plsc.checkpoint import CheckpointManager, checkpoint_prefix, load_backbone_state, read_global_table
from plsc.errors import PlscError
from plsc.heads.class_table import ClassTable, shard_range
from plsc.heads.partial_fc import PartialFC
from plsc.heads.subcenter import SubCenterPartialFC
from plsc.optim import build_optimizer

NUM_CLASSES, WIDTH = 7, 3
LAYOUTS = [(1, False), (1, True), (2, True), (2, False), (3, True)]  # (world size, model_parallel)
STATE = {"epoch": 1, "global_step": 12, "batches_done_in_epoch": 0, "best_metric": None, "global_batch_size": 8}


@pytest.fixture(autouse=True)
def one_process_collectives(monkeypatch):
    monkeypatch.setattr(distributed, "barrier", lambda: None)
    monkeypatch.setattr(distributed, "broadcast_object", lambda obj, src=0: obj)


def as_rank(monkeypatch, world, rank):
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", str(world))
    monkeypatch.setenv("PADDLE_TRAINER_ID", str(rank))


def build_run(model_parallel, fill=None, head_type=PartialFC):
    """Backbone, tables {head, loss.1.CenterLoss}, optimizer; with `fill`, rows = fill(global class ids)."""
    paddle.seed(0)
    backbone = paddle.nn.Linear(2, 2)
    width = WIDTH if head_type is PartialFC else 2 * WIDTH
    head = (PartialFC(NUM_CLASSES, WIDTH, model_parallel=model_parallel) if head_type is PartialFC
            else SubCenterPartialFC(NUM_CLASSES, WIDTH, model_parallel=model_parallel, num_subcenters=2))
    centers = ClassTable("centerloss", NUM_CLASSES, WIDTH, model_parallel)
    optimizer = build_optimizer({"name": "Momentum", "momentum": 0.9}, backbone.named_parameters(),
                                [head, centers], lr=0.1)
    tables = {"head": head, "loss.1.CenterLoss": centers}
    if fill is not None:
        for offset, table in enumerate(tables.values()):
            classes = np.arange(table.class_start, table.class_start + table.num_local_classes)
            table.weight.set_value(fill(classes, table.width, offset))
        optimizer.set_sparse_state_dict({
            f"head{position}": {"velocity": fill(np.arange(table.class_start, table.class_start
                                                           + table.num_local_classes), table.width, 10 + position)}
            for position, table in enumerate(tables.values())})
    return backbone, tables, optimizer


def backbone_loader(backbone):
    return lambda state, source: load_backbone_state(backbone, state, source)


def global_rows(classes, width, offset):
    """A value per (class, column) that no other table or class shares."""
    return (1000.0 * offset + classes[:, None] * 10.0 + np.arange(width)[None, :]).astype(np.float32)


def save_as(monkeypatch, directory, world, model_parallel, head_type=PartialFC):
    manager = CheckpointManager(str(directory))
    as_rank(monkeypatch, world, 0)
    staging = manager.begin_save("latest", STATE["global_step"])
    runs = []
    for rank in range(world):
        as_rank(monkeypatch, world, rank)
        backbone, tables, optimizer = build_run(model_parallel, global_rows, head_type)
        manager.write_rank_files(staging, "latest", STATE["global_step"], tables, optimizer, {"rank": rank})
        runs.append((backbone, tables, optimizer))
    as_rank(monkeypatch, world, 0)
    backbone, tables, optimizer = runs[0]
    model_state = {f"backbone.{key}": value for key, value in backbone.state_dict().items()}
    manager.write_dense_files(staging, "latest", STATE["global_step"], model_state, optimizer, DynamicLossScaler())
    manager.finish_save(staging, "latest", STATE, tables)
    return directory / "latest"


@pytest.mark.parametrize("saved,target", list(itertools.product(LAYOUTS, LAYOUTS)))
def test_every_layout_resumes_every_layout_exactly(tmp_path, monkeypatch, saved, target):
    path = save_as(monkeypatch, tmp_path, *saved)
    new_world, new_parallel = target
    for rank in range(new_world):
        as_rank(monkeypatch, new_world, rank)
        backbone, tables, optimizer = build_run(new_parallel)
        _, _, rank_state = CheckpointManager(str(tmp_path)).load(str(path), backbone_loader(backbone), tables,
                                                                 optimizer, DynamicLossScaler())
        start, count = shard_range(NUM_CLASSES, new_world, rank) if new_parallel else (0, NUM_CLASSES)
        classes = np.arange(start, start + count)
        sparse = optimizer.sparse_state_dict()
        for position, table in enumerate(tables.values()):
            np.testing.assert_array_equal(table.weight.numpy(), global_rows(classes, WIDTH, position))
            np.testing.assert_array_equal(sparse[f"head{position}"]["velocity"].numpy(),
                                          global_rows(classes, WIDTH, 10 + position))
        # RNG and other per-rank state is only carried over to the very same layout.
        assert rank_state == ({"rank": rank} if target == saved else None)


def test_the_global_table_reads_back_from_any_layout(tmp_path, monkeypatch):
    for world, parallel in LAYOUTS:
        path = save_as(monkeypatch, tmp_path / f"{world}{parallel}", world, parallel)
        np.testing.assert_array_equal(read_global_table(str(path)),
                                      global_rows(np.arange(NUM_CLASSES), WIDTH, 0))


def test_subcenter_rows_reshard_like_any_table(tmp_path, monkeypatch):
    path = save_as(monkeypatch, tmp_path, 2, True, head_type=SubCenterPartialFC)
    as_rank(monkeypatch, 1, 0)
    backbone, tables, optimizer = build_run(False, head_type=SubCenterPartialFC)
    CheckpointManager(str(tmp_path)).load(str(path), backbone_loader(backbone), tables, optimizer,
                                          DynamicLossScaler())
    np.testing.assert_array_equal(tables["head"].weight.numpy(),
                                  global_rows(np.arange(NUM_CLASSES), 2 * WIDTH, 0))


def test_other_class_count_or_width_is_a_clear_error(tmp_path, monkeypatch):
    path = save_as(monkeypatch, tmp_path, 2, True)
    as_rank(monkeypatch, 1, 0)
    backbone = paddle.nn.Linear(2, 2)
    for table, message in ((PartialFC(NUM_CLASSES + 1, WIDTH), "has 7 classes, Model.class_num is 8"),
                           (PartialFC(NUM_CLASSES, WIDTH + 1), "width 3, this run's have 4")):
        optimizer = build_optimizer({"name": "Momentum"}, backbone.named_parameters(), [table], lr=0.1)
        with pytest.raises(PlscError, match=message):
            CheckpointManager(str(tmp_path)).load(str(path), backbone_loader(backbone), {"head": table}, optimizer,
                                                  DynamicLossScaler())


def test_files_of_two_saves_are_not_mixed(tmp_path, monkeypatch):
    path = save_as(monkeypatch, tmp_path, 2, True)
    prefix = checkpoint_prefix(path)
    other = save_as(monkeypatch, tmp_path / "other", 2, True)
    # Copy rank 1's file of another save (step 12 too, so rewrite its step) into this checkpoint.
    from plsc.serialization import load_state, save_state
    content = load_state(f"{checkpoint_prefix(other)}_rank1.pdparams")
    content["global_step"] = 11
    save_state(content, f"{prefix}_rank1.pdparams")
    as_rank(monkeypatch, 1, 0)
    backbone, tables, optimizer = build_run(True)
    with pytest.raises(PlscError, match="belongs to step 11, its .pdstates to step 12"):
        CheckpointManager(str(tmp_path)).load(str(path), backbone_loader(backbone), tables, optimizer,
                                          DynamicLossScaler())
