"""plsc-fedtrain end to end on the tiny setup: rounds, resume, a dropped client, plsc-fedeval."""
import json
import os

import numpy as np
import pytest

from plsc.errors import PlscError
from plsc.federated.client import FedFRClient
from plsc.federated.evaluate import evaluate_round
from plsc.federated.server import FedFRServer
from plsc.federated.simulation import run_fedtrain
from plsc.serialization import load_state

pytestmark = pytest.mark.slow


def round_file(setup, name, round_index):
    return os.path.join(setup.root, name, "federated", "rounds", f"round_{round_index:03d}.state")


def assert_same_backbone(first, second, tolerance=0.0):
    assert sorted(first) == sorted(second)
    for key in first:
        np.testing.assert_allclose(first[key], second[key], atol=tolerance, rtol=0, err_msg=key)


def test_two_rounds_then_resume_gives_the_uninterrupted_result(tiny_fedfr):
    history = run_fedtrain(tiny_fedfr.config("full"))
    assert [record["round"] for record in history] == [1, 2]
    assert all(record["clients"] == ["client_000", "client_001"] for record in history)
    report = json.load(open(os.path.join(tiny_fedfr.root, "full", "federated", "report.json")))
    assert [record["round"] for record in report["rounds"]] == [0, 1, 2]
    assert "1e-02" in report["rounds"][2]["personal"]["tpr"]
    assert os.path.isfile(os.path.join(tiny_fedfr.root, "full", "federated", "report.png"))

    run_fedtrain(tiny_fedfr.config("resumed", "Federated.rounds=1"))
    run_fedtrain(tiny_fedfr.config("resumed", f"Global.checkpoint={round_file(tiny_fedfr, 'resumed', 1)[:-6]}"))
    full, resumed = load_state(round_file(tiny_fedfr, "full", 2)), load_state(round_file(tiny_fedfr, "resumed", 2))
    assert_same_backbone(full["backbone"], resumed["backbone"], tolerance=1e-6)
    np.testing.assert_allclose(full["public_centers"], resumed["public_centers"], atol=1e-6)

    records = evaluate_round(tiny_fedfr.config("full", f"Global.checkpoint={round_file(tiny_fedfr, 'full', 2)}"),
                             log=lambda _: None)
    assert records[-1]["personal"]["tpr"] == pytest.approx(history[-1]["personal"]["tpr"], nan_ok=True)


class FailingInRoundOne(FedFRClient):
    """client_001 raises in round 1 (a site going down); client_000 always answers."""

    def fit(self, plan, *args):
        if self.name == "client_001" and plan["round"] == 1:
            raise ConnectionError("site unreachable")
        return super().fit(plan, *args)


def test_a_dropped_client_is_logged_and_the_round_uses_the_others(tiny_fedfr):
    history = run_fedtrain(tiny_fedfr.config("dropped"), client_factory=FailingInRoundOne)
    assert history[0]["clients"] == ["client_000"] and history[0]["dropped"] == ["client_001"]
    assert history[1]["clients"] == ["client_000", "client_001"]
    log = open(os.path.join(tiny_fedfr.root, "dropped", "federated", "train.log")).read()
    assert "client client_001 failed and is left out: ConnectionError: site unreachable" in log
    # client_001 missed round 1: in round 2 it starts from scratch, its state of round 2 is saved.
    states = os.path.join(tiny_fedfr.root, "data", "fedfr", "clients", "client_001", "state_dropped")
    assert sorted(os.listdir(states)) == ["round_002.state"]


def test_too_few_clients_retries_then_stops_with_the_last_round_kept(tiny_fedfr):
    config = tiny_fedfr.config("retried", "Federated.min_clients=2", "Federated.round_retries=1")
    with pytest.raises(PlscError, match="fewer than Federated.min_clients=2"):
        run_fedtrain(config, client_factory=FailingInRoundOne)
    log = open(os.path.join(tiny_fedfr.root, "retried", "federated", "train.log")).read()
    assert log.count("retrying the round") == 1
    start = FedFRServer.load(config, round_file(tiny_fedfr, "retried", 0))
    assert start.round == 0 and start.start is not None
