"""`plsc-fedeval`: the generic and personalised figures of any saved round, beside the starting model's."""
import os

from plsc import distributed
from plsc.engine.build import select_device
from plsc.errors import PlscError
from plsc.federated.client import FedFRClient
from plsc.federated.personal_eval import average_metrics
from plsc.federated.prepare import layout
from plsc.federated.report import format_table, write_report
from plsc.federated.rounds import federated_dir, generic_figures
from plsc.federated.server import FedFRServer


def evaluate_round(config, log=print):
    """Evaluate the round checkpoint Global.checkpoint; returns [start record, this round's record]."""
    distributed.init()
    select_device(config.Global.device)
    path = config.Global.get("checkpoint")
    if not path:
        raise PlscError("plsc-fedeval needs -o Global.checkpoint=OUTPUT/federated/rounds/round_NNN")
    server = FedFRServer.load(config, path)
    paths = layout(config)
    clients = [FedFRClient(config, folder, paths["public"], paths["veri"], log=log) for _, folder in paths["clients"]]
    per_client = {}
    for client in clients:
        if server.round == 0:
            per_client[client.name] = client.evaluate_start(server.backbone_state)
        else:
            per_client[client.name] = client.evaluate_saved_round(server.round)
    record = {"round": server.round, "clients": sorted(per_client),
              "generic": generic_figures(config, server.global_backbone()),
              "personal": average_metrics(list(per_client.values())), "per_client": per_client}
    records = [server.start, record] if server.start and server.round else [record]
    log(format_table(records))
    report = write_report(records, os.path.join(federated_dir(config), "eval"), name=f"round_{server.round:03d}")
    log(f"report: {report['json']}, chart: {report['png']}")
    return records
