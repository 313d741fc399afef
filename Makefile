# regflow — two set-up commands for a new user: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CORES  ?= all
EXAMPLE_STAMP := example/data/.complete

.PHONY: run test test-slurm test-report test-unit test-workflow example lint format report bench clean

# The environment alone (idempotent): reinstalls only when pyproject.toml changes.
$(VENV): $(STAMP)
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# The bundled example cohort, generated from images that scikit-image ships.
$(EXAMPLE_STAMP): $(STAMP) scripts/make_example_cohort.py scripts/regflow/example.py
	$(BIN)/python scripts/make_example_cohort.py --outdir example/data
	touch $@

example: $(EXAMPLE_STAMP)

run: $(EXAMPLE_STAMP)
	$(BIN)/snakemake --cores $(CORES)

report: run
	$(BIN)/snakemake --cores 1 --report report.html

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slurm and not report"

SLURM_STAMP := $(VENV)/.installed-slurm
$(SLURM_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,slurm]'
	touch $@

# The HTML report in a real browser: Debian's chromium, installed when missing (root).
test-report: $(STAMP)
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)
	$(BIN)/python -m pytest -m report -rs

# A real single-node SLURM (Debian packages, started by tests/slurm/start-cluster.sh; root).
# The cluster is stopped (and its configuration removed) afterwards, pass or fail.
# Snakemake's SLURM executor plugin is the `slurm` extra (not in the default install).
test-slurm: $(SLURM_STAMP)
	bash tests/slurm/start-cluster.sh
	$(BIN)/python -m pytest -m slurm -rs; status=$$?; bash tests/slurm/stop-cluster.sh; exit $$status

# Accuracy/speed against baselines on BIRL-style pairs (by hand; adds itk-elastix to .venv).
BIRL ?= ../shared/data/birl
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python benchmarks/registration.py --pairs $(BIRL)/pairs-imgs-lnds_mix.csv --workflow /tmp/regflow-bench

test-unit: $(STAMP)
	$(BIN)/python -m pytest -m "not workflow"

test-workflow: $(STAMP)
	$(BIN)/python -m pytest -m workflow

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --lint

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
	$(BIN)/snakefmt Snakefile rules

clean:
	rm -rf results example report.html .snakemake
