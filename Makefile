# Two commands on a fresh machine:  `make demo` (the main job, end to end, on the CPU)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EDGERES := $(VENV)/bin/edgeres
DEMO   ?= demo
# The CPU build of torch is pinned here, not in pyproject.toml (which keeps a range), so set-up never pulls a
# multi-GB CUDA build.
PIP_INSTALL := $(PY) -m pip install -q -c constraints-cpu.txt
TRITON_WHEEL := nvidia-pytriton==0.7.0

.PHONY: install test test-fast demo bench clean

$(VENV)/.installed: pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -e '.[dev]'
	@# The Triton server for `edgeres serve` and its tests (55 MB wheel, ~3 s): --no-deps, see pyproject's serve extra.
	$(PIP_INSTALL) --no-deps $(TRITON_WHEEL)
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

demo: install
	$(EDGERES) data digits $(DEMO)/digits --force
	$(EDGERES) train $(DEMO)/digits --arch resnet20 --out $(DEMO)/model.pt --force
	$(EDGERES) export $(DEMO)/model.pt --out $(DEMO)/model.onnx --force
	$(EDGERES) calibrate $(DEMO)/model.onnx --method entropy --out $(DEMO)/model.entropy.ranges.json \
		--trt-cache $(DEMO)/model.cache --trt-version 8.6 --force
	$(EDGERES) build $(DEMO)/model.onnx --precision fp32 --out $(DEMO)/fp32 --force
	$(EDGERES) build $(DEMO)/model.onnx --precision int8 --out $(DEMO)/int8 --force
	$(EDGERES) -q infer $(DEMO)/fp32/model.fp32.onnx $(DEMO)/digits/val --out $(DEMO)/fp32.results.json > /dev/null
	$(EDGERES) -q infer $(DEMO)/int8/model.int8.onnx $(DEMO)/digits/val --out $(DEMO)/int8.results.json > /dev/null
	$(EDGERES) compare $(DEMO)/fp32.results.json $(DEMO)/int8.results.json
	$(EDGERES) -q check $(DEMO)/int8/model.int8.onnx --baseline $(DEMO)/baseline.json --update-baseline \
		--data $(DEMO)/digits/val --reference $(DEMO)/model.onnx
	@# The gate against the baseline just written; exit 3 (latency too noisy to call) is reported, not fatal.
	$(EDGERES) -q check $(DEMO)/int8/model.int8.onnx --baseline $(DEMO)/baseline.json --junit $(DEMO)/check.junit.xml \
		|| [ $$? -eq 3 ]

clean:
	rm -rf $(DEMO) .pytest_cache
