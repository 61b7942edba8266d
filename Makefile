# funnel: `make up` runs the whole funnel on embedded defaults; `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PORT   ?= 8000

.PHONY: up test lint bench bench-send bench-signup bench-render clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $@

## up: install (first time), write a dev funnel.toml (if absent), then run site + worker + dev SMTP inbox on http://127.0.0.1:$(PORT)
up: $(STAMP)
	$(BIN)/funnel init --dev
	FUNNEL_DEV=1 $(BIN)/funnel up --port $(PORT)

## test: install (first time), lint, run the whole test suite
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## bench: the performance scripts in order, then one summary table and every issue-15 target met or missed (bench/README.md); send needs Debian's postfix (smtp-sink/smtp-source); SCALE=1 for the 1M-subscriber database
SCALE ?= 0.1
bench: $(STAMP)
	$(BIN)/python bench/summary.py --scale $(SCALE)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache tests/artifacts
