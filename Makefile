# pretrain-pipeline: `make demo` runs the whole pipeline on the bundled sample; `make test` runs the suite.
# Every target creates the virtualenv and installs what it needs first.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

export PREFECT_SERVER_ANALYTICS_ENABLED = false
export DO_NOT_TRACK = 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS = 120

.PHONY: venv chromium test demo up down bench sample clean

venv: $(STAMP)

# torch first: pip then keeps the local CPU build instead of downloading a CUDA one.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,train]'
	$(BIN)/pip check
	$(BIN)/python -m pipeline.models
	touch $(STAMP)

# The UI test drives Debian's headless Chromium; install it if this machine lacks it.
chromium:
	@command -v chromium >/dev/null 2>&1 || { SUDO=$$(test "$$(id -u)" = 0 || echo "sudo -n"); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium; }

test: venv chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: venv
	$(BIN)/pretrain-pipeline demo

up: venv
	$(BIN)/pretrain-pipeline stack up

down: venv
	$(BIN)/pretrain-pipeline stack down

bench: venv
	$(BIN)/python benchmarks/bench_ingest.py
	$(BIN)/python benchmarks/bench_clean_langid.py
	$(BIN)/python benchmarks/bench_dedup.py
	$(BIN)/python benchmarks/bench_tokenize.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_pipeline.py
	$(BIN)/python benchmarks/summary.py

sample: venv
	$(BIN)/python scripts/build_sample_corpus.py --out data/sample

clean:
	-$(BIN)/pretrain-pipeline stack down
	rm -rf $(VENV) .stack .artifacts .pytest_cache
