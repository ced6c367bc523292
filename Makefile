# plantlib: `make report` builds every report, `make test` runs the tests. Both set up .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.plantlib-installed
# JupyterLab refuses to run as root unless told to.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.DEFAULT_GOAL := help
.PHONY: help setup git-filter constraints kernel browser data report test bench lint format lab ui serve clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

# The exact tested versions; `make setup CONSTRAINTS=` installs the newest versions pyproject.toml allows instead.
CONSTRAINTS ?= constraints.txt

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
	  echo "cannot create $(VENV): install Python's venv module (Debian/Ubuntu: sudo apt-get install python3-venv)" >&2; \
	  exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[notebooks,dev]' $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
	$(BIN)/plantlib kernel >/dev/null
	@touch $(STAMP)

setup: $(STAMP) git-filter ## create .venv and install the project (idempotent)

# Notebooks are committed without outputs whatever JupyterLab saves: git runs nbstripout on every `git add` (cell
# ids kept). Only .git/config changes; .gitattributes (committed) names the filter. Outside a git checkout: nothing.
NBSTRIPOUT := $(abspath $(BIN)/python) -m nbstripout --keep-id
git-filter: ## strip notebook outputs on every git add (nbstripout as a git filter; part of setup)
	@if git rev-parse --git-dir >/dev/null 2>&1 && [ "$$(git config --get filter.nbstripout.clean)" != "$(NBSTRIPOUT)" ]; then \
	  test -x $(BIN)/nbstripout || { echo "$(BIN)/nbstripout is missing: run make setup" >&2; exit 1; }; \
	  $(BIN)/nbstripout --install --attributes .gitattributes && \
	  git config filter.nbstripout.clean "$(NBSTRIPOUT)" && \
	  git config diff.ipynb.textconv "$(NBSTRIPOUT) -t" && \
	  echo "git filter installed: notebook outputs are stripped on git add (nbstripout)"; fi

constraints: setup ## record the exact versions installed in .venv as constraints.txt
	@{ echo "# Exact versions the test suite and the reports were last run with (Python 3.11, Linux x86_64)."; \
	  echo "# \`make setup\` installs within them; \`make constraints\` rewrites this file from .venv."; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v -i '^plantlib'; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt

kernel: setup ## register the project's kernel for your own JupyterLab too (~/.local/share/jupyter/kernels)
	$(BIN)/plantlib kernel --user

data: setup ## fetch the built-in dataset when missing (honours PLANTLIB_DATA_SOURCE)
	$(BIN)/plantlib fetch-data

report: data ## run every notebook headlessly and write HTML reports to artifacts/reports/
	$(BIN)/plantlib report

browser: ## install Debian's chromium for the report rendering tests, when missing
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  elif [ "$${PLANTLIB_REQUIRE_ALL:-}" = 1 ]; then \
	    echo "chromium is missing and PLANTLIB_REQUIRE_ALL=1 runs the browser tests: sudo apt-get install chromium" >&2; \
	    exit 1; \
	  else echo "chromium is missing: browser checks will be skipped (sudo apt-get install chromium)"; fi; }

test: setup browser ## run the test suite
	$(BIN)/python -m pytest

bench: data ## speed and memory vs the PyTorch tutorial recipe (artifacts/bench/bench.md)
	$(BIN)/python -m benchmarks.bench --skip ddp

lint: setup ## ruff lint + format check (notebooks included)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

lab: setup ## start JupyterLab on localhost (no browser) with the plantlib kernel
	$(BIN)/plantlib kernel >/dev/null
	cd notebooks && ../$(BIN)/jupyter lab --no-browser --ip=127.0.0.1 $(ROOT_FLAG)

ui: setup ## start the MLflow UI on 127.0.0.1:5000 over the project's tracking store (artifacts/mlflow.db)
	$(BIN)/plantlib ui

# MODEL= a run directory, checkpoint, export folder or models:/NAME/VERSION; default: the newest finished run.
MODEL ?=
serve: data ## serve a model's REST API and try-it page on http://127.0.0.1:8000 (MODEL=... or the newest run)
	@model="$(MODEL)"; if [ -z "$$model" ]; then \
	  model=$$($(BIN)/python -c 'from plantlib.runs import latest_run; print(latest_run())' 2>/dev/null) || { \
	    echo "no finished run under artifacts/runs: train one (make report or plantlib train) or pass MODEL=..." >&2; \
	    exit 2; }; fi; \
	$(BIN)/plantlib serve "$$model"

clean: ## remove generated artifacts (runs, reports, the tracking store) and caches; keeps data and .venv
	rm -rf artifacts/* data/.cache .pytest_cache .ruff_cache
	@touch artifacts/.gitkeep
