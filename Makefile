# Two commands on a fresh machine:
#   make demo   set up .venv and run the offline demo end to end (CPU, no download)
#   make test   set up .venv and run the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: setup demo test lint clean-results

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: setup
	$(BIN)/snakemake --cores $(CORES) --configfile configs/demo.yaml

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/snakemake --lint --configfile configs/demo.yaml
	$(BIN)/snakemake --lint --configfile config.yaml

clean-results:
	rm -rf results logs benchmarks .snakemake
