# Two commands do all the set-up (README): `make figures` and `make test`.
# Both share one environment in .venv: `figures` installs the package alone (what it
# uses); `test` adds the test tools and torch + peft (for the cross-check) on top.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: setup figures test test-fast bench clean

# The package and its runtime dependencies (numpy, scipy, numba, xarray, matplotlib, tqdm…).
$(BIN)/signaldrift: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

# + pytest, hypothesis, torch, peft, dask[distributed].
$(VENV)/.test-extras: $(BIN)/signaldrift
	$(BIN)/pip install --quiet -e '.[test,torch,dask]'
	touch $@

setup: $(BIN)/signaldrift

## The main job: every figure on embedded defaults (quick mode), into figures/out/.
figures: setup
	$(BIN)/signaldrift figures --quick

## The test suite (what CI runs): every test, the ten slowest listed at the end.
test: $(VENV)/.test-extras
	$(BIN)/python -m pytest -q

## While developing: skip the slow end-to-end checks.
test-fast: $(VENV)/.test-extras
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python benchmarks/bench_kernel_vs_dense.py

clean:
	rm -rf $(VENV) figures/out .pytest_cache
