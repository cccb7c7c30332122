"""The fake ``pycuda.driver`` against the recorded surfaces of the real one (``tests/pycuda_api``): it offers no
name that a supported pycuda lacks, and refuses such names to the code under test."""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from trt_double import PYCUDA_VERSIONS, FakeGpu, hold_driver, load_pycuda_surface, supported_names
from trt_double._cuda import make_driver
from trt_double._pycuda_surface import names_of

ROOT = Path(__file__).resolve().parents[3]
# code compiled under this name runs as the code under test does (outside tests/)
UNDER_TEST = str(ROOT / "edgeres" / "backends" / "_surface_probe.py")


def _as_code_under_test(expr: str, **names: object) -> object:
    return eval(compile(expr, UNDER_TEST, "eval"), {}, names)  # noqa: S307 - a fixed expression of this test


@pytest.mark.parametrize("version", PYCUDA_VERSIONS)
def test_recorded_surface_has_what_the_gpu_layer_is_built_on(version: str) -> None:
    surface = load_pycuda_surface(version)
    assert surface["version"] == version and surface["module"] == "pycuda.driver"
    classes = surface["classes"]
    assert {"detach", "push"} <= set(classes["Context"]["methods"])
    assert {"pop", "get_current", "synchronize"} <= set(classes["Context"]["static_methods"])
    assert {"make_context", "retain_primary_context", "get_attribute"} <= set(classes["Device"]["methods"])
    assert classes["Stream"]["properties"]["handle"] == {"writable": False}
    assert classes["device_attribute"]["enum_members"]["INTEGRATED"] == 18  # CU_DEVICE_ATTRIBUTE_INTEGRATED
    assert classes["LogicError"]["bases"] == ["pycuda._driver.Error"]
    assert {"pagelocked_empty", "memcpy_htod_async", "mem_get_info"} <= set(surface["functions"])
    assert classes["Device"]["methods"]["make_context"] == ["make_context( (Device)self [, (int)flags=0]) -> Context"]
    assert {"cuCtxCreate_v2", "cuCtxPushCurrent_v2", "cuCtxPopCurrent_v2"} <= set(surface["source"]["stubbed_symbols"])


@pytest.mark.parametrize("version", PYCUDA_VERSIONS)
def test_no_pycuda_release_has_stream_capture_or_graphs(version: str) -> None:
    # issue 10 item 2: CUDA graphs exist only in unmerged pycuda pull requests
    names = names_of(load_pycuda_surface(version))
    assert not {"Stream.begin_capture", "Stream.end_capture", "Graph", "GraphExec"} & names
    assert not [n for n in names if "capture" in n.lower() or n.split(".")[0].startswith("Graph")]


def _samples(drv: object) -> dict[str, object]:
    drv.init()
    ctx = drv.Device(0).make_context()
    return {"Device": drv.Device(0), "Context": ctx, "Stream": drv.Stream(), "Event": drv.Event(),
            "DeviceAllocation": drv.mem_alloc(16)}


def test_the_fake_driver_module_offers_only_what_every_supported_pycuda_has() -> None:
    drv = make_driver(FakeGpu())
    extra = sorted(n for n in vars(drv) if not n.startswith("_") and n not in supported_names())
    assert not extra, f"the fake pycuda.driver offers {extra}, which pycuda {', '.join(PYCUDA_VERSIONS)} lack"


def test_the_fake_objects_offer_the_code_under_test_only_recorded_names() -> None:
    # the double's objects carry their own state (the owning context, the queued work ...); the held driver
    # must refuse every such name to edgeres, so that code using it fails here as it would on a GPU
    drv = hold_driver(make_driver(FakeGpu()))
    samples = _samples(drv)
    for name, obj in samples.items():
        members = {m for klass in type(obj).__mro__ if klass.__module__ != "builtins" for m in vars(klass)}
        for member in sorted((members | set(vars(obj))) - {"__getattribute__"}):
            if member.startswith("_") or f"{name}.{member}" in supported_names():
                continue
            with pytest.raises(AttributeError, match="not in the recorded pycuda.driver"):
                _as_code_under_test(f"obj.{member}", obj=obj)
    for path in sorted(supported_names()):  # and every recorded name the double has stays reachable
        name, _, member = path.partition(".")
        obj = samples.get(name)
        if obj is not None and member and hasattr(obj, member):
            _as_code_under_test(f"obj.{member}", obj=obj)


def test_the_held_driver_refuses_unrecorded_names_to_the_code_under_test() -> None:
    drv = hold_driver(make_driver(FakeGpu()))
    drv.init()
    drv.Device(0).make_context()
    stream = drv.Stream()
    object.__setattr__(stream, "not_in_pycuda", 1)  # an attribute only the double would have
    assert stream.not_in_pycuda == 1, "the double and its tests may use their own state"
    with pytest.raises(AttributeError, match="not in the recorded pycuda.driver"):
        _as_code_under_test("stream.not_in_pycuda", stream=stream)
    assert _as_code_under_test("stream.synchronize", stream=stream) is not None
    with pytest.raises(AttributeError, match="not in the recorded pycuda.driver"):
        _as_code_under_test("drv.begin_capture", drv=drv)
    assert not _as_code_under_test("hasattr(drv, 'GraphExec')", drv=drv)
    assert _as_code_under_test("drv.Stream", drv=drv) is drv.Stream
    assert _as_code_under_test("drv.Context.pop", drv=drv) is drv.Context.pop
