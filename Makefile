# Two entry points (see README): `make cebab` (set up, train and evaluate on CEBaB) and
# `make test` (set up, run the tests). Everything installs into .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/cebab-intcem.yaml
RUN = runs/$(basename $(notdir $(CONFIG)))

.PHONY: setup cebab test docs lint bench clean

setup: $(VENV)/.installed

# torch first and pinned: the local CPU build. Unpinned, pip would pull gigabytes of CUDA
# packages; once 2.13.0 is there, the project's range installs nothing more.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

cebab: setup
	$(BIN)/lucidlm train $(CONFIG)
	$(BIN)/lucidlm demo $(RUN)

test: setup lint docs
	$(BIN)/python -m pytest

# The documentation site, strict: a broken link or reference fails the build.
docs: setup
	$(BIN)/mkdocs build --strict --site-dir site

lint: setup
	$(BIN)/ruff check src tests bench docs
	$(BIN)/ruff format --check src tests bench docs

# One results table: make bench-cebab_bottleneck (bench/README.md says what each needs first).
bench-%: setup
	$(BIN)/python bench/$*.py

bench: setup
	$(BIN)/python bench/cebab_bottleneck.py
	$(BIN)/python bench/cebab_sparse.py
	$(BIN)/python bench/sparse_throughput.py
	$(BIN)/python bench/proto_lm.py
	$(BIN)/python bench/evaluation_suite.py

clean:
	rm -rf $(VENV) runs site
