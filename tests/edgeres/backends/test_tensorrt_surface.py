"""The GPU layer against the real API surfaces: every ``tensorrt``/``pycuda`` attribute that
``edgeres/backends/tensorrt/`` (a package) and ``cuda.py`` reference exists in each TensorRT version
whose branch uses it (static, by ``ast``), and the test double is faithful to the recorded surfaces."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from trt_double import PYCUDA_VERSIONS, VERSIONS, FakeGpu, load_surface, make_tensorrt, supported_names
from trt_double._cuda import make_driver

ROOT = Path(__file__).resolve().parents[3]
BACKENDS = ROOT / "edgeres" / "backends"
# every module that holds TensorRT or pycuda objects (test_sources_cover_every_module_that_reaches_tensorrt)
TRT_PACKAGE = BACKENDS / "tensorrt"
SOURCES = sorted(TRT_PACKAGE.glob("*.py")) + [BACKENDS / "cuda.py"]
ALL = set(VERSIONS)
V8 = {v for v in VERSIONS if v.startswith("8.")}  # 8.5.2 (JetPack 5.1), 8.6.1
V10 = {v for v in VERSIONS if v.startswith("10.")}  # 10.3.0 (JetPack 6.1/6.2), 10.13.3
PRE_11 = V8 | V10
FROM_10 = V10 | {"11.4.0"}
FROM_86 = ALL - {"8.5.2"}

# Names the code uses only on some versions (the branch is chosen in Features.detect); everything else is used
# on every version and must exist in every recorded surface (tests/trt_api: each TensorRT of the README's JetPack
# table, and the newest desktop releases).
BRANCH_ONLY = {
    "NetworkDefinitionCreationFlag.EXPLICIT_BATCH": V8,  # required on 8.x
    "NetworkDefinitionCreationFlag.STRONGLY_TYPED": V10,  # Q/DQ on 10.x
    "BuilderFlag.FP16": PRE_11,  # weakly typed networks only
    "BuilderFlag.OBEY_PRECISION_CONSTRAINTS": PRE_11,  # layers an accuracy budget keeps in float (weakly typed)
    "ILayer.precision": PRE_11,
    "BuilderFlag.INT8": PRE_11,
    "IInt8EntropyCalibrator2": PRE_11,  # implicit INT8
    "IInt8MinMaxCalibrator": PRE_11,
    "IBuilderConfig.set_calibration_profile": PRE_11,  # on-device calibration (implicit INT8)
    "IBuilderConfig.int8_calibrator": PRE_11,
    "IInt8EntropyCalibrator2.__init__": PRE_11,
    "IInt8EntropyCalibrator2.get_batch_size": PRE_11,
    "IInt8EntropyCalibrator2.get_batch": PRE_11,
    "IInt8EntropyCalibrator2.read_calibration_cache": PRE_11,
    "IInt8EntropyCalibrator2.write_calibration_cache": PRE_11,
    "IProgressMonitor": FROM_10,  # build progress
    "IBuilderConfig.progress_monitor": FROM_10,
    "IProgressMonitor.__init__": FROM_10,
    "IProgressMonitor.phase_start": FROM_10,
    "IProgressMonitor.step_complete": FROM_10,
    "IProgressMonitor.phase_finish": FROM_10,
    "ParserError.node_name": FROM_10,  # 8.x: node index only
    "ParserError.node_operator": FROM_10,
    # arrived in 8.6 (python/src/infer/pyCore.cpp), absent on 8.5.2 (JetPack 5.1): --opt-level (Features.
    # optimization_level) and --version-compatible (hasattr BuilderFlag.VERSION_COMPATIBLE) refuse to run there
    "IBuilderConfig.builder_optimization_level": FROM_86,
    "BuilderFlag.VERSION_COMPATIBLE": FROM_86,
    "Runtime.engine_host_code_allowed": FROM_86,  # only for version-compatible engines
    "IBuilderConfig.set_calibration_profile": PRE_11,  # implicit INT8 on the device
}

# local names / attributes in the source -> the TensorRT class of the object they hold
TRT_OBJECTS = {
    "builder": "Builder", "config": "IBuilderConfig", "network": "INetworkDefinition", "parser": "OnnxParser",
    "opt_profile": "IOptimizationProfile", "tensor": "ITensor", "err": "ParserError", "runtime": "Runtime",
    "engine": "ICudaEngine", "cache": "ITimingCache", "serialized": "IHostMemory", "sev": "ILogger.Severity",
    "flags": "NetworkDefinitionCreationFlag",
    "self._engine": "ICudaEngine", "self._context": "IExecutionContext", "self._runtime": "Runtime",
    "net.network": "INetworkDefinition", "net.parser": "OnnxParser", "trt_layer": "ILayer",
}
TRT_MODULE = {"trt", "self._trt"}
CUDA_MODULE = {"cuda", "self._cuda", "self.cuda", "ctx.cuda"}
# per source file: local names / attributes holding pycuda objects
CUDA_OBJECTS = {
    "cuda.py": {"dev": "Device", "self._ctx": "Context", "self.device": "DeviceAllocation", "a": "Event",
                "b": "Event", "c": "Event", "start": "Event"},
    "runner.py": {"self._stream": "Stream"},  # the other modules of edgeres/backends/tensorrt/ hold none by name
}


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    if isinstance(node, ast.Call):  # X(...).y is a member of X (a constructor or factory call)
        return _dotted(node.func)
    return None


class _Collector(ast.NodeVisitor):
    """Every attribute path rooted at the tensorrt / pycuda module or an object of known type."""

    def __init__(self) -> None:
        self.cuda_objects: dict[str, str] = {}
        self.trt: set[str] = set()
        self.trt_probes: set[str] = set()
        self.cuda: set[str] = set()

    def visit_Call(self, node: ast.Call) -> None:
        func = _dotted(node.func)
        if func in ("hasattr", "getattr") and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
            target = self._resolve_trt(_dotted(node.args[0]) or "")
            if target is not None:
                self.trt_probes.add(f"{target}.{node.args[1].value}" if target else node.args[1].value)
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for base in node.bases:  # Python subclasses of TensorRT classes: overridden methods must exist
            name = _dotted(base) or ""
            cls = self._resolve_trt(name)
            if cls:
                self.trt.add(cls)
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and not item.name.startswith("__"):
                        self.trt.add(f"{cls}.{item.name}")
            elif name == "base":  # CacheCalibrator(base): base is IInt8MinMaxCalibrator or IInt8EntropyCalibrator2
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and not item.name.startswith("__"):
                        self.trt.add(f"IInt8EntropyCalibrator2.{item.name}")
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        path = _dotted(node)
        if path is not None and not isinstance(getattr(node, "parent", None), ast.Attribute):
            self._record(path)
        for child in ast.iter_child_nodes(node):
            child.parent = node  # type: ignore[attr-defined]
        self.generic_visit(node)

    def _resolve_trt(self, path: str) -> str | None:
        """'trt.X.Y' -> 'X.Y'; 'config.x' -> 'IBuilderConfig.x'; '' for the module itself; None if not TensorRT."""
        if path in TRT_MODULE:
            return ""
        for root in sorted(TRT_MODULE, key=len, reverse=True):
            if path.startswith(root + "."):
                return path[len(root) + 1:]
        for root, cls in sorted(TRT_OBJECTS.items(), key=lambda kv: -len(kv[0])):
            if path == root:
                return cls
            if path.startswith(root + "."):
                return f"{cls}.{path[len(root) + 1:]}"
        return None

    def _record(self, path: str) -> None:
        trt = self._resolve_trt(path)
        if trt:
            self.trt.add(trt)
            return
        for root in sorted(CUDA_MODULE, key=len, reverse=True):
            if path.startswith(root + "."):
                self.cuda.add(path[len(root) + 1:])
                return
        for root, cls in self.cuda_objects.items():
            if path.startswith(root + "."):
                self.cuda.add(f"{cls}.{path[len(root) + 1:]}")
                return


@pytest.fixture(scope="module")
def used() -> _Collector:
    collector = _Collector()
    for source in SOURCES:
        collector.cuda_objects = CUDA_OBJECTS.get(source.name, {})
        collector.visit(ast.parse(source.read_text()))
    return collector


def _exists(surface: dict, path: str) -> bool:
    parts = path.split(".")
    classes = surface["classes"]
    top = parts[0]
    if len(parts) == 1:
        return top in classes or top in surface["functions"] or top in surface["constants"]
    if top not in classes:
        return False
    qual, rest = top, parts[1:]
    while rest:
        entry = classes[qual]
        name = rest.pop(0)
        if name in entry["nested"]:
            qual = f"{qual}.{name}"
            continue
        if rest:  # a member of a member (e.g. an enum member's .name): stop at the member
            rest = []
        members = (set(entry["methods"]) | set(entry["static_methods"]) | set(entry["properties"])
                   | set(entry["attributes"]) | set(entry.get("enum_members", {})))
        if "enum_members" in entry:
            members.add("__members__")
        return name in members
    return True


@pytest.mark.parametrize("version", VERSIONS)
def test_every_tensorrt_attribute_exists_where_its_branch_runs(used: _Collector, version: str) -> None:
    surface = load_surface(version)
    missing = []
    for path in sorted(used.trt):
        versions = BRANCH_ONLY.get(path, ALL)
        if version in versions and not _exists(surface, path):
            missing.append(path)
    assert not missing, f"TensorRT {version} lacks {missing}: guard them in Features or fix the name"


def test_collector_sees_the_gpu_layer(used: _Collector) -> None:
    # the static check is only as good as what it sees: spot-check names from every part of the flow
    expected = {"Builder", "OnnxParser", "Runtime", "IBuilderConfig.set_memory_pool_limit",
                "Builder.build_serialized_network", "Runtime.deserialize_cuda_engine", "ICudaEngine.num_io_tensors",
                "ICudaEngine.get_tensor_profile_shape", "IExecutionContext.execute_async_v3",
                "IExecutionContext.set_input_shape", "IExecutionContext.set_tensor_address", "ParserError.desc",
                "BuilderFlag.FP16", "IBuilderConfig.int8_calibrator", "IProgressMonitor.step_complete",
                "ILogger.Severity", "MemoryPoolType.WORKSPACE", "IInt8EntropyCalibrator2.read_calibration_cache"}
    assert expected <= used.trt, expected - used.trt
    assert {"Event.time_till", "Context.pop", "Device.retain_primary_context", "pagelocked_empty", "memcpy_htod_async",
            "Stream.handle", "Stream.synchronize", "Context.detach"} <= used.cuda


def test_branch_table_is_current(used: _Collector) -> None:
    referenced = used.trt | used.trt_probes
    stale = sorted(set(BRANCH_ONLY) - referenced)
    assert not stale, f"BRANCH_ONLY lists names the code no longer uses: {stale}"
    for path, versions in BRANCH_ONLY.items():
        for version in versions:
            assert _exists(load_surface(version), path), f"{path} is missing from {version}, its own branch"


def test_feature_probes_name_real_attributes(used: _Collector) -> None:
    # a hasattr/getattr probe with a typo would silently pick the wrong branch everywhere
    for path in sorted(used.trt_probes):
        assert any(_exists(load_surface(v), path) for v in VERSIONS), f"probe {path!r} exists in no version"


def test_pycuda_attributes_are_documented_and_in_the_double(used: _Collector) -> None:
    drv = make_driver(FakeGpu())
    assert used.cuda, "the collector found no pycuda use"
    # the real pycuda.driver (tests/pycuda_api, recorded by tools/pycuda_api_surface.py): a name must exist in
    # every supported release
    unknown = sorted(p for p in used.cuda if p not in supported_names())
    assert not unknown, f"not in the recorded pycuda.driver of every release {PYCUDA_VERSIONS}: {unknown}"
    for path in used.cuda:
        top, _, member = path.partition(".")
        assert hasattr(drv, top), path
        if member and top not in ("device_attribute",):
            assert hasattr(getattr(drv, top), member) or member == "handle", path


def test_only_the_gpu_layer_imports_tensorrt_and_pycuda() -> None:
    offenders = []
    for path in (ROOT / "edgeres").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                root = name.split(".")[0]
                if (root == "tensorrt" and path != TRT_PACKAGE / "_lib.py"
                        or root == "pycuda" and path != BACKENDS / "cuda.py"):
                    offenders.append(f"{path.relative_to(ROOT)} imports {name}")
                if name == "pycuda.autoinit":
                    offenders.append(f"{path.relative_to(ROOT)} imports pycuda.autoinit")
    assert not offenders, offenders


def _reaches_tensorrt(tree: ast.AST) -> bool:
    """Whether a module gets hold of the ``tensorrt`` module: imports it, or takes it from ``_trt()``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "tensorrt" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tensorrt":
            return True
        if isinstance(node, ast.ImportFrom) and any(a.name == "_trt" for a in node.names):
            return True
        if isinstance(node, ast.Call) and (_dotted(node.func) or "").split(".")[-1] == "_trt":
            return True
    return False


