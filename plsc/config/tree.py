"""`Config`: the loaded configuration, a dict whose keys also read as attributes."""


class Config(dict):
    """A dict with attribute access (`cfg.Global.epochs`); nested dicts, also inside lists, are Configs.

    Keys named like dict methods (`items`, `copy`, ...) are reachable with `cfg["items"]` only.
    Values are wrapped when set, so a dict appended to a list afterwards stays a plain dict.
    """

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.update(*args, **kwargs)

    def __setitem__(self, key, value):
        super().__setitem__(key, wrap(value))

    def update(self, *args, **kwargs):
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return self[key]

    def copy(self):
        """A shallow copy that is still a Config."""
        return Config(self)

    def __getattr__(self, name):
        # Only called when normal lookup fails, so dict methods keep working; a missing key must be
        # an AttributeError (not KeyError) for hasattr(), copy and pickle to behave.
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key '{name}'") from None

    def __setattr__(self, name, value):
        self[name] = value

    def __delattr__(self, name):
        try:
            del self[name]
        except KeyError:
            raise AttributeError(f"config has no key '{name}'") from None

    def to_dict(self):
        """A plain dict/list copy (for yaml.safe_dump, json, or code that type-checks for dict)."""
        return unwrap(self)


def wrap(value):
    """Turn dicts into Configs, recursing into lists; other values are returned as they are."""
    if isinstance(value, Config):
        return value
    if isinstance(value, dict):
        return Config(value)
    if isinstance(value, list):
        return [wrap(item) for item in value]
    return value


def unwrap(value):
    """The inverse of `wrap`: Configs become plain dicts, recursively (lists and tuples are copied)."""
    if isinstance(value, dict):
        return {key: unwrap(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(unwrap(item) for item in value)
    return value
