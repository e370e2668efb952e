"""`load_config`: YAML file -> PLSC quirks -> `-o` overrides -> validation -> defaults."""
from pathlib import Path

import yaml

from plsc.config.literals import normalise_yaml_quirks
from plsc.config.overrides import apply_overrides
from plsc.config.tree import Config
from plsc.config.validate import default_registries, fill_defaults, validate
from plsc.errors import PlscError


def read_yaml(path):
    """The mapping in YAML file `path` (safe loader); PlscError naming the file on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlscError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise PlscError(f"cannot read config file {path}: {error}") from None
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise PlscError(f"{where}: invalid YAML ({problem})") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise PlscError(f"{path}: the top level must be a mapping of sections, "
                        f"got {type(tree).__name__}")
    return tree


def load_config(path, overrides=(), registries=None):
    """The validated Config of YAML file `path` with `overrides` ('Key.sub=value') applied.

    The YAML quirks are normalised before the overrides, whose values are typed by their own rules.
    `registries` (name -> Registry, as in the schema) defaults to plsc's, filled on first use.
    """
    config = Config(normalise_yaml_quirks(read_yaml(path)))
    apply_overrides(config, overrides)
    registries = default_registries() if registries is None else registries
    validate(config, source=path, registries=registries)
    return fill_defaults(config, registries=registries)
