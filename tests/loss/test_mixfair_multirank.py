"""MixFairCosFace with CIFP on 2 ranks (gloo, CPU), sharded and replicated class layer, equals one process."""
from pathlib import Path

import numpy as np
import pytest
from _worker_mixfair import ROWS_PER_RANK, SETTINGS, STEPS, global_batch, run_setting
from tests.multirank_worker import close, launch_and_collect
from mixfair_reference import identity_bias, mixfair_cosface_loss

WORLD = 2
pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """{(setting, step): [rank 0 results, rank 1 results]} from one 2-rank launch."""
    return launch_and_collect(Path(__file__).with_name("_worker_mixfair.py"), tmp_path_factory.mktemp("mixfair_2ranks"),
                              SETTINGS, STEPS, WORLD)


def test_one_process_matches_reference():
    single = run_setting("sharded", WORLD)
    embeddings, mixed, labels, permutation = global_batch(WORLD, 0)
    weight = single[0]["head_weight"].astype(np.float64)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    cos = unit @ (weight / np.linalg.norm(weight, axis=1, keepdims=True)).T
    expected = mixfair_cosface_loss(cos, labels, identity_bias(embeddings, mixed, permutation), 16.0, 0.05, True)
    assert single[0]["loss"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_two_ranks_equal_one_process(ranks, name):
    single = run_setting(name, WORLD)
    sharded = SETTINGS[name]["model_parallel"]
    for step in range(STEPS):
        expected = single[step]
        for rank, result in enumerate(ranks[(name, step)]):
            rows = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)
            assert result["loss"] == pytest.approx(expected["loss"], rel=1e-5)
            close(result["grad_x"], expected["grad_x"][rows], rel=1e-4)
            close(result["grad_mixed"], expected["grad_mixed"][rows], rel=1e-4)
            start = int(result["class_start"]) if sharded else 0
            count = result["head_weight"].shape[0]
            close(result["head_weight"], expected["head_weight"][start:start + count], rel=1e-6)
            close(result["head_grad"], expected["head_grad"][start:start + count], rel=1e-4)