def test_sources_cover_every_module_that_reaches_tensorrt() -> None:
    # the attribute checks above see only SOURCES: a module that uses TensorRT outside them would go unchecked
    reaching = {path for path in (ROOT / "edgeres").rglob("*.py") if _reaches_tensorrt(ast.parse(path.read_text()))}
    assert {TRT_PACKAGE / "_lib.py", TRT_PACKAGE / "builder.py", TRT_PACKAGE / "runner.py"} <= reaching
    unchecked = sorted(str(path.relative_to(ROOT)) for path in reaching - set(SOURCES))
    assert not unchecked, f"{unchecked} use TensorRT but the static surface check does not read them: add to SOURCES"


# ---- the double is faithful to the surfaces ----


@pytest.mark.parametrize("version", VERSIONS)
def test_double_has_exactly_the_recorded_classes_and_members(version: str) -> None:
    surface = load_surface(version)
    trt = make_tensorrt(version, FakeGpu())
    public = {n for n in vars(trt) if not n.startswith("_")}
    assert {n for n in surface["classes"] if "." not in n} <= public
    extra = public - set(surface["classes"]) - set(surface["functions"]) - set(surface["constants"])
    assert not extra, f"the double has names TensorRT {version} lacks: {extra}"
    for qual, entry in surface["classes"].items():
        cls = trt
        for part in qual.split("."):
            cls = getattr(cls, part)
        for member in list(entry["methods"]) + list(entry["properties"]) + list(entry.get("enum_members", {})):
            if member != "_pybind11_conduit_v1_":
                assert hasattr(cls, member), f"{qual}.{member}"


