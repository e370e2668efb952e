"""CombinedLoss: binding to the class layer, running statistics and the per-rank class-table files."""
from types import SimpleNamespace

import numpy as np
import paddle
import pytest

from plsc.errors import PlscError
from plsc.heads.partial_fc import PartialFC
from plsc.loss.combined import CombinedLoss
from plsc.loss.inputs import LossInputs
from plsc.loss.table_checkpoint import load_table_shards, save_table_shards, table_file

ENTRIES = [{"CurricularFace": {"m": 0.5, "s": 16.0}}, {"CenterLoss": {"weight": 0.2}},
           {"AdaFace": {"s": 16.0, "weight": 0.5}}]


def step(combined, head, seed):
    rng = np.random.default_rng(seed)
    embeddings = paddle.to_tensor(rng.standard_normal((6, 8)).astype(np.float32) * 4, stop_gradient=False)
    labels = paddle.to_tensor(rng.integers(0, 10, size=6))
    cos, local_labels = head(embeddings, labels)
    total, parts = combined(LossInputs(cos, local_labels, embeddings, labels, head))
    total.backward()
    return float(total), {name: float(value) for name, value in parts.items()}


def test_total_is_the_weighted_sum_and_model_parallel_follows_the_head():
    head = PartialFC(10, 8, model_parallel=True, seed=3)
    combined = CombinedLoss(ENTRIES)
    tables = combined.attach(head)
    assert len(tables) == 1 and tables[0].weight.shape == [10, 8]
    assert all(loss.model_parallel for _, _, _, loss in combined.parts)
    total, parts = step(combined, head, 1)
    assert set(parts) == {"CurricularFace", "CenterLoss", "AdaFace"}
    assert total == pytest.approx(parts["CurricularFace"] + 0.2 * parts["CenterLoss"] + 0.5 * parts["AdaFace"],
                                  rel=1e-6)


def test_model_parallel_mismatch_is_a_config_error():
    combined = CombinedLoss([{"MarginLoss": {"model_parallel": False}}])
    with pytest.raises(PlscError, match=r"Loss.Train.0.MarginLoss.model_parallel is False but "
                                        r"Model.pfc_config.model_parallel is True"):
        combined.attach(PartialFC(10, 8, model_parallel=True))


def test_running_statistics_round_trip_and_mismatch():
    head = PartialFC(10, 8, seed=3)
    combined = CombinedLoss(ENTRIES)
    combined.attach(head)
    step(combined, head, 2)
    state = combined.state_dict()
    assert set(state) == {"0.CurricularFace", "2.AdaFace"}
    fresh = CombinedLoss(ENTRIES)
    fresh.attach(head)
    fresh.set_state_dict(state)
    for key in state:
        for name, value in state[key].items():
            loss = next(loss for k, _, _, loss in fresh.parts if k == key)
            np.testing.assert_array_equal(getattr(loss, name).numpy(), value)
    with pytest.raises(PlscError, match="no running statistics"):
        fresh.set_state_dict({})


def test_table_files_reshard_from_two_ranks_to_one(tmp_path, monkeypatch):
    # Two saved shards of a 7-class table (rows 0..3 and 4..6), written as ranks 0 and 1 would.
    full = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
    prefix = str(tmp_path / "latest")
    for rank, (start, count) in enumerate([(0, 4), (4, 3)]):
        monkeypatch.setenv("PADDLE_TRAINER_ID", str(rank))
        table = SimpleNamespace(weight=paddle.to_tensor(full[start:start + count]), class_start=start,
                                num_local_classes=count, num_classes=7, model_parallel=True)
        save_table_shards(prefix, 12, {"1.CenterLoss": table})
    monkeypatch.setenv("PADDLE_TRAINER_ID", "0")
    assert (tmp_path / "latest_rank1.pdloss").is_file()
    whole = SimpleNamespace(weight=paddle.zeros([7, 3]), class_start=0, num_local_classes=7, num_classes=7,
                            model_parallel=True)
    load_table_shards(prefix, 12, 2, {"1.CenterLoss": whole})
    np.testing.assert_array_equal(whole.weight.numpy(), full)
    with pytest.raises(PlscError, match="torn"):
        load_table_shards(prefix, 13, 2, {"1.CenterLoss": whole})
    with pytest.raises(PlscError, match="no table for Loss.Train entry 0.CenterLoss"):
        load_table_shards(prefix, 12, 2, {"0.CenterLoss": whole})
    assert table_file(prefix, 3).endswith("latest_rank3.pdloss")
