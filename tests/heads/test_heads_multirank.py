"""Every literature head on 2 ranks (gloo, CPU) equals one process over the same global batch.

One launch runs all settings of _worker_heads for two steps (the second checks that running
statistics advanced identically); here the same function runs in this single process.
"""
from pathlib import Path

import pytest
from _worker_heads import ROWS_PER_RANK, SETTINGS, STEPS, run_setting
from tests.multirank_worker import close, launch_and_collect

WORLD = 2
pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """{(setting, step): [rank 0 results, rank 1 results]} from one 2-rank launch."""
    return launch_and_collect(Path(__file__).with_name("_worker_heads.py"), tmp_path_factory.mktemp("heads_2ranks"), SETTINGS,
                              STEPS, WORLD)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_two_ranks_equal_one_process(ranks, name):
    single = run_setting(name, WORLD)
    sharded = SETTINGS[name][0].get("model_parallel", True)
    for step in range(STEPS):
        expected = single[step]
        starts = [0]
        for rank, result in enumerate(ranks[(name, step)]):
            rows = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)
            assert result["loss"] == pytest.approx(expected["loss"], rel=1e-5)
            close(result["grad_x"], expected["grad_x"][rows], rel=1e-4)
            if "grad_groups" in expected:
                close(result["grad_groups"], expected["grad_groups"][rows], rel=1e-4)
            # The class layer: each rank's shard is its slice of the one-process table.
            start = int(result["class_start"]) if sharded else 0
            count = result["head_weight"].shape[0]
            close(result["head_weight"], expected["head_weight"][start:start + count], rel=1e-6)
            close(result["head_grad"], expected["head_grad"][start:start + count], rel=1e-4)
            # Loss tables: the rows a rank used are the one-process rows of its classes.
            for key in [k for k in expected if k.endswith("_index")]:
                table = key[:-len("_index")]
                single_rows = {int(row): grad for row, grad in zip(expected[key], expected[f"{table}_grad"])}
                for row, grad in zip(result[key], result[f"{table}_grad"]):
                    close(grad, single_rows[int(row) + start], rel=1e-4)
            # Running statistics agree on every rank and with one process.
            for key in [k for k in expected if k.startswith("state_")]:
                close(result[key], expected[key], rel=1e-6)
            starts.append(start + count)
        if sharded:
            assert starts[-1] == expected["head_weight"].shape[0]
