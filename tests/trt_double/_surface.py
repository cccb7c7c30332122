"""Hold a fake module to a recorded TensorRT API surface (``tests/trt_api/<version>.json``).

``build_module`` makes one ``tensorrt`` module per version: every recorded class exists, holding exactly the
recorded methods, properties and enum members (anything else raises ``AttributeError``, as the real pybind11
module does), and every call is bound against the recorded pybind11 signatures (argument count, keyword names,
enum argument types) before the behaviour class of the double runs.
"""
from __future__ import annotations

import functools
import json
import re
import types
from pathlib import Path
from typing import Any, Callable

SURFACES = Path(__file__).resolve().parents[1] / "trt_api"
VERSIONS = ("8.5.2", "8.6.1", "10.3.0", "10.13.3", "10.16.1", "11.4.0")


def load_surface(version: str) -> dict:
    return json.loads((SURFACES / f"{version}.json").read_text())


# ---- signatures ----

def _split_top(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "([<{":
            depth += 1
        elif ch in ")]>}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def parse_signature(sig: str) -> list[tuple[str, str, bool]]:
    """``name(a: T, b: U = 1) -> R`` -> [(name, type, has_default)], ``self``/``this`` removed."""
    inner = sig[sig.index("(") + 1: sig.rindex(") ->") if ") ->" in sig else sig.rindex(")")]
    params = []
    for part in _split_top(inner):
        name, _, rest = part.partition(":")
        ann, has_default = rest, "=" in part
        if "=" in rest:
            ann = rest.split("=", 1)[0]
        elif "=" in name:
            name = name.split("=", 1)[0]
        name = name.strip()
        if name in ("self", "this"):
            continue
        params.append((name, ann.strip(), has_default))
    return params


class SignatureError(TypeError):
    pass


def bind(qualname: str, sigs: list[str], args: tuple, kwargs: dict, enums: dict[str, type]) -> None:
    """Raise TypeError (like pybind11's "incompatible function arguments") unless one overload accepts the call."""
    if not sigs:
        return
    for sig in sigs:
        params = parse_signature(sig)
        if len(args) > len(params):
            continue
        names = [p[0] for p in params]
        filled = dict(zip(names, args))
        if any(k not in names or k in filled for k in kwargs):
            continue
        filled.update(kwargs)
        if any(name not in filled and not has_default for name, _, has_default in params):
            continue
        if all(_type_ok(filled[name], ann, enums) for name, ann, _ in params if name in filled):
            return
    raise SignatureError(
        f"{qualname}(): incompatible function arguments. The following argument types are supported:\n    "
        + "\n    ".join(sigs) + f"\nInvoked with: args={args!r}, kwargs={kwargs!r}")


def _type_ok(value: Any, ann: str, enums: dict[str, type]) -> bool:
    if ann.startswith("tensorrt."):
        enum_cls = enums.get(ann[len("tensorrt."):])
        if enum_cls is not None:
            return isinstance(value, enum_cls)
    if ann in ("int", "typing.SupportsInt"):
        return isinstance(value, int) and not isinstance(value, bool) or hasattr(value, "__index__")
    if ann == "str":
        return isinstance(value, str)
    return True


# ---- enums ----

class EnumBase:
    """A pybind11 enum member: ``.name``, ``.value``, ``int()``; compares by identity within its class."""

    __slots__ = ("_name", "_value")

    def __init__(self, name: str, value: int) -> None:
        self._name = name
        self._value = value

    @property
    def name(self) -> str:
        return self._name

    @property
    def value(self) -> int:
        return self._value

    def __int__(self) -> int:
        return self._value

    def __index__(self) -> int:
        return self._value

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._value))

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._value == self._value  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self._name}: {self._value}>"


def _make_enum(name: str, entry: dict) -> type:
    cls = type(name, (EnumBase,), {"__slots__": (), "__module__": "tensorrt"})
    members = {}
    for member, value in sorted(entry["enum_members"].items(), key=lambda kv: kv[1]):
        inst = cls(member, value)
        setattr(cls, member, inst)
        members[member] = inst
    cls.__members__ = members  # type: ignore[attr-defined]
    for prop in entry["properties"]:
        if not hasattr(cls, prop):
            if prop == "itemsize":  # DataType.itemsize (10.x+, set by the real __init__.py)
                sizes = {"FLOAT": 4, "HALF": 2, "BF16": 2, "INT8": 1, "INT32": 4, "INT64": 8, "BOOL": 1, "UINT8": 1,
                         "FP8": 1, "INT4": 0.5, "FP4": 0.5}
                setattr(cls, prop, property(lambda self: sizes.get(self.name)))
            else:
                setattr(cls, prop, property(_not_simulated(f"{name}.{prop}")))
    return cls


# ---- classes ----

def _not_simulated(qualname: str) -> Callable:
    def stub(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{qualname} exists in this TensorRT version but the test double does not "
                                  f"simulate it; extend tests/trt_double")
    return stub


def _checked(qualname: str, sigs: list[str], impl: Callable, enums: dict[str, type], *, static: bool = False):
    @functools.wraps(impl)
    def method(*args: Any, **kwargs: Any) -> Any:
        bind(qualname, sigs, args if static else args[1:], kwargs, enums)
        return impl(*args, **kwargs)
    return method


def _impl_lookup(impl: type | None, name: str) -> Any:
    if impl is None:
        return None
    for klass in impl.__mro__:
        if name in klass.__dict__:
            return klass.__dict__[name]
    return None


