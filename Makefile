# lorafarm: `make run` serves the tiny demo zoo, `make test` runs the whole suite.
# Both set up everything they need on a fresh Debian machine (venv, CPU torch, redis-server).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
# A CPU build of torch is offered to pip on this kind of machine; a GPU host installs the normal wheel.
TORCH_SPEC ?= torch==2.13.0

.PHONY: help setup system-deps run test test-fast lint format bench-swap bench-load bench-batch deploy-check clean

help:
	@echo "make run           serve the tiny demo zoo (redis, devhub, router, workers) on 127.0.0.1:8888"
	@echo "make test          install what is missing and run the whole suite"
	@echo "make lint          ruff + mypy"
	@echo "make bench-swap    swap engine benchmark (SDXL-shaped UNet)"
	@echo "make bench-load    load benchmark (Zipf trace, reference vs lorafarm)"
	@echo "make bench-batch   images/s: four one-image jobs against one job of four (tiny base, SDXL-shaped UNet)"
	@echo "make deploy-check  validate compose, Dockerfiles and Kubernetes manifests offline"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP) system-deps

# Debian packages when missing: redis-server (>= 6.2); docker-compose (validates compose files offline);
# chromium (the widget's browser test drives it through Playwright; no browser download).
APT_PKGS := $(if $(shell command -v redis-server),,redis-server) $(if $(shell command -v docker-compose),,docker-compose) \
            $(if $(shell command -v chromium),,chromium chromium-driver) $(if $(shell command -v openssl),,openssl)
system-deps:
	@if [ -n "$(strip $(APT_PKGS))" ]; then \
	  echo "installing $(strip $(APT_PKGS))"; \
	  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(APT_PKGS) >/dev/null; \
	fi

run: setup
	$(PY) -m lorafarm.cli run $(RUN_ARGS)

# Lint first (cheap), then the whole suite: unit, integration, e2e, reliability, browser, deploy.
test: setup lint
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench-swap: setup
	$(PY) -m bench.swap $(BENCH_ARGS)

bench-load: setup
	$(PY) -m bench.load $(BENCH_ARGS)

bench-batch: setup
	$(PY) -m bench.batch $(BENCH_ARGS)

deploy-check: setup
	bash deploy/check.sh

clean:
	rm -rf .zoo .farm test-artifacts
