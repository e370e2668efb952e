"""The FedFR server and clients as a Flower ServerApp and ClientApp (real deployment across sites).

The ServerApp runs the same RoundLoop as `plsc-fedtrain` and the ClientApp the same FedFRClient;
only the transport differs: each round's plan, global backbone, public class centres and public
features go out in a Flower message, each client's backbone, public centres and sample count come
back. Client private state stays in the client's folder on its own machine.

Run configuration (pyproject.toml `[tool.flwr.app.config]` or `flwr run --run-config`):
  config     path of the FedFR YAML on the server (and, unless the node says otherwise, on the clients)
  overrides  `-o` style overrides separated by ';' (e.g. "Federated.rounds=2;Global.seed=1")
  num-clients  wait for this many SuperNodes before round 1
  wait-seconds, reply-timeout  bounded waits for nodes to connect and for replies
Node configuration (`flower-supernode --node-config`):
  client-dir (required), public-dir, veri-dir (default: beside client-dir in the split layout),
  config (default: the run's config path)

    python -m plsc.federated.flower_app init APP_DIR --config CONFIG.yaml
writes the Flower app folder (pyproject.toml) that `flwr run APP_DIR CONNECTION` submits.
"""
import argparse
import os
import sys
import time

import numpy as np

from plsc.errors import PlscError

TRAIN, EVALUATE = "train", "evaluate"
PROJECT_TEMPLATE = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "plsc-fedfr"
version = "1.0.0"
description = "FedFR face recognition with plsc"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "plsc"

[tool.flwr.app.components]
serverapp = "plsc.federated.flower_app:server_app"
clientapp = "plsc.federated.flower_app:client_app"

