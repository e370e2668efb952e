"""The round loop shared by the in-process simulation and the Flower ServerApp.

Each round: plan -> public features -> clients train (some may fail) -> retry the round if fewer
than Federated.min_clients returned -> FedAvg -> evaluation -> checkpoint -> table and report.
"""
import os
import time

from plsc.engine.build import build_evaluator
from plsc.errors import PlscError
from plsc.federated.personal_eval import average_metrics
from plsc.federated.report import format_table, write_report
from plsc.federated.server import min_clients_met


def federated_dir(config):
    return os.path.join(config.Global.output_dir, "federated")


def rounds_dir(config):
    return os.path.join(federated_dir(config), "rounds")


def generic_figures(config, backbone):
    """{figure name: value} of the global backbone: '<set> acc' of each DataLoader.Eval verification set,
    and with Federated.ijbc_root '<target> TAR@<far>' and '<target> TPIR@<fpir>'."""
    figures = {}
    evaluator = build_evaluator(config)
    if evaluator is not None:
        figures.update({f"{name} acc": float(values["accuracy"])
                        for name, values in evaluator.evaluate(backbone).items() if "accuracy" in values})
    fed = config.Federated
    if fed.get("ijbc_root"):
        from plsc.federated.ijbc import ijb_figures

        size = int(config.Model.get("input_size", 112))
        ijb = ijb_figures(backbone, fed.ijbc_root, fed.ijbc_target, size, fed.embed_batch_size)
        for kind, values in ijb.items():
            figures.update({f"{fed.ijbc_target} {kind.upper()}@{key}": value for key, value in values.items()})
    return figures


class RoundLoop:
    """Drives a FedFRServer through the remaining rounds with a `fit_clients` callable.

    fit_clients(plan, backbone_state, public_centers, public_features) -> (updates, failures):
    updates a list of client results ({'name', 'backbone', 'public_centers', 'num_samples', 'metrics'}),
    failures {client name: message}. evaluate_start(backbone_state) -> [per-client metrics].
    """

    def __init__(self, config, server, public_dir, num_clients, fit_clients, evaluate_start, log):
        self.config, self.server, self.public_dir = config, server, public_dir
        self.num_clients = num_clients
        self.fit_clients, self.evaluate_start, self.log = fit_clients, evaluate_start, log

    def run(self):
        fed = self.config.Federated
        if self.server.start is None:
            self._record_start()
        while self.server.round < fed.rounds:
            self._run_round(self.server.round + 1)
        return self.server.history

    def _record_start(self):
        began = time.time()
        per_client = self.evaluate_start(self.server.backbone_state)
        self.server.start = {"round": 0, "clients": [name for name, _ in per_client],
                             "generic": generic_figures(self.config, self.server.global_backbone()),
                             "personal": average_metrics([metrics for _, metrics in per_client]),
                             "per_client": dict(per_client), "seconds": round(time.time() - began, 1)}
        self.server.save(rounds_dir(self.config))
        self._report()

    def _run_round(self, round_index):
        fed = self.config.Federated
        began = time.time()
        plan = self.server.plan(round_index)
        self.log(f"round {round_index}/{fed.rounds}: {plan['local_epochs']} local epochs "
                 f"(LR x{fed.lr_decay_gamma} from epoch {plan['decay_epoch'] + 1})")
        public_features = self.server.public_features(self.public_dir)
        for attempt in range(int(fed.round_retries) + 1):
            updates, failures = self.fit_clients(plan, self.server.backbone_state, self.server.public_centers,
                                                 public_features)
            for name, message in failures.items():
                self.log(f"round {round_index}: client {name} failed and is left out: {message}")
            if min_clients_met(len(updates), fed, self.num_clients):
                break
            if attempt == int(fed.round_retries):
                continue  # no retry left: the for-else below stops the run
            self.log(f"round {round_index}: {len(updates)} client(s) returned, Federated.min_clients is "
                     f"{fed.min_clients}: retrying the round ({attempt + 1}/{fed.round_retries})")
        else:
            raise PlscError(f"round {round_index}: fewer than Federated.min_clients={fed.min_clients} clients "
                            f"returned after {fed.round_retries} retries; the last completed round is saved in "
                            f"{rounds_dir(self.config)}")
        updates = sorted(updates, key=lambda update: update["name"])
        self.server.aggregate(updates)
        record = {"round": round_index, "clients": [update["name"] for update in updates],
                  "dropped": sorted(failures), "local_epochs": plan["local_epochs"],
                  "num_samples": {update["name"]: update["num_samples"] for update in updates},
                  "generic": generic_figures(self.config, self.server.global_backbone()) if plan["evaluate"] else {},
                  "personal": average_metrics([update["metrics"] for update in updates if update["metrics"]]),
                  "per_client": {update["name"]: update["metrics"] for update in updates},
                  "seconds": round(time.time() - began, 1)}
        self.server.history.append(record)
        path = self.server.save(rounds_dir(self.config))
        self.log(f"round {round_index} aggregated from {len(updates)} client(s), saved {path}")
        self._report()

    def _report(self):
        records = [self.server.start, *self.server.history]
        self.log("FedFR rounds (generic: global backbone; personalised: mean over clients):\n"
                 + format_table(records))
        paths = write_report(records, federated_dir(self.config))
        self.log(f"report: {paths['json']}, chart: {paths['png']}")
