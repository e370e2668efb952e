"""Schema node types: each checks one part of the config tree and fills that part's defaults.

A schema is a tree of these nodes (see `plsc.config.schema`); `check(value, path, context)` raises a
one-line PlscError for the first problem, `fill(value, context)` returns the value with defaults added.
`path` is the list of keys/indices leading to the value; `context.registries` maps the schema's
registry names ('MODELS', ...) to `plsc.registry.Registry` objects, so tests can inject their own.
"""
import copy
import difflib
import inspect

from plsc.config.literals import evaluate_number
from plsc.errors import PlscError


class _Marker:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


REQUIRED = _Marker("REQUIRED")  # the key must be present
NO_DEFAULT = _Marker("NO_DEFAULT")  # the key may be absent and stays absent


class Context:
    """What checking needs besides the schema: the registries that `name` keys are looked up in."""

    def __init__(self, registries):
        self.registries = registries


def dotted(path):
    """'Loss.Train.0.MarginLoss' from ['Loss', 'Train', 0, 'MarginLoss']."""
    return ".".join(str(part) for part in path)


def nearest(word, candidates):
    """The candidate most similar to `word` (difflib), or None when there are no candidates."""
    matches = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=0.0)
    return matches[0] if matches else None


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_arithmetic(value):
    if not isinstance(value, str):
        return False
    try:
        evaluate_number(value)
    except PlscError:
        return False
    return True


# kind name -> (test, phrase for error messages)
KINDS = {
    "bool": (lambda value: isinstance(value, bool), "a bool (True/False)"),
    "int": (lambda value: isinstance(value, int) and not isinstance(value, bool), "an int"),
    "float": (_is_number, "a float"),
    # PLSC writes `scale: 1.0/255.0`; the text is kept and the consumer calls `evaluate_number`.
    "arithmetic": (_is_arithmetic, "arithmetic text such as 1.0/255.0"),
    "str": (lambda value: isinstance(value, str), "a string"),
    "none": (lambda value: value is None, "null"),
    "list": (lambda value: isinstance(value, (list, tuple)), "a list"),
    "mapping": (lambda value: isinstance(value, dict), "a mapping"),
    "any": (lambda value: True, "any value"),
}

# A constructor parameter's default type -> the kinds its config value may take.
KINDS_BY_DEFAULT_TYPE = (
    (bool, ("bool",)),
    (int, ("int",)),
    (float, ("float", "arithmetic")),
    (str, ("str",)),
    ((list, tuple), ("list",)),
    (dict, ("mapping",)),
)


class Range:
    """An interval for numeric values, e.g. Range(0, 1, low_open=True) is (0, 1]."""

    def __init__(self, low=None, high=None, low_open=False):
        self.low, self.high, self.low_open = low, high, low_open

    def __contains__(self, number):
        above = self.low is None or (number > self.low if self.low_open else number >= self.low)
        return above and (self.high is None or number <= self.high)

    def __str__(self):
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        return f"in {'(' if self.low_open else '['}{self.low}, {self.high}]"


class Node:
    """Behaviour shared by every node: absent keys are fine unless required; no default."""

    default = NO_DEFAULT

    @property
    def required(self):
        return self.default is REQUIRED

    def check_missing(self, path, context):
        if self.required:
            raise PlscError(f"missing required key {dotted(path)}")

    def default_for(self, context):
        """The value an absent key gets, or NO_DEFAULT to leave it absent."""
        if isinstance(self.default, _Marker):
            return NO_DEFAULT
        return copy.deepcopy(self.default)

    def fill(self, value, context):
        return value


class Value(Node):
    """A leaf value of the given kinds, with an optional default, set of choices and numeric range."""

    def __init__(self, kinds, default=NO_DEFAULT, choices=(), within=None):
        self.kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
        unknown = [kind for kind in self.kinds if kind not in KINDS]
        if unknown:
            raise ValueError(f"unknown value kinds {unknown}")
        self.default, self.choices, self.within = default, tuple(choices), within

    def check(self, value, path, context):
        if not any(KINDS[kind][0](value) for kind in self.kinds):
            wanted = " or ".join(KINDS[kind][1] for kind in self.kinds)
            raise PlscError(f"{dotted(path)} must be {wanted}, got {value!r}")
        if self.choices and value not in self.choices:
            options = ", ".join(repr(choice) for choice in self.choices)
            raise PlscError(f"{dotted(path)} must be one of {options}, got {value!r} "
                            f"(did you mean {nearest(value, self.choices)!r}?)")
        if self.within is not None and _is_number(value) and value not in self.within:
            raise PlscError(f"{dotted(path)} must be {self.within}, got {value!r}")


