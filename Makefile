# Fresh machine: `make demo` sets up and runs the whole pipeline; `make test` sets up and runs the tests
# (the default suite also builds the docs with --strict); `make docs` builds the site into build/site.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
PG_INITDB := $(firstword $(wildcard /usr/lib/postgresql/*/bin/initdb))

LOCK := constraints.txt
LATEST := .venv-latest
EXTRAS := dev,postgres,docs
# a package that adds a criterion, a latency backend and a rule family through entry points (tests/test_plugins.py)
TOY_PLUGIN := tests/plugins/revit_toy_plugin

.PHONY: setup data test-deps demo test test-slow test-latest lock lint docs bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# every package at the version the whole suite last passed with ($(LOCK)); `make test-latest` + `make lock` refresh it
$(VENV)/.installed: pyproject.toml setup.py $(LOCK) $(TOY_PLUGIN)/pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -c $(LOCK) torch torchvision
	$(BIN)/pip install -q -c $(LOCK) -e '.[$(EXTRAS)]'
	$(BIN)/pip install -q -e $(TOY_PLUGIN)
	touch $@

setup: $(VENV)/.installed data

data:
	@if [ ! -f $(FMNIST) ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q dataset-fashion-mnist; \
	  else echo "Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist'"; exit 1; fi; \
	fi

demo: setup
	$(BIN)/revit demo --out runs/demo

# the study tests start a real PostgreSQL server (Debian's postgresql package)
test-deps:
	@if [ -z "$(PG_INITDB)" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q postgresql; \
	  else echo "PostgreSQL server missing: 'sudo apt-get install postgresql' (its tests are skipped without it)"; fi; \
	fi

test: setup test-deps
	$(BIN)/python -m pytest -q

# the canary: a separate venv with the newest versions pyproject.toml allows, running the default suite
test-latest: data test-deps
	rm -rf $(LATEST)
	$(PY) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q --upgrade pip
	$(LATEST)/bin/pip install -q torch==2.14.1 torchvision==0.29.1 || $(LATEST)/bin/pip install -q torch torchvision
	$(LATEST)/bin/pip install -q --upgrade --upgrade-strategy eager -e '.[$(EXTRAS)]'
	$(LATEST)/bin/pip install -q -e $(TOY_PLUGIN)
	$(LATEST)/bin/pip list --format=freeze 2>/dev/null | grep -i -E '^(optuna|timm|torch|onnxruntime|sqlalchemy|scipy|numpy)=' || true
	$(LATEST)/bin/python -m pytest -q

# re-pin the lock to what `make test-latest` just passed with
lock:
	@test -x $(LATEST)/bin/pip || { echo "run 'make test-latest' first: the lock pins what it passed with"; exit 1; }
	$(LATEST)/bin/pip freeze --exclude-editable | grep -v '^#' > $(LOCK).tmp && mv $(LOCK).tmp $(LOCK)
	@echo "$(LOCK) re-pinned; commit it after 'make test' passes on it"

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

# the documentation site (docs/, mkdocs.yml) into build/site; --strict: broken links and references fail
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 PYTHONPATH=. $(BIN)/mkdocs build --strict

lint: setup
	$(BIN)/ruff check revit tests benchmarks
	$(BIN)/mypy revit

# the trained base that benchmarks/prune_latency.py prunes (docs/evidence/pruning.md); --resume finishes a killed one
MICRO_BASE := runs/micro-base/model.safetensors
$(MICRO_BASE): | setup
	$(BIN)/revit train revit_micro --data fashion-mnist --train-limit 12000 --epochs 3 --threads 1 --no-progress \
	  --resume --out runs/micro-base

# each speed/quality figure of the README, at the scale it was measured (prune_quality: see README for full scale;
# the GPU figures come from `PYTHONPATH=. python benchmarks/gpu_check.py --out DIR` on an NVIDIA GPU)
bench: setup $(MICRO_BASE)
	$(BIN)/python benchmarks/generate_speed.py
	$(BIN)/python benchmarks/latency_accuracy.py
	$(BIN)/python benchmarks/train_micro.py --threads 1
	$(BIN)/python benchmarks/amp_micro.py --threads 1
	$(BIN)/python benchmarks/prune_overhead.py
	$(BIN)/python benchmarks/saliency_kernels.py
	$(BIN)/python benchmarks/prune_latency.py
	$(BIN)/python benchmarks/study_scaling.py --seconds 80
	$(BIN)/python benchmarks/prune_quality.py --out runs/bench-prune-quality-12k --base-epochs 6 --train-limit 12000 \
	  --val-size 2000 --test-limit 5000 --seeds 0,1,2 --prune-steps 6 --mirror benchmarks/results/prune-quality-12k

clean:
	rm -rf $(VENV) $(LATEST) build dist *.egg-info

# timm's own tests/test_models.py (sdist of the installed timm, from the package index) on every revit_* model
# but the DeiT-B-sized ones, next to timm's deit_tiny_patch16_224; prints per-model counts
.PHONY: test-timm
test-timm: setup
	$(BIN)/python tests/timm_suite/run.py --threads 1 --json build/timm-suite/counts.json
