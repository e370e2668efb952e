"""Configuration: YAML + `-o` overrides + key-tree validation (PLSC-compatible key tree).

    cfg = load_config("configs/quickstart.yaml", ["Global.epochs=2"])
    cfg.Global.epochs, cfg["Model"]["name"]
"""
from plsc.config.literals import evaluate_number, normalise_yaml_quirks, parse_override_value
from plsc.config.loader import load_config, read_yaml
from plsc.config.overrides import apply_override, apply_overrides
from plsc.config.printing import format_config
from plsc.config.schema import SCHEMA
from plsc.config.tree import Config
from plsc.config.validate import default_registries, fill_defaults, import_registries, validate

__all__ = [
    "Config", "SCHEMA", "apply_override", "apply_overrides", "default_registries", "evaluate_number",
    "fill_defaults", "format_config", "import_registries", "load_config", "normalise_yaml_quirks",
    "parse_override_value", "read_yaml", "validate",
]
