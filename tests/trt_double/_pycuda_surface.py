"""Hold the fake ``pycuda.driver`` to recorded surfaces of the real one (``tests/pycuda_api/<version>.json``).

The surfaces are recorded by ``tools/pycuda_api_surface.py`` from pycuda built against a stub libcuda. edgeres
supports every recorded version, so the double may offer only names that *all* of them have
(:func:`supported_names`). :func:`hold_driver` makes the fake module and its objects refuse, with
``AttributeError``, every public name outside that set when the caller is not the double or a test — i.e. when
the code under test (``edgeres/``) reaches for something the real pycuda lacks — and ``test_pycuda_surface``
checks that the double offers nothing else.
"""
from __future__ import annotations

import functools
import json
import sys
import types
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
SURFACES = TESTS / "pycuda_api"
# the oldest pycuda edgeres supports, and the newest release
PYCUDA_VERSIONS = tuple(sorted((p.stem for p in SURFACES.glob("*.json")), key=lambda v: tuple(map(int, v.split(".")))))


@functools.lru_cache(maxsize=None)
def load_pycuda_surface(version: str) -> dict:
    return json.loads((SURFACES / f"{version}.json").read_text())


def class_members(entry: dict) -> set[str]:
    """Every member name of one recorded class: methods, static methods, properties, attributes, enum members."""
    return (set(entry["methods"]) | set(entry["static_methods"]) | set(entry["properties"]) | set(entry["attributes"])
            | set(entry.get("enum_members", {})))


def names_of(surface: dict) -> set[str]:
    """``name`` for each module-level name and ``Class.member`` for each class member of one surface."""
    names = set(surface["functions"]) | set(surface["constants"]) | set(surface["classes"])
    for cls, entry in surface["classes"].items():
        names |= {f"{cls}.{member}" for member in class_members(entry)}
    return names


@functools.lru_cache(maxsize=None)
def supported_names() -> frozenset[str]:
    """The names every recorded pycuda has: what edgeres, and so the double, may use."""
    sets = [names_of(load_pycuda_surface(v)) for v in PYCUDA_VERSIONS]
    return frozenset(set.intersection(*sets)) if sets else frozenset()


def _from_tests() -> bool:
    """Whether the code two frames up (the one doing the attribute access) lives under tests/."""
    return sys._getframe(2).f_code.co_filename.startswith(str(TESTS))


def _refuse(what: str, name: str) -> AttributeError:
    return AttributeError(f"'{what}' has no attribute '{name}' (not in the recorded pycuda.driver "
                          f"{', '.join(PYCUDA_VERSIONS)}: tests/pycuda_api)")


class _HeldDriver(types.ModuleType):
    def __getattribute__(self, name: str) -> object:
        if name.startswith("_") or name in supported_names() or _from_tests():
            return super().__getattribute__(name)
        raise _refuse("pycuda.driver", name)


def _hold_class(cls: type, name: str) -> None:
    allowed = {m.partition(".")[2] for m in supported_names() if m.startswith(name + ".")}
    inner = cls.__getattribute__

    def __getattribute__(self: object, attr: str) -> object:
        if attr.startswith("_") or attr in allowed or _from_tests():
            return inner(self, attr)
        raise _refuse(f"pycuda.driver.{name} object", attr)

    type.__setattr__(cls, "__getattribute__", __getattribute__)


def hold_driver(drv: types.ModuleType) -> types.ModuleType:
    """Make ``drv`` (the fake ``pycuda.driver``) and instances of its classes refuse unrecorded public names
    to callers outside ``tests/``; returns ``drv``."""
    for name, value in vars(drv).items():
        if isinstance(value, type) and not issubclass(value, BaseException) and name in supported_names():
            _hold_class(value, name)
    drv.__class__ = _HeldDriver
    return drv
