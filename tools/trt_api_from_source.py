"""Derive a TensorRT API surface for a version with no bindings wheel on PyPI from NVIDIA's pybind11 sources.

TensorRT 8.5.x (JetPack 5.1 ships 8.5.2) has no ``tensorrt-bindings`` wheel, so ``trt_api_surface.py`` cannot
record it. NVIDIA/TensorRT's ``python/src`` holds the pybind11 code the bindings are built from, at every release
tag. This step takes a *recorded* surface (e.g. 8.6.1, from the real wheel) and the sources of both tags, and

- removes every class, enum, method, property and enum member that the target tag's sources do not bind,
- adds what the target binds and the recorded tag does not (with argument names from the ``"name"_a`` literals
  where the source has them, and no type information: such signatures are not checked by the double),
- sets every enum member's integer value from the target tag's own headers (``include/NvInfer*.h``), compiled
  and printed with ``g++``; the same is done for the recorded tag and must reproduce the recorded values, which
  checks the method before anything is written,
- diffs the ``tensorrt/__init__.py`` of the bindings wheel (module functions and constants) the same way.

Only the *difference* between the two tags' sources is applied, so what the extractor reads the same way in both
(constructors, pybind11 internals, names set by ``__init__.py``) stays as the real wheel recorded it. Where this
is approximate is said in the JSON's ``source.limits``.

Usage (from the repository root; GIT is a clone or bare mirror of github.com/NVIDIA/TensorRT)::

    python tools/trt_api_surface.py --derive 8.5.2 --from 8.6.1 --git GIT --tag 8.5.2 --from-tag v8.6.1
"""
from __future__ import annotations

import copy
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

MEMBER = re.compile(r"\.\s*(def|def_static|def_property|def_property_readonly|def_readwrite|def_readonly|"
                    r"def_property_static|def_property_readonly_static|value)\s*\(\s*\"([^\"]+)\"")
DECL = re.compile(r"py::(class_|enum_)\s*<")
ARG = re.compile(r"\"(\w+)\"_a")


@dataclass
class Bound:
    """What one tag's pybind11 sources bind: per Python qualname, its kind and members."""

    kinds: dict[str, str] = field(default_factory=dict)  # qualname -> "class" | "enum"
    members: dict[str, dict[str, tuple[str, list[str]]]] = field(default_factory=dict)  # -> name -> (kind, args)
    values: dict[str, dict[str, str]] = field(default_factory=dict)  # enum qualname -> member -> C++ expression
    files: dict[str, str] = field(default_factory=dict)  # qualname -> source file
    module: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # m.def / m.attr names


def git_show(git: Path, tag: str, path: str) -> str:
    return subprocess.run(["git", "--git-dir", str(git), "show", f"{tag}:{path}"], check=True, capture_output=True,
                          text=True).stdout


def git_files(git: Path, tag: str, under: str) -> list[str]:
    out = subprocess.run(["git", "--git-dir", str(git), "ls-tree", "-r", "--name-only", tag, under], check=True,
                         capture_output=True, text=True).stdout
    return sorted(p for p in out.splitlines() if p.endswith(".cpp"))


