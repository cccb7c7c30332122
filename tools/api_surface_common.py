"""What the two surface recorders (``trt_api_surface.py``, ``pycuda_api_surface.py``) share: which undefined symbols
a compiled extension needs stubbed, and how a recorded surface is written and summarised."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Symbols the interpreter, libc or the dynamic loader provide: never stubbed.
SYSTEM_SYMBOL = re.compile(r"^(_?Py|__gmon_start__|_ITM_|_ZGTt|dl(open|close|sym|error)$|pthread_|__pthread_)")
# Python keeps object addresses in some default-argument reprs: drop them so the output is deterministic.
ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def undefined_symbols(extension: Path) -> list[str]:
    """GLOBAL undefined, unversioned symbols of ``extension`` that no system library or Python provides."""
    out = subprocess.run(["readelf", "-W", "--dyn-syms", str(extension)], check=True, capture_output=True,
                         text=True).stdout
    symbols = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 8 or parts[6] != "UND" or parts[4] != "GLOBAL":
            continue
        name = parts[7]
        if "@" in name or SYSTEM_SYMBOL.match(name):
            continue
        symbols.add(name)
    return sorted(symbols)


def write_surface(path: Path, surface: dict, library: str) -> str:
    """Write ``surface`` as the JSON the tests read and return a one-line summary naming ``library``."""
    path.write_text(json.dumps(surface, indent=1, sort_keys=True) + "\n")
    n_members = sum(len(c["methods"]) + len(c["properties"]) + len(c.get("enum_members", {}))
                    for c in surface["classes"].values())
    return (f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {library} {surface['version']}, "
            f"{len(surface['classes'])} classes, {n_members} members")
