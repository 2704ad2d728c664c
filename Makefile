# make install | test | demo | bench  (see README.md)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# PyTorch's build: TORCH_BUILD=auto keeps the build .venv has, and a new .venv takes CUDA
# where nvidia-smi finds a GPU, the CPU build elsewhere (a bare `torch` would pull the CUDA
# wheels); a login node without GPUs installs for its GPU nodes with TORCH_BUILD=cuda, a GPU
# machine for CPUs with TORCH_BUILD=cpu, either of them replacing the build .venv has.
TORCH_VERSION ?= 2.13.0
TORCH_PIP_ARGS ?=
TORCH_BUILD ?= auto
TRITON_VERSION ?= 3.6.0
ifeq ($(TORCH_BUILD),auto)
override TORCH_BUILD := $(or $(patsubst $(VENV)/.installed-%,%,$(firstword $(wildcard $(VENV)/.installed-c*))),\
  $(shell nvidia-smi -L >/dev/null 2>&1 && echo cuda || echo cpu))
endif
ifneq ($(filter-out cpu cuda,$(TORCH_BUILD)),)
$(error TORCH_BUILD=$(TORCH_BUILD): expected auto, cpu or cuda)
endif

.PHONY: install lint test test-fast demo bench bench-gpu clean

install: $(VENV)/.installed-$(TORCH_BUILD)

$(VENV)/.installed-$(TORCH_BUILD): pyproject.toml Makefile
	rm -f $(VENV)/.installed*
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
ifeq ($(TORCH_BUILD),cuda)
	# a CPU build satisfies torch==$(TORCH_VERSION) as well (+cpu is a local version): it goes first
	$(PY) -c "import sys, torch; sys.exit(torch.version.cuda is None)" 2>/dev/null \
	  || $(PY) -m pip uninstall -q -y torch
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)" $(TORCH_PIP_ARGS)
	@$(PY) -c "import sys, torch; sys.exit(torch.version.cuda is None)" || { echo "TORCH_BUILD=cuda: pip \
	  installed a CPU build of torch (an index or find-links of the pip config serves one; see TORCH_PIP_ARGS)" >&2; exit 1; }
else
	$(PY) -m pip install -q --retries 0 "torch==$(TORCH_VERSION)+cpu" \
	  --extra-index-url https://download.pytorch.org/whl/cpu $(TORCH_PIP_ARGS)
	# the CUDA build brings Triton; here it runs the attention's GPU kernels in its
	# interpreter for the tests (the version they were checked with)
	$(PY) -m pip install -q "triton==$(TRITON_VERSION)"
endif
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# ruff's checks and its formatting, as pyproject.toml configures them
lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# the SLURM tests run against slurm/testcluster when it can start here (root, Debian
# packages reachable); elsewhere they are skipped with the reason, except under CI=true
test: lint
	@cluster=$$(slurm/testcluster/start.sh --if-possible) || exit 1; eval "$$cluster"; \
	  $(PY) -m pytest -q

# the edit loop, a few minutes: everything but the tests that start processes, inject
# faults, need SLURM or run the demo (make test runs them all)
test-fast: lint
	$(PY) -m pytest -q -m "not (processes or faults or slurm or demo)"

# The flow on synthetic scenes: two members per band, each trained by one process (the
# four at once) through the launcher (SLURM when a cluster answers, local processes
# otherwise), followed in a live view; their
# ensembles evaluated (each member with the views its training showed it), the report. Run again, it reuses
# the scenes, the shards, the trained members and, while no member changed, their
# evaluation; scenes drawn again are packed again, and members trained on the earlier shards
# are refused, not reused. DEMO_SETTINGS adds settings to every member (section.key=value ...).
DEMO ?= runs/demo
DEMO_SHARDS ?= shards/demo
DEMO_SCENES ?= 40
DEMO_TEST_SCENES ?= 10
DEMO_SETTINGS ?=
DEMO_MEMBERS := $(foreach band,nir red,$(foreach seed,0 1,$(DEMO)/$(band)-seed$(seed)))

demo: install
	$(PY) -m piunet_dist synth $(DEMO)/scenes --scenes $(DEMO_SCENES) --test-scenes $(DEMO_TEST_SCENES)
	[ $(DEMO_SHARDS)/manifest.json -nt $(DEMO)/scenes/synth.json ] \
	  && $(PY) -m piunet_dist pack --verify $(DEMO_SHARDS) >/dev/null 2>&1 \
	  || $(PY) -m piunet_dist pack $(DEMO)/scenes --out $(DEMO_SHARDS) --scenes-per-shard 8
	$(PY) -m piunet_dist.launch --config configs/demo.yaml --bands NIR RED --seeds 0 1 \
	  --tasks-per-node 1 --cpus-per-task 1 --mem 1500M --wait run_dir=$(DEMO) data.shards=$(DEMO_SHARDS) $(DEMO_SETTINGS)
	@$(MAKE) --no-print-directory -o install $(DEMO)/report/summary.json
	$(PY) -m piunet_dist report $(DEMO)/report $(DEMO_MEMBERS) --out $(DEMO)/report

$(DEMO)/report/summary.json: $(DEMO_MEMBERS:=/best/model.safetensors)
	$(PY) -m piunet_dist.launch evaluate --runs $(DEMO_MEMBERS) --split val \
	  --cpus-per-task 1 --mem 1500M --out $(DEMO)/report --wait $(filter launch.% eval.%,$(DEMO_SETTINGS))

# figures for BENCHMARKS.md: each benchmark prints its table, then one table of them all
bench: install
	$(PY) bench/core.py
	$(PY) bench/loader.py
	$(PY) bench/step.py
	$(PY) bench/evaluate.py
	$(PY) bench/summary.py

# on a GPU: attention, training steps, end to end, evaluation and profile in one table
# (bench/results/gpu.json); BENCH_GPU_ARGS adds flags, e.g. --published DIR
BENCH_GPU_ARGS ?=
bench-gpu: install
	$(PY) bench/gpu.py $(BENCH_GPU_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