class ListOf(Node):
    """A list (or tuple) whose items all follow `item`; null is allowed when there is no default."""

    def __init__(self, item, default=NO_DEFAULT):
        self.item, self.default = item, default

    def check(self, value, path, context):
        if value is None and self.default is NO_DEFAULT:
            return
        if not isinstance(value, (list, tuple)):
            raise PlscError(f"{dotted(path)} must be a list, got {value!r}")
        for index, item in enumerate(value):
            self.item.check(item, [*path, index], context)

    def fill(self, value, context):
        if value is None:
            return None
        return type(value)(self.item.fill(item, context) for item in value)


class OneOrList(Node):
    """`item`, or a list of `item`s (e.g. several verification sets in `DataLoader.Eval.dataset`)."""

    def __init__(self, item):
        self.item = item
        self.default = item.default

    def check_missing(self, path, context):
        self.item.check_missing(path, context)

    def default_for(self, context):
        return self.item.default_for(context)

    def check(self, value, path, context):
        if isinstance(value, (list, tuple)):
            if not value:
                raise PlscError(f"{dotted(path)} is an empty list")
            for index, item in enumerate(value):
                self.item.check(item, [*path, index], context)
        else:
            self.item.check(value, path, context)

    def fill(self, value, context):
        if isinstance(value, (list, tuple)):
            return type(value)(self.item.fill(item, context) for item in value)
        return self.item.fill(value, context)


class FreeMapping(Node):
    """A mapping with free keys (each starting with `key_prefix`) whose values all follow `item`."""

    def __init__(self, item, key_prefix="", default=NO_DEFAULT):
        self.item, self.key_prefix, self.default = item, key_prefix, default

    def check(self, value, path, context):
        if value is None:
            return
        if not isinstance(value, dict):
            raise PlscError(f"{dotted(path)} must be a mapping, got {value!r}")
        for key, item in value.items():
            if not (isinstance(key, str) and key.startswith(self.key_prefix)):
                raise PlscError(f"key {dotted([*path, key])} must start with '{self.key_prefix}'")
            self.item.check(item, [*path, key], context)

    def fill(self, value, context):
        return {} if value is None else value


class Section(Node):
    """A mapping with a fixed set of keys, each with its own node.

    `create`: an absent (or null) section is made with its defaults; otherwise absent/null means off.
    `aliases` maps accepted spellings to the canonical key (renamed on fill); `reserved` maps keys
    the config may not set to the reason why.
    """

    def __init__(self, children, required=False, create=True, aliases=None, reserved=None):
        self.children = dict(children)
        self.default = REQUIRED if required else NO_DEFAULT
        self.create = create
        self.aliases = dict(aliases or {})
        self.reserved = dict(reserved or {})

    def children_for(self, value, path, context):
        """The nodes of this section's keys (a registry-backed section depends on its `name`)."""
        return self.children

    def check(self, value, path, context):
        if value is None:
            if self.required:
                raise PlscError(f"missing required key {dotted(path)} (it is null)")
            if not self.create:
                return
            value = {}
        if not isinstance(value, dict):
            raise PlscError(f"{dotted(path)} must be a mapping, got {value!r}")
        children = self.children_for(value, path, context)
        seen = {}
        for key, item in value.items():
            if key in self.reserved:
                raise PlscError(f"{dotted([*path, key])} is {self.reserved[key]}")
            canonical = self.aliases.get(key, key)
            if canonical in seen:
                raise PlscError(f"{dotted([*path, seen[canonical]])} and {dotted([*path, key])} "
                                f"are the same key; set only one")
            seen[canonical] = key
            if canonical not in children:
                raise PlscError(self._unknown_key_message(key, path, children))
            children[canonical].check(item, [*path, key], context)
        for key, child in children.items():
            if key not in seen:
                child.check_missing([*path, key], context)

    @staticmethod
    def _unknown_key_message(key, path, children):
        if not children:
            return f"unknown key {dotted([*path, key])} ({dotted(path)} takes no keys)"
        return (f"unknown key {dotted([*path, key])} "
                f"(did you mean {dotted([*path, nearest(key, children)])}?)")

    def check_missing(self, path, context):
        super().check_missing(path, context)
        if self.create:
            # An absent section gets its defaults, but its required keys still have to come from somewhere.
            self.check({}, path, context)

    def default_for(self, context):
        return self.fill({}, context) if self.create else NO_DEFAULT

    def fill(self, value, context):
        if value is None:
            if not self.create:
                return None
            value = {}
        for alias, canonical in self.aliases.items():
            if alias in value:
                value[canonical] = value.pop(alias)
        for key, child in self.children_for(value, [], context).items():
            if key in value:
                value[key] = child.fill(value[key], context)
            else:
                default = child.default_for(context)
                if default is not NO_DEFAULT:
                    value[key] = default
        return value


