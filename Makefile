# The two commands a fresh machine needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv run test lint types pytest test-tools bench bench-tools clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

run: venv
	$(BIN)/ascend-webhooks serve

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

types: venv
	$(BIN)/mypy

pytest: venv test-tools
	$(BIN)/pytest

# The real parts the tests drive that PyPI does not ship: Debian's chromium for the dashboard's
# browser tests (Playwright's own browser download is not used) and pgbouncer in front of
# PostgreSQL.
test-tools:
	@test -x /usr/bin/chromium && test -x /usr/sbin/pgbouncer || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium pgbouncer; }

test: lint types pytest

# The one-run throughput comparison; the sink is Debian's nginx and publish load comes from wrk.
bench: venv bench-tools
	$(BIN)/python bench/scorecard.py

bench-tools:
	@command -v nginx >/dev/null && command -v wrk >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq nginx wrk; }

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
