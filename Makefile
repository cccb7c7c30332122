# Two commands on a fresh machine:  `make demo` (the main job, end to end, on the CPU)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EDGERES := $(VENV)/bin/edgeres
DEMO   ?= demo
# The CPU build of torch is pinned here, not in pyproject.toml (which keeps a range), so set-up never pulls a
# multi-GB CUDA build.
PIP_INSTALL := $(PY) -m pip install -q -c constraints-cpu.txt

.PHONY: install test test-fast demo bench clean

$(VENV)/.installed: pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -e '.[dev]'
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

clean:
	rm -rf $(DEMO) .pytest_cache
