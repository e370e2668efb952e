"""Name -> constructor registries, so a config's `name:` picks a class without an if-chain."""
import difflib
import inspect

from plsc.errors import PlscError


class Registry:
    """A table of constructors filled by the `@REGISTRY.register()` decorator."""

    def __init__(self, kind):
        self.kind = kind
        self._entries = {}

    def register(self, name=None):
        def add(obj):
            key = name or obj.__name__
            if key in self._entries:
                raise KeyError(f"{self.kind} '{key}' is registered twice")
            self._entries[key] = obj
            return obj

        return add

    def __contains__(self, name):
        return name in self._entries

    def names(self):
        return sorted(self._entries)

    def get(self, name, where=None):
        """The constructor registered as `name`; a PlscError naming the nearest one otherwise."""
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), self.names(), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(self.names())}"
            place = f"{where}: " if where else ""
            raise PlscError(f"{place}unknown {self.kind} '{name}'{hint}")
        return self._entries[name]

    def parameters(self, name):
        """The keyword parameters the constructor accepts, with their defaults (used by config checks)."""
        signature = inspect.signature(self.get(name))
        return {
            key: param.default
            for key, param in signature.parameters.items()
            if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
        }

    def build(self, name, where=None, **kwargs):
        return self.get(name, where)(**kwargs)


MODELS = Registry("model")
HEADS = Registry("head")
LOSSES = Registry("loss")
DATASETS = Registry("dataset")
TRANSFORMS = Registry("transform op")
OPTIMIZERS = Registry("optimizer")
LR_SCHEDULERS = Registry("LR scheduler")
METRICS = Registry("metric")
TASKS = Registry("task")  # Global.task_type: what one training step optimises