@pytest.mark.parametrize("version", VERSIONS)
def test_double_refuses_what_the_real_version_lacks(version: str) -> None:
    trt = make_tensorrt(version, FakeGpu())
    config = trt.Builder(trt.Logger()).create_builder_config()
    with pytest.raises(AttributeError):
        trt.BuilderFlag.NOT_A_FLAG  # noqa: B018
    with pytest.raises(AttributeError):
        config.max_workspace_size_typo  # noqa: B018
    with pytest.raises(AttributeError):
        config.not_an_attribute = 1
    with pytest.raises(TypeError, match="incompatible function arguments"):
        config.set_flag(0)  # an int where the enum is required
    with pytest.raises(TypeError, match="incompatible function arguments"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE)  # missing pool_size
    if version == "11.4.0":
        for probe in (lambda: trt.BuilderFlag.FP16, lambda: trt.BuilderFlag.INT8, lambda: config.int8_calibrator,
                      lambda: trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH, lambda: trt.IInt8EntropyCalibrator2):
            with pytest.raises(AttributeError):
                probe()
    if version in V8:
        with pytest.raises(AttributeError):
            trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED  # noqa: B018
        with pytest.raises(AttributeError):
            trt.IProgressMonitor  # noqa: B018
    else:
        assert trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED.name == "STRONGLY_TYPED"
    with pytest.raises(TypeError, match="nullptr"):
        make_tensorrt(version, FakeGpu(devices=[])).Builder(trt.Logger())


