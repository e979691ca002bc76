# aiogate — the commands a contributor and CI need. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# Debian packages the test suite and the benchmark use as real peers (prometheus brings
# promtool for the alert-rule tests, systemd brings systemd-analyze for the unit check).
TEST_DEBS := redis-server etcd-server prometheus systemd nginx-light curl openssl
# The benchmark runs whatever nginx is installed (a distro nginx, nginx-core/-full, nginx.org's
# package, a build in /usr/local): nginx-light is installed only when there is none.
NGINX_BIN := $(shell command -v nginx 2>/dev/null || ls /usr/sbin/nginx /usr/local/sbin/nginx 2>/dev/null | head -n1)
BENCH_DEBS := wrk $(if $(NGINX_BIN),,nginx-light)

.PHONY: help venv system-deps run test lint format typecheck bench clean wheel-check schema

help:
	@echo "make run        gateway on :8080 with deploy/demo/aiogate.yaml and two demo backends"
	@echo "make test       create .venv, install everything, run the whole suite with coverage"
	@echo "make lint       ruff check + format check"
	@echo "make typecheck  mypy --strict on src/"
	@echo "make schema     regenerate docs/aiogate.schema.json from the config models"
	@echo "make bench      wrk: aiogate vs nginx vs a minimal aiohttp proxy vs direct"
	@echo "make wheel-check build sdist+wheel, install the wheel in a fresh venv, smoke-test it"

# constraints.txt pins every dependency (deploy/freeze_constraints.py writes it): CI and the
# container image install the versions that were tested.
$(VENV)/.installed: setup.cfg setup.py pyproject.toml constraints.txt
	@test -x $(PY) || { echo "creating the virtual environment $(VENV)…"; $(PYTHON) -m venv $(VENV); }
	@echo "installing Python packages into $(VENV) (a minute or two the first time)…"
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet -c constraints.txt -e '.[test,dev]'
	@echo "$(VENV) is ready"
	@touch $@

venv: $(VENV)/.installed

# Installs missing Debian packages when run as root; otherwise names the one command to run.
define ensure_debs
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages:$$missing"; \
	    echo "run: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi
endef

system-deps:
	$(call ensure_debs,$(TEST_DEBS))

run: venv
	deploy/demo/run.sh

test: venv system-deps
	$(BIN)/pytest --cov=aiogate --cov-report=term --cov-fail-under=80 $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check src tests bench deploy
	$(BIN)/ruff format --check src tests bench deploy

format: venv
	$(BIN)/ruff format src tests bench deploy
	$(BIN)/ruff check --fix src tests bench deploy

typecheck: venv
	$(BIN)/mypy

# The config's JSON Schema for editors; tests/unit/config/test_config_schema.py fails when the
# committed file is stale.
schema: venv
	$(PY) -m aiogate.config.schema --output docs/aiogate.schema.json

bench: venv
	$(call ensure_debs,$(BENCH_DEBS))
	$(PY) bench/run.py $(BENCH_ARGS)

# Build the sdist and, from it, the wheel; install the wheel (without extras) into a fresh venv
# and show that it runs and carries its data files. tests/integration/test_deploy_files.py
# runs this, so CI does too.
WHEEL_DIR ?= dist
wheel-check: venv
	rm -rf $(WHEEL_DIR) && $(PY) -m build --outdir $(WHEEL_DIR) . >/dev/null
	set -euo pipefail; unset PYTHONPATH; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/pip" install --quiet -c constraints.txt $(WHEEL_DIR)/*.whl; \
	"$$tmp/venv/bin/aiogate" --version; \
	cd "$$tmp" && venv/bin/python -c "$$WHEEL_CHECK_PY"

define WHEEL_CHECK_PY
import aiogate, aiogate.resources as r, aiogate.tracing as t
assert "site-packages" in aiogate.__file__, aiogate.__file__
for read in (r.example_config, r.systemd_unit, r.grafana_dashboard, r.prometheus_alerts):
    assert read().strip(), read.__name__
assert "[Service]" in r.systemd_unit()
assert not t.sdk_available(), "opentelemetry came without the [tracing] extra"
print("wheel-check: package data present, tracing extra optional")
endef
export WHEEL_CHECK_PY

clean:
	rm -rf build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.* htmlcov
