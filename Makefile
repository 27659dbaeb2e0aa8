# The two commands of the README: `make up` and `make test`. Both work on a fresh
# machine that has only python3 and pip: they build .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: up test bench replay clean

$(STAMP): pyproject.toml examples/schedd-sjf/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[server,agent,executor,test]' -e examples/schedd-sjf
	touch $(STAMP)

# A trial on your own machine: root may submit too (a real server keeps allow_root_jobs = false).
up: $(STAMP)
	$(BIN)/schedd up --allow-root-jobs

replay: $(STAMP)
	$(BIN)/python -m bench.replay --trace ../shared/traces/lublin_256.swf.gz --preset easy --machine pool

test: $(STAMP)
	$(BIN)/mypy
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m bench.cycle

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .hypothesis
