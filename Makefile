# vllama — the two commands: `make demo` runs it, `make test` tests it.
.DEFAULT_GOAL := help
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: help venv test-venv demo test lint unit bench profile gpu-check fleet-check clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

venv: ## create .venv with vllama and the engine build that fits this machine
	scripts/setup-venv.sh

test-venv: ## .venv plus test tools and client libraries
	scripts/setup-venv.sh --test

demo: venv ## build the demo model and serve it on 127.0.0.1:11434 (Ollama's port)
	$(VENV)/bin/vllama serve --demo

test: ## set everything up from a fresh clone and run every suite
	scripts/test.sh

lint: test-venv ## ruff and mypy --strict
	$(VENV)/bin/ruff check app tests ops
	$(VENV)/bin/ruff format --check app tests ops
	$(VENV)/bin/mypy

unit: test-venv ## the quick suites only (no engine, no containers)
	$(PY) -m pytest tests/unit -q

bench: test-venv ## issue 16's targets side by side, one run (~15 min; not pass/fail): docs/performance.md
	scripts/install-system-deps.sh
	scripts/setup-bench-venv.sh
	$(PY) -m tests.perf.run $(BENCH_ARGS)

profile: test-venv ## where the façade's CPU goes (py-spy); writes docs/performance-profile.md
	scripts/setup-bench-venv.sh
	$(PY) -m tests.perf.profile

gpu-check: venv ## on a GPU host: doctor, NVML, a small model via façade + proxy, DCGM (GPU_CHECK_ARGS=--json)
	$(PY) ops/gpu_check.py $(GPU_CHECK_ARGS)

fleet-check: test-venv ## systemd hosts rolled under load by deploy.yml, and a 2-host multi-node model (~20 min; not in make test)
	scripts/install-system-deps.sh
	VLLAMA_FLEET=1 $(PY) -m pytest tests/fleet -v -s

clean: ## remove caches (not the venv)
	rm -rf .cache/logs .pytest_cache .mypy_cache .ruff_cache
