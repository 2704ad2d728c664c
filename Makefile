# make install | test | demo | bench  (see README.md)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# CPU build of torch where there is no CUDA GPU: a bare `torch` would pull the CUDA wheels.
TORCH_VERSION ?= 2.13.0
TORCH_PIP_ARGS ?=
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)

.PHONY: install test demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
ifeq ($(HAS_GPU),1)
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)" $(TORCH_PIP_ARGS)
else
	$(PY) -m pip install -q --retries 0 "torch==$(TORCH_VERSION)+cpu" \
	  --extra-index-url https://download.pytorch.org/whl/cpu $(TORCH_PIP_ARGS)
endif
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# the SLURM tests run against slurm/testcluster when it can start here (root, Debian
# packages reachable); elsewhere they are skipped with the reason, except under CI=true
test: install
	@cluster=$$(slurm/testcluster/start.sh --if-possible) || exit 1; eval "$$cluster"; \
	  $(PY) -m pytest -q

# the flow on synthetic scenes; a second run reuses the scenes, shards and trained runs
demo: install
	$(PY) -m piunet_dist synth runs/demo/scenes --scenes 40 --test-scenes 10
	$(PY) -m piunet_dist pack --verify shards/demo 2>/dev/null \
	  || $(PY) -m piunet_dist pack runs/demo/scenes --out shards/demo --scenes-per-shard 8
	$(PY) -m piunet_dist train --config configs/demo.yaml data.band=NIR run_dir=runs/demo/nir
	$(PY) -m piunet_dist train --config configs/demo.yaml data.band=RED run_dir=runs/demo/red
	$(PY) -m piunet_dist evaluate --runs runs/demo/nir runs/demo/red --split val --out runs/demo/eval
	$(PY) -m piunet_dist report runs/demo/eval runs/demo/nir runs/demo/red --out runs/demo/report

bench: install
	$(PY) bench/core.py
	$(PY) bench/loader.py

clean:
	rm -rf $(VENV) build *.egg-info