def test_surfaces_are_what_the_tool_records() -> None:
    for version in VERSIONS:
        surface = json.loads((ROOT / "tests" / "trt_api" / f"{version}.json").read_text())
        assert surface["version"].startswith(version)
        # recorded from a real wheel, or derived (8.5.x: no wheel) from one by NVIDIA's sources at a named commit
        recorded = surface["source"].get("derived_from", surface["source"])
        assert "createInferBuilder_INTERNAL" in recorded["stubbed_symbols"]
        sigs = surface["classes"]["IExecutionContext"]["methods"]["execute_async_v3"]
        assert sigs and "stream_handle" in sigs[0]
        if "derived_from" in surface["source"]:
            git = surface["source"]["git"]
            assert len(git["commit"]) == len(git["from_commit"]) == 40 and git["tag"].lstrip("v") == version


def test_derived_8_5_lacks_what_arrived_in_8_6() -> None:
    # python/src/infer/pyCore.cpp binds these from v8.6.1 on, not at 8.5.2 (what JetPack 5.1 ships)
    old, new = make_tensorrt("8.5.2", FakeGpu()), make_tensorrt("8.6.1", FakeGpu())
    for trt in (old, new):
        config = trt.Builder(trt.Logger()).create_builder_config()
        if trt is new:
            config.builder_optimization_level = 3
            assert config.builder_optimization_level == 3
            assert trt.BuilderFlag.VERSION_COMPATIBLE.name == "VERSION_COMPATIBLE"
            continue
        with pytest.raises(AttributeError):
            config.builder_optimization_level = 3
        with pytest.raises(AttributeError):
            trt.BuilderFlag.VERSION_COMPATIBLE  # noqa: B018
        with pytest.raises(AttributeError):
            trt.HardwareCompatibilityLevel  # noqa: B018
    runtime_8_5 = load_surface("8.5.2")["classes"]["Runtime"]["properties"]
    assert "engine_host_code_allowed" not in runtime_8_5 and "DLA_core" in runtime_8_5
    # the enum values come from the 8.5.2 headers: BuilderFlag.FP16 = 0 ... ENABLE_TACTIC_HEURISTIC = 14
    flags = load_surface("8.5.2")["classes"]["BuilderFlag"]["enum_members"]
    assert flags["FP16"] == 0 and flags["INT8"] == 1 and flags["ENABLE_TACTIC_HEURISTIC"] == 14