def constructor_children(registry, name, where):
    """Value nodes for the keyword parameters of the constructor registered as `name`.

    A parameter's default type gives its allowed kinds; a parameter without default is required.
    `where` is the path reported when `name` is not registered.
    """
    if not isinstance(name, str):
        raise PlscError(f"{dotted(where)} must be a {registry.kind} name (a string), got {name!r}")
    if name not in registry:
        known = registry.names()
        hint = (f"did you mean '{nearest(name, known)}'?" if known
                else f"no {registry.kind} is registered; is its package importable?")
        raise PlscError(f"unknown {registry.kind} '{name}' at {dotted(where)} ({hint})")
    return {key: _value_for_parameter(default) for key, default in registry.parameters(name).items()}


def _value_for_parameter(default):
    if default is inspect.Parameter.empty:
        return Value("any", REQUIRED)
    for python_types, kinds in KINDS_BY_DEFAULT_TYPE:
        if isinstance(default, python_types):
            return Value(kinds)
    return Value("any")  # a None (or object) default says nothing about the type


class Registered(Section):
    """A mapping whose `name` picks a constructor from a registry; its other keys are that constructor's
    keyword parameters, plus the `fixed` keys (own nodes, taking precedence over the signature).

    `supplied` parameters are passed by the trainer (e.g. `epochs`), so the config may not set them.
    """

    def __init__(self, registry, fixed=None, supplied=(), required=False):
        reserved = {key: "supplied by the trainer, not the config" for key in supplied}
        super().__init__(fixed or {}, required=required, create=False, reserved=reserved)
        self.registry = registry

    def children_for(self, value, path, context):
        if value.get("name") is None:
            raise PlscError(f"missing required key {dotted([*path, 'name'])}")
        registry = context.registries[self.registry]
        parameters = constructor_children(registry, value["name"], [*path, "name"])
        for key in (*self.reserved, *self.children):
            parameters.pop(key, None)
        return {"name": Value("str", REQUIRED), **parameters, **self.children}


class Entry(Node):
    """A one-key mapping `{Name: {kwargs}}` as in PLSC's loss, transform and metric lists.

    Name is looked up in the registry; kwargs (null means none) follow the constructor's signature
    plus the `extra` keys.
    """

    def __init__(self, registry, extra=None):
        self.registry = registry
        self.extra = dict(extra or {})

    def _kwargs_section(self, name, path, context):
        children = constructor_children(context.registries[self.registry], name, path)
        return Section({**children, **self.extra})

    def check(self, value, path, context):
        if not (isinstance(value, dict) and len(value) == 1):
            raise PlscError(f"{dotted(path)} must be a one-key mapping {{Name: {{...}}}}, got {value!r}")
        [(name, kwargs)] = value.items()
        self._kwargs_section(name, path, context).check(kwargs, [*path, name], context)

    def fill(self, value, context):
        [(name, kwargs)] = value.items()
        value[name] = self._kwargs_section(name, [], context).fill(kwargs, context)
        return value
