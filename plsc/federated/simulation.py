"""`plsc-fedtrain`: every client simulated in this process, one after another.

Only one client's models are in memory at a time; each client's private state lives on disk in
its own folder between rounds, as it would on a real site.
"""
import os
import traceback

from plsc import distributed
from plsc.engine.build import select_device
from plsc.engine.logger import get_logger
from plsc.federated.client import FedFRClient
from plsc.federated.prepare import ensure_generic_model, layout, prepare_data
from plsc.federated.rounds import RoundLoop, federated_dir
from plsc.federated.server import FedFRServer


def start_server(config, summary, log):
    """The server at the start (generic model) or, with Global.checkpoint, at the saved round."""
    if config.Global.get("checkpoint"):
        server = FedFRServer.load(config, config.Global.checkpoint)
        log(f"resumed from {config.Global.checkpoint}: round {server.round} done, continuing at round "
            f"{server.round + 1}")
        return server
    backbone_state, public_centers = ensure_generic_model(config, summary["public"]["identities"], log)
    return FedFRServer(config, backbone_state, public_centers)


def run_clients(clients, log):
    """(fit_clients, evaluate_start) over in-process FedFRClients; a client's exception drops it from the round."""

    def fit_clients(plan, backbone_state, public_centers, public_features):
        updates, failures = [], {}
        for client in clients:
            try:
                updates.append(client.fit(plan, backbone_state, public_centers, public_features))
            except Exception as error:  # noqa: BLE001 - a failing client must not stop the others
                failures[client.name] = f"{type(error).__name__}: {error}"
                log(f"client {client.name} traceback:\n{traceback.format_exc()}")
        return updates, failures

    def evaluate_start(backbone_state):
        figures = []
        for client in clients:
            try:
                figures.append((client.name, client.evaluate_start(backbone_state)))
            except Exception as error:  # noqa: BLE001 - the start figures are averaged over the clients that answer
                log(f"start evaluation: client {client.name} failed and is left out: {type(error).__name__}: {error}")
        return figures

    return fit_clients, evaluate_start


def run_fedtrain(config, client_factory=FedFRClient):
    """Prepare data and the generic model, then run (or resume) the federated rounds; returns the history."""
    distributed.init()
    select_device(config.Global.device)
    log_path = os.path.join(federated_dir(config), "train.log")
    logger = get_logger(log_path)
    summary = prepare_data(config, logger.info)
    paths = layout(config)
    server = start_server(config, summary, logger.info)
    logger = get_logger(log_path)  # the generic model's training switched the log file
    clients = [client_factory(config, folder, paths["public"], paths["veri"], log=logger.info)
               for _, folder in paths["clients"]]
    fit_clients, evaluate_start = run_clients(clients, logger.info)
    loop = RoundLoop(config, server, paths["public"], len(clients), fit_clients, evaluate_start, logger.info)
    return loop.run()