def test_pycuda_double_enforces_context_rules() -> None:
    import threading

    import numpy as np

    gpu = FakeGpu()
    drv = make_driver(gpu)
    with pytest.raises(drv.LogicError):
        drv.Device.count()  # before init()
    drv.init()
    ctx = drv.Device(0).make_context()
    alloc = drv.mem_alloc(64)
    drv.Context.pop()
    with pytest.raises(drv.LogicError, match="explicit_context_dependent"):
        drv.mem_alloc(16)  # no context pushed on this thread
    errors = []

    def other_thread() -> None:
        try:
            drv.Stream()
        except drv.LogicError as exc:
            errors.append(exc)

    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    assert errors and "explicit_context_dependent" in str(errors[0])  # the autoinit trap
    ctx.push()
    stream = drv.Stream()
    host = drv.pagelocked_empty((16,), np.float32)
    host[:] = 7.0
    back = drv.pagelocked_empty((16,), np.float32)
    back[:] = 0.0
    drv.memcpy_htod_async(alloc, host, stream)
    drv.memcpy_dtoh_async(back, alloc, stream)
    start, end = drv.Event(), drv.Event()
    start.record(stream)
    end.record(stream)
    assert not back.any(), "async work runs only when the stream is synchronised"
    with pytest.raises(drv.RuntimeError, match="not ready"):
        start.time_till(end)
    stream.synchronize()
    assert (back == 7.0).all() and start.time_till(end) >= 0
    with pytest.raises(drv.RuntimeError, match="illegal memory access"):
        drv.memcpy_htod(int(alloc) + 32, np.zeros(16, np.float32))  # 64 bytes past a 32-byte tail
    drv.Context.pop()
    ctx.detach()
    assert not gpu.memory and not gpu.stack()
