"""Checking a config against the schema and filling its defaults, with registries injectable."""
import importlib
import importlib.util

from plsc import registry as registry_module
from plsc.config.nodes import Context
from plsc.config.schema import SCHEMA
from plsc.config.tree import Config
from plsc.errors import PlscError

# The packages whose import fills the registries (each registers its constructors by decorator).
REGISTRY_PACKAGES = ("plsc.models", "plsc.heads", "plsc.loss", "plsc.optim", "plsc.data",
                     "plsc.data.dataset", "plsc.data.transforms", "plsc.metrics")
REGISTRY_NAMES = ("MODELS", "HEADS", "LOSSES", "DATASETS", "TRANSFORMS", "OPTIMIZERS",
                  "LR_SCHEDULERS", "METRICS")


def import_registries():
    """Import whichever registering packages exist (a missing one is skipped); returns their names."""
    imported = []
    for module_name in REGISTRY_PACKAGES:
        if importlib.util.find_spec(module_name) is None:
            continue
        importlib.import_module(module_name)
        imported.append(module_name)
    return imported


def default_registries():
    """The registries of `plsc.registry`, filled by importing plsc's packages, keyed as in the schema."""
    import_registries()
    return {name: getattr(registry_module, name) for name in REGISTRY_NAMES}


def validate(config, source=None, registries=None, schema=SCHEMA):
    """Raise a one-line PlscError (prefixed with `source`, e.g. the file) for the first problem found."""
    context = Context(default_registries() if registries is None else registries)
    try:
        schema.check(config, [], context)
    except PlscError as error:
        if source is None:
            raise
        raise PlscError(f"{source}: {error}") from None


def fill_defaults(config, registries=None, schema=SCHEMA):
    """The validated `config` as a Config with every absent key that has a default filled in."""
    context = Context(default_registries() if registries is None else registries)
    return Config(schema.fill(Config(config), context))
