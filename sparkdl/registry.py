"""One small kind of registry for everything sparkdl looks up by name (layers, activations, initializers, losses,
metrics, optimizers, schedules, models, training masters): a dict of name -> class (or factory) that knows what it
holds, so that the list of choices and the error for an unknown name come from one place."""


class Registry(dict):
    """``name -> object``, plus ``aliases`` (other spellings of a name) and ``kind`` (what the names are of)."""

    def __init__(self, kind, items=(), aliases=None):
        super().__init__(items)
        self.kind, self.aliases = kind, dict(aliases or {})

    def register(self, obj=None, name=None):
        """Add ``obj`` under ``name`` (default: its ``__name__``); usable as a class decorator."""
        def add(o):
            self[name or o.__name__] = o
            return o
        return add if obj is None else add(obj)

    def choices(self):
        """The names, sorted (aliases not included)."""
        return sorted(self)

    def find(self, name):
        """The object registered under ``name`` or one of its aliases, else None."""
        try:
            return self.get(self.aliases.get(name, name))
        except TypeError:   # an unhashable name
            return None

    def lookup(self, name, argument=None):
        """The object registered under ``name`` (or an alias); else a ValueError that lists the choices and says
        what was received (``argument=name`` when the caller names its argument)."""
        found = self.find(name)
        if found is None:
            received = f"{argument}={name!r}" if argument else repr(name)
            raise ValueError(f"unknown {self.kind}; expected one of {self.choices()}. Received: {received}")
        return found


class Configurable:
    """For what a registry rebuilds from ``{"class_name": ..., "config": get_config()}``: ``from_config`` calls the
    constructor with the config, and the repr shows it."""

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"
