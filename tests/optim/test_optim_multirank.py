"""FaceOptimizer and DynamicLossScaler on 2 ranks (gloo, CPU): one launch, the tests read its results.

- clipping: the dense gradients are summed over ranks, and the sharded class-centre rows' squared
  norm is summed over ranks, so both ranks clip with the norm of the whole model (numpy below);
- loss scaling: an inf in rank 1's class-centre gradient makes both ranks skip the step.
"""
from pathlib import Path

import numpy as np
import pytest
from _worker_optim import CLIP_NORM, CLIP_SETTINGS, INIT_SCALE, SAMPLED, clip_gradients, initial_values
from tests.conftest import launch
from optim_reference import global_norm

WORLD = 2
EPS = 1e-6
pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """{scenario: [rank 0 results, rank 1 results]} from one 2-rank launch."""
    root = tmp_path_factory.mktemp("optim_2ranks")
    launch(Path(__file__).with_name("_worker_optim.py"), [root / "out"], nproc=WORLD, log_dir=root / "log")
    return {name: [dict(np.load(root / "out" / f"{name}_rank{rank}.npz")) for rank in range(WORLD)]
            for name in [*CLIP_SETTINGS, "scaler"]}


@pytest.mark.parametrize("name", list(CLIP_SETTINGS))
def test_clip_uses_the_norm_of_the_whole_model(ranks, name):
    head_counted = not CLIP_SETTINGS[name]  # no_clip_list ['dist'] exempts the class centres
    grads = [clip_gradients(rank) for rank in range(WORLD)]
    summed_dense = sum(dense for dense, _ in grads)
    counted = [summed_dense] + ([rows for _, rows in grads] if head_counted else [])
    norm = global_norm(counted)
    assert norm > CLIP_NORM  # so the clip acts
    factor = CLIP_NORM / (norm + EPS)
    for rank, result in enumerate(ranks[name]):
        assert float(result["norm"]) == pytest.approx(norm, rel=1e-5)
        np.testing.assert_allclose(result["dense_grad_after"], summed_dense * factor, rtol=1e-5)
        row_factor = factor if head_counted else 1.0
        # momentum 0, lr 1: the update is minus the clipped gradient
        dense0, shard0 = initial_values(rank)
        np.testing.assert_allclose(result["dense_after"], dense0 - summed_dense * factor, rtol=1e-5, atol=1e-6)
        expected_shard = shard0.copy()
        expected_shard[SAMPLED[rank]] -= grads[rank][1] * row_factor
        np.testing.assert_allclose(result["shard_after"], expected_shard, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ranks[name][0]["dense_after"], ranks[name][1]["dense_after"])


def test_inf_on_one_rank_skips_the_step_on_both(ranks):
    results = ranks["scaler"]
    for rank, result in enumerate(results):
        assert not result["first_stepped"], f"rank {rank} stepped although rank 1 saw an inf"
        for part in ["weight", "bias", "shard"]:  # nothing moved, bit for bit
            np.testing.assert_array_equal(result[f"after_skip_{part}"], result[f"before_{part}"])
        assert int(result["sparse_state_after_skip"]) == 0  # no momentum was even created
        assert float(result["scale_after_skip"]) == INIT_SCALE / 2
        assert result["second_stepped"]
        assert float(result["scale_after_good"]) == INIT_SCALE / 2
        assert not np.array_equal(result["after_good_weight"], result["before_weight"])
    for part in ["weight", "bias"]:  # the replicated backbone stays identical across ranks
        np.testing.assert_array_equal(results[0][f"before_{part}"], results[1][f"before_{part}"])
        np.testing.assert_array_equal(results[0][f"after_good_{part}"], results[1][f"after_good_{part}"])
    # the shards are different tables (rank 0 holds classes 0-4, rank 1 classes 5-9)
    assert not np.array_equal(results[0]["before_shard"], results[1]["before_shard"])