[tool.flwr.app.config]
config = "{config}"
overrides = "{overrides}"
num-clients = {num_clients}
wait-seconds = {wait_seconds}
reply-timeout = {reply_timeout}
"""


def split_overrides(text):
    return [item.strip() for item in str(text or "").split(";") if item.strip()]


# ---- messages -----------------------------------------------------------------------------------
def pack_arrays(arrays):
    from flwr.app import Array, ArrayRecord

    return ArrayRecord(array_dict={name: Array(np.ascontiguousarray(value)) for name, value in arrays.items()})


def unpack_arrays(record):
    return {name: np.array(array.numpy()) for name, array in record.items()}


def flatten_metrics(metrics):
    """{'tpr': {'1e-01': v}} -> {'tpr/1e-01': v} (a Flower record holds flat scalars)."""
    return {f"{kind}/{key}": float(value) for kind, figures in metrics.items() for key, value in figures.items()}


def unflatten_metrics(flat):
    metrics = {}
    for name, value in flat.items():
        kind, key = name.split("/", 1)
        metrics.setdefault(kind, {})[key] = float(value)
    return metrics


def train_content(plan, backbone_state, public_centers, public_features):
    from flwr.app import ConfigRecord, RecordDict

    return RecordDict({"plan": ConfigRecord(dict(plan)), "backbone": pack_arrays(backbone_state),
                       "public": pack_arrays({"centers": public_centers, "features": public_features})})


def update_content(update):
    from flwr.app import ConfigRecord, MetricRecord, RecordDict

    return RecordDict({"backbone": pack_arrays(update["backbone"]),
                       "public": pack_arrays({"centers": update["public_centers"]}),
                       "result": ConfigRecord({"name": update["name"], "num_samples": int(update["num_samples"]),
                                               "num_hard_negatives": int(update["num_hard_negatives"])}),
                       "metrics": MetricRecord(flatten_metrics(update["metrics"]))})


def read_update(content):
    result = content.config_records["result"]
    return {"name": str(result["name"]), "num_samples": int(result["num_samples"]),
            "num_hard_negatives": int(result["num_hard_negatives"]),
            "backbone": unpack_arrays(content.array_records["backbone"]),
            "public_centers": unpack_arrays(content.array_records["public"])["centers"],
            "metrics": unflatten_metrics(dict(content.metric_records["metrics"]))}


# ---- client side --------------------------------------------------------------------------------
_CLIENTS = {}


def node_client(context):
    """The FedFRClient of this SuperNode (built once per process from the node and run configuration)."""
    from plsc.engine.build import select_device
    from plsc.federated.client import FedFRClient
    from plsc.federated.config import load_fedfr_config
    from plsc.federated.split import PUBLIC_DIR, VERI_DIR

    node, run = dict(context.node_config), dict(context.run_config)
    if "client-dir" not in node:
        raise PlscError("flower-supernode --node-config must name client-dir='PATH' (the client's folder)")
    client_dir = str(node["client-dir"])
    split_root = os.path.dirname(os.path.dirname(os.path.abspath(client_dir)))
    config_path = str(node.get("config", run.get("config")))
    key = (client_dir, config_path, str(run.get("overrides", "")))
    if key not in _CLIENTS:
        config = load_fedfr_config(config_path, split_overrides(run.get("overrides", "")))
        select_device(config.Global.device)
        public_dir = str(node.get("public-dir", os.path.join(split_root, PUBLIC_DIR)))
        veri_dir = str(node.get("veri-dir", os.path.join(split_root, VERI_DIR)))
        _CLIENTS[key] = FedFRClient(config, client_dir, public_dir, veri_dir)
    return _CLIENTS[key]


def client_train(message, context):
    from flwr.app import Message

    client = node_client(context)
    content = message.content
    plan = dict(content.config_records["plan"])
    public = unpack_arrays(content.array_records["public"])
    update = client.fit(plan, unpack_arrays(content.array_records["backbone"]), public["centers"], public["features"])
    return Message(update_content(update), reply_to=message)


def client_evaluate(message, context):
    from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

    client = node_client(context)
    metrics = client.evaluate_start(unpack_arrays(message.content.array_records["backbone"]))
    return Message(RecordDict({"result": ConfigRecord({"name": client.name}),
                               "metrics": MetricRecord(flatten_metrics(metrics))}), reply_to=message)


# ---- server side --------------------------------------------------------------------------------
class FlowerClients:
    """fit_clients / evaluate_start of RoundLoop over the SuperNodes connected to the Grid."""

    def __init__(self, grid, node_ids, reply_timeout, log):
        self.grid, self.node_ids, self.reply_timeout, self.log = grid, list(node_ids), reply_timeout, log

    def _exchange(self, message_type, content, round_index):
        from flwr.app import Message

        messages = [Message(content, dst_node_id=node_id, message_type=message_type, group_id=str(round_index))
                    for node_id in self.node_ids]
        replies = list(self.grid.send_and_receive(messages, timeout=self.reply_timeout))
        answered, failures = [], {}
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                failures[f"node {node}"] = f"{reply.error.code}: {reply.error.reason}"
            else:
                answered.append(reply)
        missing = set(self.node_ids) - {reply.metadata.src_node_id for reply in replies}
        for node in sorted(missing):
            failures[f"node {node}"] = f"no reply within {self.reply_timeout} s"
        return answered, failures

    def fit_clients(self, plan, backbone_state, public_centers, public_features):
        replies, failures = self._exchange(TRAIN, train_content(plan, backbone_state, public_centers,
                                                                public_features), plan["round"])
        return [read_update(reply.content) for reply in replies], failures

    def evaluate_start(self, backbone_state):
        from flwr.app import RecordDict

        replies, failures = self._exchange(EVALUATE, RecordDict({"backbone": pack_arrays(backbone_state)}), 0)
        for name, message in failures.items():
            self.log(f"start evaluation: {name} failed: {message}")
        results = [(str(reply.content.config_records["result"]["name"]),
                    unflatten_metrics(dict(reply.content.metric_records["metrics"]))) for reply in replies]
        return sorted(results)


def wait_for_nodes(grid, count, seconds):
    deadline = time.time() + seconds
    while True:
        node_ids = sorted(grid.get_node_ids())
        if len(node_ids) >= count or time.time() > deadline:
            return node_ids
        time.sleep(1.0)


def server_main(grid, context):
    """Prepare (split, generic model) and run the rounds with the connected SuperNodes as clients."""
    from plsc import distributed
    from plsc.engine.build import select_device
    from plsc.engine.logger import get_logger
    from plsc.federated.config import load_fedfr_config
    from plsc.federated.prepare import layout, prepare_data
    from plsc.federated.rounds import RoundLoop, federated_dir
    from plsc.federated.simulation import start_server

    run = dict(context.run_config)
    config = load_fedfr_config(str(run["config"]), split_overrides(run.get("overrides", "")))
    distributed.init()
    select_device(config.Global.device)
    log_path = os.path.join(federated_dir(config), "train.log")
    logger = get_logger(log_path)
    summary = prepare_data(config, logger.info)
    server = start_server(config, summary, logger.info)
    logger = get_logger(log_path)
    wanted = int(run.get("num-clients", 1))
    node_ids = wait_for_nodes(grid, wanted, float(run.get("wait-seconds", 120)))
    logger.info(f"Flower: {len(node_ids)} SuperNode(s) connected (asked for {wanted})")
    if not node_ids:
        raise PlscError("no SuperNode connected to the SuperLink")
    clients = FlowerClients(grid, node_ids, float(run.get("reply-timeout", 3600)), logger.info)
    public_dir = layout(config)["public"]
    RoundLoop(config, server, public_dir, len(node_ids), clients.fit_clients, clients.evaluate_start,
              logger.info).run()


def build_server_app():
    """The ServerApp, or None when flwr is not installed (`pip install -e ".[federated]"`)."""
    try:
        from flwr.serverapp import ServerApp
    except ImportError:
        return None
    app = ServerApp()
    app.main()(server_main)
    return app


def build_client_app():
    """The ClientApp (train: one local round; evaluate: the starting model's figures), or None without flwr."""
    try:
        from flwr.clientapp import ClientApp
    except ImportError:
        return None
    app = ClientApp()
    app.train()(client_train)
    app.evaluate()(client_evaluate)
    return app


# Plain top-level assignments: Flower finds the apps by reading this module's source.
server_app = build_server_app()
client_app = build_client_app()


def write_app_dir(app_dir, config, overrides="", num_clients=1, wait_seconds=120, reply_timeout=3600):
    """Write the Flower app folder (pyproject.toml) that `flwr run` submits; returns its path."""
    os.makedirs(app_dir, exist_ok=True)
    path = os.path.join(app_dir, "pyproject.toml")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(PROJECT_TEMPLATE.format(config=os.path.abspath(config).replace("\\", "/"),
                                             overrides=overrides, num_clients=int(num_clients),
                                             wait_seconds=float(wait_seconds), reply_timeout=float(reply_timeout)))
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m plsc.federated.flower_app")
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="write the Flower app folder for `flwr run`")
    init.add_argument("app_dir")
    init.add_argument("--config", required=True, help="the FedFR YAML (absolute path is stored)")
    init.add_argument("--overrides", default="", help="'Key=value;Key2=value2'")
    init.add_argument("--num_clients", type=int, default=1)
    init.add_argument("--wait_seconds", type=float, default=120)
    init.add_argument("--reply_timeout", type=float, default=3600)
    args = parser.parse_args(argv)
    if not os.path.isfile(args.config):
        print(f"plsc.federated.flower_app: error: config file not found: {args.config}", file=sys.stderr)
        sys.exit(2)
    print(write_app_dir(args.app_dir, args.config, args.overrides, args.num_clients, args.wait_seconds,
                        args.reply_timeout))


if __name__ == "__main__":
    main()
