# regflow — two set-up commands for a new user: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CORES  ?= all
EXAMPLE_STAMP := example/data/.complete

.PHONY: run test test-slurm test-report test-unit test-workflow example lint format report bench clean lock slurm run-slurm

LOCK   := requirements.lock

# The environment alone (idempotent): reinstalls only when pyproject.toml or the lock changes.
# Exact versions from the lock (a cohort rerun next year computes with the same libraries),
# then regflow itself without resolving anything again.
$(VENV): $(STAMP)
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

# Refresh the lock from pyproject.toml (uv's resolver, universal: every Python ≥ 3.11).
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv
	{ printf '%s\n' \
	  '# Exact versions of everything `make run` / `make test` install (regflow with its dev extra),' \
	  "# for every Python ≥ 3.11 (uv's universal resolution: markers where versions differ)." \
	  '# Refresh with `make lock` after changing pyproject.toml; tests/test_envs.py checks that this' \
	  '# file, pyproject.toml and envs/regflow.yaml agree.'; \
	  $(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
	    --quiet --no-header; } > $(LOCK).tmp && mv $(LOCK).tmp $(LOCK)

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

# Snakemake's SLURM executor plugin (the `slurm` extra), for profiles/slurm: optional, since
# Snakemake imports every installed executor plugin at start-up, and on a machine with SLURM's
# client tools but no reachable controller that import stalls every snakemake call by ~9 s.
# Installed against the lock's versions of everything else.
SLURM_STAMP := $(VENV)/.installed-slurm
$(SLURM_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[dev,slurm]'
	touch $@

slurm: $(SLURM_STAMP)

# The example (or your config: ARGS="--configfile … --default-resources slurm_account=…
# slurm_partition=…") through profiles/slurm. Without the plugin Snakemake's own error is
# "unrecognized arguments: --slurm-…", which does not say what to install: checked first.
run-slurm: $(EXAMPLE_STAMP)
	@$(BIN)/python -c "import snakemake_executor_plugin_slurm" 2>/dev/null || { \
	  echo "profiles/slurm needs Snakemake's SLURM executor plugin" \
	       "(snakemake-executor-plugin-slurm, regflow's 'slurm' extra): run 'make slurm'"; \
	  exit 1; }
	$(BIN)/snakemake --profile profiles/slurm $(ARGS)

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
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[dev,bench]'
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
