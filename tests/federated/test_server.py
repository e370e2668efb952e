"""FedAvg weights, the local-epoch schedule and the hard-negative selection."""
import numpy as np
import pytest

from plsc.errors import PlscError
from plsc.federated.client import select_hard_negatives
from plsc.federated.server import decay_epoch, fedavg, fedavg_weights, local_epochs_for_round


def test_fedavg_weights_are_training_set_shares():
    np.testing.assert_allclose(fedavg_weights([300, 100]), [0.75, 0.25])
    with pytest.raises(PlscError):
        fedavg_weights([0, 0])


def test_fedavg_averages_every_entry_by_sample_count():
    states = [{"w": np.array([1.0, 2.0], dtype=np.float32), "bn.mean": np.array([0.0], dtype=np.float32)},
              {"w": np.array([5.0, 6.0], dtype=np.float32), "bn.mean": np.array([4.0], dtype=np.float32)}]
    averaged = fedavg(states, [3, 1])
    np.testing.assert_allclose(averaged["w"], [2.0, 3.0])
    np.testing.assert_allclose(averaged["bn.mean"], [1.0])
    assert averaged["w"].dtype == np.float32


def test_local_epochs_follow_the_published_schedule():
    assert [local_epochs_for_round(r, 10, 4, 2) for r in range(1, 7)] == [10, 8, 6, 4, 4, 4]
    assert [decay_epoch(e, 0.75) for e in (10, 8, 6, 4, 1)] == [7, 6, 4, 3, 1]
    assert local_epochs_for_round(5, 3, 4, 2) == 3  # a start under the minimum does not grow


def test_hard_negatives_are_public_images_above_the_threshold_for_any_own_image():
    rng = np.random.default_rng(3)
    own = rng.normal(size=(9, 4))
    public = rng.normal(size=(50, 4))
    own /= np.linalg.norm(own, axis=1, keepdims=True)
    public /= np.linalg.norm(public, axis=1, keepdims=True)
    expected = [p for p in range(50) if max(float(public[p] @ own[m]) for m in range(9)) > 0.4]
    got = select_hard_negatives(own, public, 0.4, chunk=7)
    assert got.tolist() == expected
    assert 0 < len(expected) < 50
    assert select_hard_negatives(own, public, 1.0).size == 0
