"""CombinedLoss: binding to the class layer and running statistics (its tables: tests/test_checkpoint_reshard.py)."""

import numpy as np
import paddle
import pytest

from plsc.errors import PlscError
from plsc.heads.partial_fc import PartialFC
from plsc.loss.combined import CombinedLoss
from plsc.loss.inputs import LossInputs

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
