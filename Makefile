# Two commands on a fresh machine: `make serve` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `make serve PORT=9090` when 8080 is taken (or set SESSIONSTREAM_PORT)
PORT ?=

.PHONY: serve test lint bench install mutants

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,postgres,openai,anthropic]'
	touch $(STAMP)

install: $(STAMP)

# Starts on the embedded default: SQLite file ./sessionstream.db, offline engine.
# On first start it creates a user "demo" and prints its API token once.
serve: $(STAMP)
	@[ -f sessionstream.db ] || $(BIN)/sessionstream users create demo
	$(BIN)/sessionstream serve $(if $(PORT),--port $(PORT))

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check core eventstore projections engines services server sessionstream
	$(BIN)/mypy
	$(BIN)/lint-imports

test: $(STAMP)
	bash .ci/test

bench: $(STAMP)
	$(BIN)/python -m bench

# Mutation testing of the core rules against their fast tests (not part of `make test`):
# the modules and test files are in pyproject.toml [tool.mutmut]; the scores go to
# bench/results/mutants.json (docs/explanation/mutation-testing.md). JOBS=2 by default.
mutants: $(STAMP)
	@[ -x $(BIN)/mutmut ] || $(BIN)/pip install -q 'mutmut==3.8.1'
	rm -rf mutants
	$(BIN)/mutmut run --max-children $(or $(JOBS),2)
	$(BIN)/python -m bench.mutants --label after