def _make_class(qualname: str, entry: dict, impl: type | None, enums: dict[str, type], surface: dict) -> type:
    short = qualname.rsplit(".", 1)[-1]
    ns: dict[str, Any] = {"__module__": "tensorrt", "__qualname__": qualname, "_d_surface": entry}
    for name, sigs in entry["methods"].items():
        if name == "_pybind11_conduit_v1_":
            continue
        found = _impl_lookup(impl, name)
        if name == "__init__":
            found = found if found is not None else _not_simulated(f"{qualname}()")
            if not sigs:  # pybind11 "No constructor defined!"
                def no_ctor(self: Any, *a: Any, **k: Any) -> None:
                    raise TypeError(f"tensorrt.{qualname}: No constructor defined!")
                ns[name] = no_ctor
                continue
        ns[name] = _checked(f"{qualname}.{name}", sigs,
                            found if found is not None else _not_simulated(f"{qualname}.{name}"), enums)
    for name, sigs in entry["static_methods"].items():
        found = _impl_lookup(impl, name)
        func = found.__func__ if isinstance(found, staticmethod) else _not_simulated(f"{qualname}.{name}")
        ns[name] = staticmethod(_checked(f"{qualname}.{name}", sigs, func, enums, static=True))
    for name, prop in entry["properties"].items():
        found = _impl_lookup(impl, name)
        if not isinstance(found, property):
            found = _stored_property(name)
        if not prop["writable"]:
            found = property(found.fget, None, None, found.__doc__)
        elif found.fset is None:
            found = property(found.fget, _not_simulated(f"setting {qualname}.{name}"), None, found.__doc__)
        ns[name] = found
    # private helpers of the double (``_d_*``) travel along
    for klass in (impl.__mro__ if impl else ()):  # most derived first
        for name, value in klass.__dict__.items():
            if name.startswith("_d_") and name not in ns:
                ns[name] = value
    ns["__setattr__"] = _guarded_setattr
    base = next((b for b in (bytes, tuple) if impl is not None and issubclass(impl, b)), object)
    return type(short, (base,), ns)


def _stored_property(name: str) -> property:
    def fget(self: Any) -> Any:
        return self.__dict__.get("_d_props", {}).get(name)

    def fset(self: Any, value: Any) -> None:
        self.__dict__.setdefault("_d_props", {})[name] = value
    return property(fget, fset)


def _guarded_setattr(self: Any, name: str, value: Any) -> None:
    """pybind11 objects take no new attributes; Python subclasses (calibrators, loggers) may."""
    cls = type(self)
    generated = next(k for k in cls.__mro__ if "_d_surface" in k.__dict__)
    if name.startswith("_d_") or cls is not generated and not _defined_in_surface(generated, name):
        object.__setattr__(self, name, value)
        return
    attr = getattr(generated, name, None)
    if isinstance(attr, property):
        if attr.fset is None:
            raise AttributeError(f"can't set attribute '{name}' of tensorrt.{generated.__qualname__}")
        attr.fset(self, value)
        return
    raise AttributeError(f"'tensorrt.{generated.__qualname__}' object has no attribute '{name}'")


def _defined_in_surface(generated: type, name: str) -> bool:
    return name in generated.__dict__


def build_module(version: str, impls: dict[str, type], extra: Callable[[types.ModuleType], None]) -> types.ModuleType:
    """The fake ``tensorrt`` module of ``version``; ``impls`` maps class names to behaviour classes."""
    surface = load_surface(version)
    mod = types.ModuleType("tensorrt", f"test double of TensorRT {surface['version']}")
    enums: dict[str, type] = {}
    classes = surface["classes"]
    shared: dict[tuple, type] = {}
    for qualname, entry in sorted(classes.items()):
        if "enum_members" in entry:
            # the real module re-exports one class under two names (Logger.Severity is ILogger.Severity)
            key = (qualname.rsplit(".", 1)[-1], tuple(sorted(entry["enum_members"].items())))
            if key not in shared:
                shared[key] = _make_enum(key[0], entry)
            enums[qualname] = shared[key]
    built: dict[str, type] = dict(enums)
    for qualname, entry in sorted(classes.items(), key=lambda kv: kv[0].count(".")):
        if qualname in enums:
            continue
        built[qualname] = _make_class(qualname, entry, impls.get(qualname), enums, surface)
    # nested classes (ILogger.Severity) and class-level attributes (Logger.WARNING)
    for qualname, entry in classes.items():
        cls = built[qualname]
        for nested in entry["nested"]:
            type.__setattr__(cls, nested, built[f"{qualname}.{nested}"]) if qualname not in enums else None
        for attr in entry["attributes"]:
            severity = built.get(f"{qualname}.Severity")
            if severity is not None and hasattr(severity, attr):
                type.__setattr__(cls, attr, getattr(severity, attr))
    for qualname, cls in built.items():
        if "." not in qualname:
            setattr(mod, qualname, cls)
    for name, const in surface["constants"].items():
        if name in ("attr", "value"):  # loop variables left behind by the real __init__.py
            continue
        if const["type"] == "DataType":
            member = re.search(r"DataType\.(\w+)", const["repr"])
            setattr(mod, name, getattr(enums["DataType"], member.group(1)))
        elif name == "__version__":
            setattr(mod, name, const["repr"].strip("'"))
        elif const["type"] == "class":
            setattr(mod, name, built[const["repr"]])
    mod._d_enums = enums  # type: ignore[attr-defined]
    mod._d_surface = surface  # type: ignore[attr-defined]
    mod._d_functions = surface["functions"]  # type: ignore[attr-defined]
    for cls in built.values():
        if "_d_surface" in cls.__dict__:
            type.__setattr__(cls, "_d_mod", mod)
    extra(mod)
    return mod
