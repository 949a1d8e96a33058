"""sparkdl.registry: one kind of name -> object lookup for layers, activations, initializers, losses, metrics,
optimizers, schedules, models and masters, with the choices and the error text derived from it."""
import pytest

from sparkdl import losses, metrics, optim
from sparkdl.dist import master, modes  # noqa: F401  (modes: imports every master, so all are registered)
from sparkdl.nn import activations, initializers, layer, model
from sparkdl.optim import schedules
from sparkdl.registry import Registry


def test_register_lookup_aliases_and_the_error_for_an_unknown_name():
    things = Registry("thing", {"b": 2}, aliases={"bee": "b"})

    @things.register
    class A:
        pass

    things.register(len, name="size")
    assert things.choices() == ["A", "b", "size"] and things.lookup("A") is A and things.lookup("bee") == 2
    assert things.find("c") is None and things.find(["unhashable"]) is None and things.lookup("size") is len
    with pytest.raises(ValueError, match=r"^unknown thing; expected one of \['A', 'b', 'size'\]. Received: 'c'$"):
        things.lookup("c")
    with pytest.raises(ValueError, match=r"Received: kind=\['x'\]$"):
        things.lookup(["x"], "kind")


def test_every_lookup_of_the_package_is_a_registry():
    for registry in (layer._REGISTRY, activations.ACTIVATIONS, initializers.INITIALIZERS, losses.LOSSES,
                     metrics.METRICS, optim.OPTIMIZERS, schedules.SCHEDULES, model.MODEL_CLASSES, master.MASTERS):
        assert isinstance(registry, Registry) and registry.choices(), registry.kind
    assert master.MASTERS.choices() == ["barrier", "jobs"]
    assert losses.get("mean_absolute_error").name == "mae"   # an alias
    assert type(metrics.get("acc")) is type(metrics.get({"class_name": "Accuracy", "config": {}})) is metrics.Accuracy
