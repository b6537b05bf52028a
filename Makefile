# Two commands on a fresh machine:
#   make demo   set up .venv and run the offline demo end to end (CPU, no download)
#   make test   set up .venv, install the SLURM, browser and LaTeX tests' system packages (root), run the test
#               suite (CI: .ci/run runs `make lint` and `make test`)
#   make lint   ruff, snakefmt --check and snakemake --lint on every config
#   make report run CONFIG's workflow with its charts and runtime, then build results/report.html
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2
CONFIG ?= config.yaml
REPORT := results/report.html
# The 25 slowest tests (pyproject's --durations) and the summary of the last `make test`, kept beside the benchmarks.
TEST_DURATIONS := bench/results/test-durations.txt
# pytest's status, not awk's, is the recipe's.
SHELL := bash
.SHELLFLAGS := -o pipefail -c

.PHONY: setup demo report test test-packages lint compare conventions clean-results

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,cluster,lint]'
	touch $@

demo: setup
	$(MAKE) report CONFIG=configs/demo.yaml
	@cat results/tables/findings.md

# `snakemake --report` cannot run jobs: the first command makes everything it shows. The target
# comes first: `--configfile` takes every word after it.
report: setup
	$(BIN)/snakemake report_files --cores $(CORES) --configfile $(CONFIG)
	$(BIN)/snakemake report_files --report $(REPORT) --configfile $(CONFIG)
	@echo "Report (opens offline in a browser): $(abspath $(REPORT))"

# The system packages of the SLURM, browser and LaTeX tests (root and apt-get), installed before pytest so
# that the suite's durations are the tests' own. Where they cannot be installed (not root, no apt-get),
# the scripts say why and those tests skip with the reason, so a failure here does not stop `make test`.
test-packages:
	-bash scripts/slurm-cluster.sh install
	-sh scripts/install-test-tool.sh chromium
	-sh scripts/install-test-tool.sh pdflatex

test: setup test-packages
	$(BIN)/python -m pytest 2>&1 | awk '{ print } /slowest 25 durations/ { keep = 1 } keep { print > "$(TEST_DURATIONS)" }'

lint: setup
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check Snakefile rules/
	for config in config.yaml configs/demo.yaml configs/architectures.yaml tests/configs/tiny.yaml; do \
		$(BIN)/snakemake --lint --configfile $$config || exit 1; \
	done

# Differences per result between two completed run folders, or (conventions) the tiny config run
# under the paper's and the published code's conventions (docs/conventions.md).
# Checked when the Makefile is read, so a call without the folders stops before any setup.
ifneq ($(filter compare,$(MAKECMDGOALS)),)
ifeq ($(and $(FIRST),$(SECOND)),)
$(error make compare needs two completed run folders: make compare FIRST=run_a SECOND=run_b [OUT=differences.csv])
endif
endif
compare: setup
	$(BIN)/python bench/conventions.py --runs $(FIRST) $(SECOND) --out $(or $(OUT),differences.csv)

conventions: setup
	$(BIN)/python bench/conventions.py --cores $(CORES) --docs docs/conventions.md

clean-results:
	rm -rf results logs benchmarks .snakemake
