# Everything a user needs: `make up` runs the system, `make test` installs and passes the tests.
export UV_PYTHON_DOWNLOADS := never
# Trust the operating system's certificate store (corporate proxies, custom CAs).
export UV_SYSTEM_CERTS ?= 1
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)

.PHONY: up test test-live check lint typecheck bench bench-peers install clean

# uv comes from PyPI into .tools/ (a venv, or pip --target where venv is unavailable).
.tools/bin/uv:
	@if $(PYTHON) -m venv .tools 2>/dev/null && .tools/bin/python -m pip --version >/dev/null 2>&1; then \
		.tools/bin/python -m pip install --quiet --disable-pip-version-check uv; \
	else \
		rm -rf .tools && $(PYTHON) -m pip install --quiet --disable-pip-version-check --target .tools uv \
		|| { echo "make: need Python 3.11+ with venv or pip (Debian: apt-get install python3-venv)"; exit 1; }; \
	fi
	@test -x .tools/bin/uv

install: $(UV)
	$(UV) sync --frozen

up: install
	$(UV) run --frozen maestro up

test: install
	$(UV) run --frozen pytest

# Against real Slack, Jira and SMTP; needs the MAESTRO_LIVE_* variables (docs/CONNECTORS.md).
test-live: install
	$(UV) run --frozen pytest tests/live

lint: install
	$(UV) run --frozen ruff check src tests bench
	$(UV) run --frozen ruff format --check src tests bench

typecheck: install
	$(UV) run --frozen mypy

check: lint typecheck test

bench: install
	$(UV) run --frozen python bench/engine.py
	$(UV) run --frozen python bench/http_step.py
	$(UV) run --frozen python bench/schedules.py
	$(UV) run --frozen python bench/webhook_verify.py
	$(UV) run --frozen python bench/webhooks.py

# Maestro against Procrastinate, pgqueuer, Celery and Prefect (docs/PERFORMANCE.md). The peers
# go into their own environment, bench/peers/.venv, never into the project's. Needs the local
# PostgreSQL and Redis. BENCH_PEERS_ARGS="--quick" for a smoke run, "--rounds 5" for more.
PEERS_VENV := bench/peers/.venv
bench-peers: install
	$(UV) venv --quiet --allow-existing --python $(PYTHON) $(PEERS_VENV)
	$(UV) pip install --quiet --python $(PEERS_VENV)/bin/python -r bench/peers/requirements.txt
	MAESTRO_PYTHON="$(UV) run --frozen python" $(PEERS_VENV)/bin/python bench/peers/run.py $(BENCH_PEERS_ARGS)

clean:
	rm -rf .venv .tools .pytest_cache .mypy_cache .ruff_cache bench/peers/.venv
