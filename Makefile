# Two commands do all the set-up (README): `make figures` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: setup figures test bench clean

$(BIN)/signaldrift: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,torch]'
	touch $@

setup: $(BIN)/signaldrift

## The main job: every figure on embedded defaults (quick mode), into figures/out/.
figures: setup
	$(BIN)/signaldrift figures --quick

## The test suite (what CI runs).
test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/bench_kernel_vs_dense.py

clean:
	rm -rf $(VENV) figures/out .pytest_cache