def commit_of(git: Path, tag: str) -> str:
    return subprocess.run(["git", "--git-dir", str(git), "rev-parse", f"{tag}^{{commit}}"], check=True,
                          capture_output=True, text=True).stdout.strip()


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def _balanced(text: str, start: int, open_: str, close: str) -> int:
    """Index just past the bracket that closes the one at ``start``."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == open_:
            depth += 1
        elif text[i] == close:
            depth -= 1
            if depth == 0:
                return i + 1
    raise ValueError(f"unbalanced {open_}{close} at {start}")


def parse_sources(sources: dict[str, str]) -> Bound:
    """Every ``py::class_``/``py::enum_`` and the ``.def*``/``.value`` names chained on it, in source order."""
    bound = Bound()
    for path, raw in sorted(sources.items()):
        text = _strip_comments(raw)
        variables: dict[str, str] = {"m": ""}  # C++ variable -> Python qualname ("" = the module)
        events = []
        for match in DECL.finditer(text):
            end = _balanced(text, match.end() - 1, "<", ">")
            cpp = text[match.end(): end - 1].split(",")[0].strip()
            rest = re.match(r"\s*(\w+)?\s*[({]\s*(\w+)\s*,\s*\"(\w+)\"", text[end:])
            if rest is None:
                continue
            events.append((match.start(), "decl", (match.group(1), cpp, rest.group(1), rest.group(2), rest.group(3))))
        for match in MEMBER.finditer(text):
            call = text.index("(", match.start())
            close = _balanced(text, call, "(", ")")
            args = ARG.findall(text[call:close])
            value = text[call + 1: close - 1].split(",")[1].strip() if match.group(1) == "value" else ""
            before = text[:match.start()].rstrip()
            owner = re.search(r"(\w+)$", before)
            events.append((match.start(), "member", (match.group(1), match.group(2), args, value,
                                                     owner.group(1) if owner else None)))
        current = None
        for _, kind, data in sorted(events, key=lambda e: e[0]):
            if kind == "decl":
                what, cpp, var, scope, name = data
                parent = variables.get(scope, scope)
                qual = f"{parent}.{name}" if parent else name
                bound.kinds[qual] = "enum" if what == "enum_" else "class"
                bound.files[qual] = path
                bound.members.setdefault(qual, {})
                if var:
                    variables[var] = qual
                current = qual
                continue
            how, name, args, value, owner = data
            target = current
            if owner is not None:  # ``var.def(...)``: a chain that starts at a variable (or the module ``m``)
                target = variables.get(owner, current)
            if target == "":
                bound.module[name] = (how, args)
            elif target is not None:
                bound.members[target][name] = (how, args)
                if how == "value":
                    bound.values.setdefault(target, {})[name] = value
    return bound


def parse_init(text: str) -> tuple[set[str], set[str]]:
    """Module-level function names and assigned names of the bindings wheel's ``tensorrt/__init__.py``."""
    functions = set(re.findall(r"^def (\w+)\(", text, flags=re.M))
    assigned = set(re.findall(r"^(\w+)\s*=", text, flags=re.M))
    return functions, assigned


def enum_values(git: Path, tag: str, bound: Bound, workdir: Path) -> dict[str, dict[str, int]]:
    """The integer value of every member of the ``nvinfer1`` enums ``bound`` names, compiled from ``include/``.

    Each ``.value("NAME", expr)`` of ``python/src/infer/*.cpp`` is printed as ``expr`` under ``using namespace
    nvinfer1``, as that source compiles it. The parsers' enums (``nvonnxparser::ErrorCode`` ...) live in headers
    that are not in ``include/`` and are left as recorded.
    """
    inc = workdir / f"include-{tag}"
    inc.mkdir(parents=True, exist_ok=True)
    for path in subprocess.run(["git", "--git-dir", str(git), "ls-tree", "--name-only", tag, "include/"],
                               check=True, capture_output=True, text=True).stdout.split():
        (inc / Path(path).name).write_text(git_show(git, tag, path))
    # the headers need only CUDA's stream/event handle types from cuda_runtime_api.h
    (inc / "cuda_runtime_api.h").write_text("#pragma once\ntypedef struct CUstream_st* cudaStream_t;\n"
                                            "typedef struct CUevent_st* cudaEvent_t;\n")
    head = ['#include "NvInfer.h"', "#include <cstdio>", "using namespace nvinfer1;", "int main() {"]
    body = [f'  std::printf("%s %s %lld\\n", "{qual}", "{name}", (long long)({expr}));'
            for qual, members in sorted(bound.values.items()) if bound.files[qual].startswith("python/src/infer/")
            for name, expr in sorted(members.items())]
    source, exe = workdir / f"values-{tag}.cpp", workdir / f"values-{tag}"
    for _ in range(5):
        source.write_text("\n".join(head + body + ["  return 0;", "}"]) + "\n")
        result = subprocess.run(["g++", "-std=c++14", "-w", "-I", str(inc), "-o", str(exe), str(source)],
                                capture_output=True, text=True)
        if result.returncode == 0:
            break
        bad = {int(n) - len(head) - 1 for n in re.findall(rf"{re.escape(source.name)}:(\d+):\d+: error",
                                                          result.stderr)}
        if not bad:
            raise SystemExit(f"g++ cannot compile the enum values of {tag}:\n{result.stderr[-2000:]}")
        body = [line for i, line in enumerate(body) if i not in bad]
    else:
        raise SystemExit(f"g++ cannot compile the enum values of {tag}:\n{result.stderr[-2000:]}")
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    values: dict[str, dict[str, int]] = {}
    for line in out.splitlines():
        qual, name, value = line.split()
        values.setdefault(qual, {})[name] = int(value)
    return values


