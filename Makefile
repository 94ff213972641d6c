# lorafarm: `make run` serves the tiny demo zoo, `make test` runs the whole suite.
# Both set up everything they need on a fresh Debian machine (venv, CPU torch, redis-server).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
# A CPU build of torch is offered to pip on this kind of machine; a GPU host installs the normal wheel.
TORCH_SPEC ?= torch==2.13.0

.PHONY: help setup system-deps run test test-fast reliability-report lint format bench-swap bench-swap-flux bench-load bench-simulate bench-compile \
        bench-batch deploy-check clean

# Every target carries a `## what it does` comment: `make help` lists them from this file.
help: ## list every target
	@awk -F ':[^#]*## ' '/^[a-z-]+:.*## / {printf "make %-20s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP) system-deps ## create .venv, install CPU torch, the project and the Debian packages below

# Debian packages when missing: redis-server (>= 6.2); docker-compose (validates compose files offline);
# chromium (the widget's browser test drives it through Playwright; no browser download).
APT_PKGS := $(if $(shell command -v redis-server),,redis-server) $(if $(shell command -v docker-compose),,docker-compose) \
            $(if $(shell command -v chromium),,chromium chromium-driver) $(if $(shell command -v openssl),,openssl)
system-deps: ## install redis-server, docker-compose, chromium, openssl from Debian when missing
	@if [ -n "$(strip $(APT_PKGS))" ]; then \
	  echo "installing $(strip $(APT_PKGS))"; \
	  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(APT_PKGS) >/dev/null; \
	fi

run: setup ## serve the tiny demo zoo (redis, devhub, router, workers) on 127.0.0.1:8888 (RUN_ARGS=...)
	$(PY) -m lorafarm.cli run $(RUN_ARGS)

# Lint first (cheap), then the whole suite: unit, integration, e2e, reliability, browser, deploy.
test: setup lint ## install what is missing, lint, run the whole suite (PYTEST_ARGS=... for a part)
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# The contributor's loop: unit and integration tests minus those marked slow. They use the
# session's real redis-server and devhub (fixtures) and real tiny pipelines; no farm of router and
# worker processes, no browser.
test-fast: setup ## unit + integration tests minus the slow-marked ones (no farm, no browser)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" tests/unit tests/integration $(PYTEST_ARGS)

# The figures docs/RELIABILITY.md quotes: the reliability suite records them as it runs
# (tests/reliability/figures.py); the table is rendered even when a test fails, then make fails.
reliability-report: setup ## run tests/reliability and write its measured figures to test-artifacts/reliability.md
	rm -rf test-artifacts/reliability
	$(PY) -m pytest -q -p no:cacheprovider tests/reliability --junitxml=test-artifacts/reliability/junit.xml \
	  $(PYTEST_ARGS); status=$$?; $(PY) -m tests.reliability.figures; exit $$status

lint: $(STAMP) ## ruff (lint and format check) + mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP) ## ruff format + ruff check --fix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench-swap: setup ## swap engine benchmark on an SDXL-shaped model (BENCH_ARGS=--quick)
	$(PY) -m bench.swap $(BENCH_ARGS)

bench-swap-flux: setup ## the swap benchmark on FLUX.1-dev-shaped transformer blocks (BENCH_ARGS="--device cuda --blocks 19,38" on a GPU)
	$(PY) -m bench.swap --family flux $(BENCH_ARGS)

bench-load: setup ## load benchmark on a real tiny farm (Zipf trace, reference vs lorafarm)
	$(PY) -m bench.load $(BENCH_ARGS)

bench-simulate: setup ## Hub-scale fleet simulation (BENCH_ARGS=--quick)
	$(PY) -m bench.simulate $(BENCH_ARGS)

bench-compile: setup ## eager vs torch.compile denoiser, swaps and recompiles on it (BENCH_ARGS=--device cuda ...)
	$(PY) -m bench.compile $(BENCH_ARGS)

bench-batch: setup ## images/s: four one-image jobs against one job of four (tiny base, SDXL-shaped UNet)
	$(PY) -m bench.batch $(BENCH_ARGS)

deploy-check: setup ## validate compose, Dockerfiles and Kubernetes manifests offline
	bash deploy/check.sh

clean: ## remove the zoo, the farm's state and test artifacts
	rm -rf .zoo .farm test-artifacts
