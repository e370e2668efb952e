"""FedFR configs: plsc's key tree with the `Federated` section required, loaded and checked like every config.

The rest of the config describes the generic model (Model, Loss, Optimizer, DataLoader.Train on the
public set, DataLoader.Eval verification sets): the same file trains it with `plsc-train`.
"""
from plsc.config import fill_defaults, normalise_yaml_quirks, read_yaml, validate
from plsc.config.nodes import Section
from plsc.config.overrides import apply_overrides
from plsc.config.schema import SCHEMA
from plsc.config.tree import Config
from plsc.config.validate import default_registries
from plsc.federated.schema import FEDERATED

# The main schema with the Federated section required.
FEDERATED_REQUIRED = Section(FEDERATED.children, required=True)
FEDFR_SCHEMA = Section({**SCHEMA.children, "Federated": FEDERATED_REQUIRED}, required=True)


def load_fedfr_config(path, overrides=()):
    """The validated FedFR Config of YAML `path` with `-o` overrides; a PlscError names file and key."""
    config = Config(normalise_yaml_quirks(read_yaml(path)))
    apply_overrides(config, overrides)
    registries = default_registries()
    validate(config, source=path, registries=registries, schema=FEDFR_SCHEMA)
    return fill_defaults(config, registries=registries, schema=FEDFR_SCHEMA)