def _kind_slot(how: str) -> str:
    if how.startswith(("def_property", "def_read")):
        return "properties"
    if how == "def_static":
        return "static_methods"
    if how == "value":
        return "enum_members"
    return "methods"


def _new_entry(kind: str) -> dict:
    entry: dict = {"attributes": {}, "bases": ["pybind11_builtins.pybind11_object"], "methods": {},
                   "nested": [], "properties": {}, "static_methods": {}}
    if kind == "enum":
        entry["enum_members"] = {}
    return entry


def derive(recorded: dict, *, git: Path, tag: str, from_tag: str, version: str) -> tuple[dict, dict]:
    """The surface of ``tag`` from ``recorded`` (the surface of ``from_tag``); returns it and the change log."""
    files = sorted(set(git_files(git, tag, "python/src")) | set(git_files(git, from_tag, "python/src")))
    old = parse_sources({f: git_show(git, tag, f) for f in git_files(git, tag, "python/src")})
    new = parse_sources({f: git_show(git, from_tag, f) for f in git_files(git, from_tag, "python/src")})
    surface = copy.deepcopy(recorded)
    classes = surface["classes"]
    log: dict = {"removed_classes": [], "added_classes": [], "removed_members": [], "added_members": [],
                 "removed_module_names": [], "added_module_names": [], "enum_values_changed": []}

    for qual in sorted(set(new.kinds) - set(old.kinds)):
        for name in [q for q in classes if q == qual or q.startswith(qual + ".")]:
            del classes[name]
            log["removed_classes"].append(name)
        parent, _, short = qual.rpartition(".")
        if parent in classes and short in classes[parent]["nested"]:
            classes[parent]["nested"].remove(short)
        for const, entry in list(surface["constants"].items()):
            if entry["type"] == "class" and entry["repr"] == qual:
                del surface["constants"][const]
    for qual in sorted(set(old.kinds) - set(new.kinds)):
        if qual not in classes:
            classes[qual] = _new_entry(old.kinds[qual])
            log["added_classes"].append(qual)
            parent, _, short = qual.rpartition(".")
            if parent in classes:
                classes[parent]["nested"] = sorted(set(classes[parent]["nested"]) | {short})

    for qual in sorted(set(old.kinds) & set(classes)):
        entry = classes[qual]
        before, after = old.members.get(qual, {}), new.members.get(qual, {})
        for name in sorted(set(after) - set(before)):
            slot = _kind_slot(after[name][0])
            if name in entry.get(slot, {}):
                del entry[slot][name]
                log["removed_members"].append(f"{qual}.{name}")
            if name in entry["attributes"]:  # Logger.WARNING-style aliases of a removed enum member
                del entry["attributes"][name]
        for name in sorted(set(before) - set(after)) + sorted(n for n in before if qual in log["added_classes"]):
            how, args = before[name]
            slot = _kind_slot(how)
            if name in entry.get(slot, {}):
                continue
            if slot == "properties":
                entry[slot][name] = {"type": "", "writable": how in ("def_property", "def_readwrite",
                                                                    "def_property_static")}
            elif slot == "enum_members":
                entry[slot][name] = None  # filled from the headers below
            else:
                entry[slot][name] = [f"{name}(self, {', '.join(args)})" if args else f"{name}(self)"] \
                    if slot == "methods" else [f"{name}({', '.join(args)})"]
            log["added_members"].append(f"{qual}.{name}")
        for name in sorted(set(before) & set(after)):
            if before[name][0] != after[name][0] and _kind_slot(before[name][0]) == "properties":
                writable = before[name][0] in ("def_property", "def_readwrite", "def_property_static")
                if name in entry["properties"] and entry["properties"][name]["writable"] != writable:
                    entry["properties"][name]["writable"] = writable
                    log["added_members"].append(f"{qual}.{name} (writable={writable})")

    for name in sorted(set(new.module) - set(old.module)):
        for table in ("functions", "constants"):
            if name in surface[table]:
                del surface[table][name]
                log["removed_module_names"].append(name)
    for name in sorted(set(old.module) - set(new.module)):
        log["added_module_names"].append(name)
        if old.module[name][0] == "def":
            surface["functions"].setdefault(name, [])

    init_path = "python/packaging/bindings_wheel/tensorrt/__init__.py"
    old_init = _init_text(git, tag)
    new_init = git_show(git, from_tag, init_path)
    (old_funcs, old_assigned), (new_funcs, new_assigned) = parse_init(old_init), parse_init(new_init)
    for name in sorted((new_funcs - old_funcs)):
        if surface["functions"].pop(name, None) is not None:
            log["removed_module_names"].append(name)
    for name in sorted(old_funcs - new_funcs):
        surface["functions"].setdefault(name, [])
        log["added_module_names"].append(name)

    with tempfile.TemporaryDirectory(prefix="trt-enums-") as tmp:
        check = enum_values(git, from_tag, new, Path(tmp))
        mismatched = [f"{q}.{n}: header {v} != recorded {recorded['classes'][q]['enum_members'][n]}"
                      for q, members in check.items() if q in recorded["classes"]
                      for n, v in members.items()
                      if n in recorded["classes"][q].get("enum_members", {})
                      and recorded["classes"][q]["enum_members"][n] != v]
        checked = sum(1 for q, members in check.items() if q in recorded["classes"] for n in members
                      if n in recorded["classes"][q].get("enum_members", {}))
        if mismatched:
            raise SystemExit(f"the {from_tag} headers do not reproduce the recorded enum values, so the values "
                             f"derived for {tag} cannot be trusted: {mismatched[:10]}")
        values = enum_values(git, tag, old, Path(tmp))
    for qual, members in values.items():
        entry = classes.get(qual)
        if entry is None or "enum_members" not in entry:
            continue
        for name, value in members.items():
            if name in entry["enum_members"] and entry["enum_members"][name] != value:
                if entry["enum_members"][name] is not None:
                    log["enum_values_changed"].append(f"{qual}.{name}: {entry['enum_members'][name]} -> {value}")
                entry["enum_members"][name] = value
    unresolved = [f"{q}.{n}" for q, e in classes.items() for n, v in e.get("enum_members", {}).items() if v is None]
    if unresolved:
        raise SystemExit(f"no value for {unresolved}: their enums are not in include/ at {tag}")

    # the DataType constants (trt.float16 ...) and the version follow the target
    for name, const in list(surface["constants"].items()):
        member = re.search(r"<DataType\.(\w+): \d+>", const["repr"])
        if const["type"] == "DataType" and member:
            value = classes["DataType"]["enum_members"].get(member.group(1))
            if value is None:
                del surface["constants"][name]
                log["removed_module_names"].append(name)
            else:
                const["repr"] = f"<DataType.{member.group(1)}: {value}>"
    surface["constants"]["__version__"] = {"repr": repr(version), "type": "str"}
    surface["version"] = version
    surface["source"] = {
        "derived_from": recorded["source"],
        "derived_from_version": recorded["version"],
        "how": (f"tools/trt_api_surface.py --derive: the recorded {recorded['version']} surface, minus what "
                f"NVIDIA/TensorRT python/src at {tag} does not bind and plus what it binds that {from_tag} does not "
                f"(py::class_/py::enum_ names, .def/.def_static/.def_property*/.value names per class, m.def); "
                f"module functions from {init_path}; enum values compiled from include/ at {tag}, the method "
                f"checked by reproducing the recorded values from include/ at {from_tag}"),
        "git": {"repository": "github.com/NVIDIA/TensorRT", "tag": tag, "commit": commit_of(git, tag),
                "from_tag": from_tag, "from_commit": commit_of(git, from_tag), "files": files},
        "changes": log,
        "enum_values_checked": f"{checked} recorded {recorded['version']} enum values reproduced from include/ at "
                               f"{from_tag}, none differing",
        "limits": ("signatures of added members carry argument names only (no types: the double does not check "
                   "them); constructor (py::init) overloads and docstring-only changes are not diffed; the "
                   "surface is that of the open-source python/src at the tag, which NVIDIA's binary bindings "
                   "for JetPack are built from"),
    }
    return surface, log


def _init_text(git: Path, tag: str) -> str:
    for path in ("python/packaging/bindings_wheel/tensorrt/__init__.py", "python/packaging/tensorrt/__init__.py"):
        try:
            return git_show(git, tag, path)
        except subprocess.CalledProcessError:
            continue
    raise SystemExit(f"no tensorrt/__init__.py under python/packaging at {tag}")
