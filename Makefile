# Herald: the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/pip install -q --disable-pip-version-check

LOCK   := requirements/dev.lock
UV_COMPILE := $(BIN)/uv pip compile pyproject.toml --python-version 3.11 --python-platform x86_64-unknown-linux-gnu --generate-hashes --no-header -q

.PHONY: run test lint unit stop bench lock audit infra-start infra-stop infra-status clean

# Every dependency from the lock file, versions and hashes checked; then Herald itself.
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) --require-hashes -r $(LOCK)
	$(PIP) --no-deps -e .
	@touch $(STAMP)

## lock: regenerate requirements/*.lock (hashes) from pyproject.toml after changing a dependency
lock: $(STAMP)
	$(PIP) uv
	$(UV_COMPILE) -o requirements/runtime.lock
	$(UV_COMPILE) --extra simulator -o requirements/simulator.lock
	$(UV_COMPILE) --extra test -o requirements/dev.lock

## audit: known vulnerabilities in the locked set (needs PyPI's JSON API or OSV on the network)
audit: $(STAMP)
	$(PIP) pip-audit
	$(BIN)/pip-audit --strict -r requirements/dev.lock --require-hashes --disable-pip

## run: start Kafka, PostgreSQL, the four services and the gateway simulator, and run the demo
run: $(STAMP)
	$(BIN)/herald up

## lint: static checks, a few seconds: ruff on the whole repository, mypy on shared/ and the
## services' domain modules (rules and scope in pyproject.toml, [tool.ruff] and [tool.mypy])
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

## test: the static checks, then the whole test suite (unit, integration and end-to-end, on the real Kafka and PostgreSQL)
test: lint
	$(PYTHON) deploy/local/infra.py start
	$(BIN)/python -m pytest

## unit: only the tests that need no broker or database (the repository's rules and every unit/ folder)
unit: $(STAMP)
	$(BIN)/python -m pytest tests/repo $(sort $(wildcard tests/*/unit))

## stop: stop a stack left running, then Kafka and PostgreSQL
stop:
	@if [ -x $(BIN)/herald ]; then $(BIN)/herald down; else $(PYTHON) deploy/local/infra.py stop; fi

infra-start:
	$(PYTHON) deploy/local/infra.py start
infra-stop:
	$(PYTHON) deploy/local/infra.py stop
infra-status:
	$(PYTHON) deploy/local/infra.py status

## clean: stop everything and delete local state (databases, topics, logs) and the virtualenv
clean: stop
	$(PYTHON) deploy/local/infra.py reset
	rm -rf $(VENV)

## bench: throughput, latency and memory on this machine (writes docs/benchmarks.md)
bench: $(STAMP)
	$(BIN)/herald bench
