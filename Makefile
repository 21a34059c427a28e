# Two commands: `make serve` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install serve test lint typecheck services bench clean bq-emulator chromium

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The BigQuery emulator the BigQuery sink's tests run against (tests/sinks/_bigquery_peer.py
# starts it as a subprocess).  It has a venv of its own: it pins DuckDB and brings FastAPI,
# gRPC, OpenTelemetry, ..., none of which the project needs.  DuckDB would download its
# spatial and avro extensions at every start; they ship on PyPI, so they are copied to
# where DuckDB looks for installed ones, under a HOME of the emulator's own.
BQ_VENV   := .venv-bq
BQ_STAMP  := $(BQ_VENV)/.installed
DUCKDB    := 1.5.5
BQ_EXTDIR := $(BQ_VENV)/home/.duckdb/extensions/v$(DUCKDB)/linux_amd64

bq-emulator: $(BQ_STAMP)

$(BQ_STAMP): Makefile
	test -x $(BQ_VENV)/bin/python || $(PYTHON) -m venv $(BQ_VENV)
	$(BQ_VENV)/bin/python -m pip install -q 'bqemulator[testing]==1.4.0' 'duckdb==$(DUCKDB)' \
		'duckdb-extension-spatial==$(DUCKDB)' 'duckdb-extension-avro==$(DUCKDB)' numpy
	mkdir -p $(BQ_EXTDIR)
	for ext in spatial avro; do \
		cp "$$($(BQ_VENV)/bin/python -c "import duckdb_extension_$$ext as m, os; print(os.path.dirname(m.__file__))")/extensions/v$(DUCKDB)/$$ext.duckdb_extension" $(BQ_EXTDIR)/ || exit 1; \
	done
	touch $(BQ_STAMP)

# The dashboard's browser tests drive Debian's Chromium through Playwright (never a
# browser Playwright downloads itself: this machine's network refuses that).
CHROMIUM := /usr/bin/chromium

chromium:
	@test -x $(CHROMIUM) || { apt-get install -y -q chromium >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; }
	@test -x $(CHROMIUM) || { echo "could not install $(CHROMIUM) (apt-get install chromium)"; exit 1; }

serve: install
	$(BIN)/cio-webhooks serve

lint: install
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: install
	$(BIN)/mypy

# PostgreSQL and Redis are used by tests of the scale-out stores; start them when down.
services:
	@pg_isready -q -h 127.0.0.1 2>/dev/null || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start 2>/dev/null || true
	@redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 || redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null 2>&1 || true

test: install bq-emulator chromium services lint typecheck
	$(BIN)/pytest

bench: install
	bench/ingest.sh

clean:
	rm -rf $(VENV) $(BQ_VENV) .mypy_cache .pytest_cache .ruff_cache
