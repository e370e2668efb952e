"""`-o Key.sub.0.leaf=value` overrides with PLSC's grammar, applied to a loaded config tree."""
from plsc.config.literals import parse_override_value
from plsc.errors import PlscError


def apply_override(config, override):
    """Set the value `override` ('A.b.0.c=value') names inside `config` (in place); returns `config`.

    The first '=' splits key from value; numeric parts index lists; missing mapping keys are created
    (so a misspelt key reaches the validator, which names it).
    """
    if "=" not in override:
        raise PlscError(f"override '{override}' has no '=' (expected Key.sub=value)")
    key_text, value_text = override.split("=", 1)
    parts = [part.strip() for part in key_text.split(".")]
    if not all(parts):
        raise PlscError(f"override '{override}' has an empty key part (expected Key.sub=value)")
    value = parse_override_value(value_text)
    parent = config
    for depth, part in enumerate(parts[:-1]):
        parent = _step_into(parent, part, parts[:depth], override)
    _assign(parent, parts[-1], parts[:-1], value, override)
    return config


def apply_overrides(config, overrides):
    """Apply each override in order (later ones win); returns `config`."""
    for override in overrides:
        apply_override(config, override)
    return config


def _step_into(node, part, path, override):
    """The child `part` of `node`, creating an empty mapping where a mapping key is missing or null."""
    if isinstance(node, dict):
        if node.get(part) is None:
            node[part] = {}
        return node[part]
    if isinstance(node, list):
        return node[_list_index(node, part, path, override)]
    raise PlscError(f"override '{override}': {_dotted(path)} is {node!r}, not a mapping or list")


def _assign(node, part, path, value, override):
    if isinstance(node, dict):
        node[part] = value
    elif isinstance(node, list):
        node[_list_index(node, part, path, override)] = value
    else:
        raise PlscError(f"override '{override}': {_dotted(path)} is {node!r}, not a mapping or list")


def _list_index(items, part, path, override):
    """`part` as an index into `items` (the list at `path`), or a PlscError naming the override."""
    if not (part.isascii() and part.isdigit()):
        raise PlscError(f"override '{override}': {_dotted(path)} is a list, so '{part}' must be an index")
    index = int(part)
    if index >= len(items):
        raise PlscError(f"override '{override}': index {index} is past the end of {_dotted(path)} "
                        f"({len(items)} items)")
    return index


def _dotted(path):
    return ".".join(path) if path else "the config root"
