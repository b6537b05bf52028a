# Two commands on a fresh machine:
#   make demo   set up .venv and run the offline demo end to end (CPU, no download)
#   make test   set up .venv and run the test suite (CI: .ci/run runs `make lint` and `make test`)
#   make lint   ruff, snakefmt --check and snakemake --lint on every config
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: setup demo test lint clean-results

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,cluster,lint]'
	touch $@

demo: setup
	$(BIN)/snakemake --cores $(CORES) --configfile configs/demo.yaml

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check Snakefile rules/
	for config in config.yaml configs/demo.yaml tests/configs/tiny.yaml; do \
		$(BIN)/snakemake --lint --configfile $$config || exit 1; \
	done

clean-results:
	rm -rf results logs benchmarks .snakemake
