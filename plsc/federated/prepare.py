"""Before round 1: the synthetic faces (demo), the federated split, and the starting generic model."""
import os

from plsc.config.tree import Config
from plsc.errors import PlscError
from plsc.federated.model_io import load_generic_model
from plsc.federated.split import CLIENTS_DIR, PUBLIC_DIR, VERI_DIR, SplitParameters, read_split, split_dataset

GENERIC_DIR = "generic"


def layout(config):
    """{'public', 'veri', 'clients': [(name, folder)]} of Federated.data_dir, restricted to Federated.clients."""
    data_dir = config.Federated.data_dir
    clients_root = os.path.join(data_dir, CLIENTS_DIR)
    found = sorted(name for name in os.listdir(clients_root)) if os.path.isdir(clients_root) else []
    wanted = list(config.Federated.clients) or found
    unknown = [name for name in wanted if name not in found]
    if unknown:
        raise PlscError(f"Federated.clients: {unknown[0]} is not a folder of {clients_root} "
                        f"(found {', '.join(found[:5]) or 'none'})")
    if not wanted:
        raise PlscError(f"Federated.data_dir: no client folders in {clients_root}")
    return {"public": os.path.join(data_dir, PUBLIC_DIR), "veri": os.path.join(data_dir, VERI_DIR),
            "clients": [(name, os.path.join(clients_root, name)) for name in wanted]}


def prepare_data(config, log):
    """Generate the synthetic source (SyntheticData section) and split it, each only when not done yet."""
    synthetic = config.get("SyntheticData")
    if synthetic:
        from plsc.data.synthetic import ensure_quickstart_data

        ensure_quickstart_data(**dict(synthetic), log=log)
    fed = config.Federated
    summary = read_split(fed.data_dir)
    if summary is None:
        source = fed.Split.source
        if not source:
            raise PlscError(f"Federated.data_dir {fed.data_dir} holds no finished split (split.json); set "
                            f"Federated.Split.source or run python -m plsc.federated.split")
        parameters = SplitParameters(**{key: value for key, value in fed.Split.items() if key != "source"})
        summary = split_dataset(source, fed.data_dir, parameters, log=log)
    return summary


def generic_model_prefix(config):
    fed = config.Federated
    if fed.generic_model:
        return fed.generic_model
    return os.path.join(config.Global.output_dir, GENERIC_DIR, config.Model.name, "latest")


def generic_training_config(config):
    """The config of the plsc-train run that makes the generic model: this one minus the federated parts."""
    plain = Config(config.to_dict())
    plain.pop("Federated", None)
    plain.pop("SyntheticData", None)
    plain.Global.checkpoint = None  # Global.checkpoint names a federated round here
    plain.Global.output_dir = os.path.join(config.Global.output_dir, GENERIC_DIR)
    return plain


def ensure_generic_model(config, num_public, log):
    """(backbone state, public centres [C, D]) of the starting model; trained first when the config says so."""
    prefix = generic_model_prefix(config)
    if not config.Federated.generic_model and not os.path.exists(prefix):
        from plsc.engine.trainer import Trainer

        if int(config.Model.class_num) != int(num_public):
            raise PlscError(f"Model.class_num is {config.Model.class_num} but the public set has {num_public} "
                            f"identities (Federated.Split.num_public)")
        log(f"training the generic model on the public set -> {prefix}")
        Trainer(generic_training_config(config)).train()
    return load_generic_model(prefix, num_public)
