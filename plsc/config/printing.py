"""`format_config`: the config as indented YAML-style text for the run log."""
import json

import yaml

# Characters that would change meaning inside a YAML flow list or after 'key: '.
_YAML_SPECIAL = set(",[]{}:#&*!|>'\"%@`")


def format_config(config, indent=2):
    """The config as indented text, one key per line, that reads back (yaml + plsc quirks) as itself."""
    return "\n".join(_mapping_lines(config, 0, indent))


def _mapping_lines(mapping, depth, indent):
    pad = " " * (indent * depth)
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            yield f"{pad}{key}:"
            yield from _mapping_lines(value, depth + 1, indent)
        elif isinstance(value, list) and any(isinstance(item, dict) for item in value):
            yield f"{pad}{key}:"
            yield from _block_list_lines(value, depth, indent)
        else:
            yield f"{pad}{key}: {_flow(value)}"


def _block_list_lines(items, depth, indent):
    pad = " " * (indent * depth)
    for item in items:
        if isinstance(item, dict) and item:
            lines = list(_mapping_lines(item, depth + 1, indent))
            # "- " takes the place of one indent step, so the item's keys line up after it.
            yield f"{pad}- {lines[0].lstrip()}"
            yield from lines[1:]
        else:
            yield f"{pad}- {_flow(item)}"


def _flow(value):
    """One value on one line: scalars, flow lists `[a, b]`, tuples `(a, b)`, `{}`."""
    if value is None:
        return "null"
    if isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, tuple):
        # YAML has no tuple; PLSC's loader reads the text '(a, b)' back as a tuple.
        return "(" + ", ".join(_flow(item) for item in value) + ")"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_flow(key)}: {_flow(item)}" for key, item in value.items()) + "}"
    return _string(str(value))


def _string(text):
    """`text` bare when YAML reads it back unchanged, else double-quoted (JSON quoting is valid YAML)."""
    if text and text == text.strip() and not (_YAML_SPECIAL & set(text)):
        try:
            if yaml.safe_load(text) == text:
                return text
        except yaml.YAMLError:
            pass
    return json.dumps(text)
