"""MixFairCosFace with CIFP on 2 ranks (gloo, CPU), sharded and replicated class layer, equals one process."""
from pathlib import Path

import numpy as np
import pytest
from _worker_mixfair import ROWS_PER_RANK, SETTINGS, STEPS, global_batch, run_setting
from tests.conftest import launch
from mixfair_reference import identity_bias, mixfair_cosface_loss

WORLD = 2
pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixfair_2ranks")
    launch(Path(__file__).with_name("_worker_mixfair.py"), [root / "out"], nproc=WORLD, log_dir=root / "log")
    return {(name, step): [dict(np.load(root / "out" / f"{name}_step{step}_rank{rank}.npz")) for rank in range(WORLD)]
            for name in SETTINGS for step in range(STEPS)}


def close(actual, expected, rel=1e-5):
    np.testing.assert_allclose(actual, expected, rtol=rel, atol=rel * max(np.abs(expected).max(), 1e-6))


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
