# pretrain-pipeline: `make demo` runs the whole pipeline on the bundled sample; `make test` runs the suite.
# Every target creates the virtualenv and installs what it needs first.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
LOCK   := requirements/py311.txt
# Keep in step with the torch pin of pyproject.toml's `train` extra and docker/'s TORCH_VERSION
# (tests/test_lock.py checks).
TORCH_VERSION := 2.13.0
PIP_VERSION   := 26.3
UV_VERSION    := 0.13.8
LOCK_TOOLS    := .cache/lock-tools
# The peer of `make bench-peer` (datatrove's FineWeb chain) lives in its own virtualenv: its pins
# conflict with ours. benchmarks/peer/requirements.txt holds every package at an exact version with hashes.
PEER_VENV     ?= benchmarks/.cache/peer-venv
PEER_LOCK     := benchmarks/peer/requirements.txt
PEER_STAMP    := $(PEER_VENV)/.installed-stamp
PEER_ASSETS   := benchmarks/.cache/peer-assets

export PREFECT_SERVER_ANALYTICS_ENABLED = false
export DO_NOT_TRACK = 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS = 120

.PHONY: venv lock chromium test demo up down bench bench-peer peer-venv peer-lock gpu-wheels sample clean

venv: $(STAMP)

# The versions come from the lock (requirements/py311.txt: every package at an exact version with its
# hashes, resolved from pyproject.toml by `make lock`), never from whatever the registry has today.
# torch first, with --no-deps: pip then keeps the local CPU build (2.13.0+cpu) instead of downloading a
# CUDA one; the lock holds torch's dependencies. `lock.py check` fails first if pyproject.toml changed
# since the lock was made.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python scripts/lock.py check
	$(BIN)/pip install --quiet pip==$(PIP_VERSION)
	$(BIN)/pip install --quiet --no-deps torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet --no-deps --require-hashes -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/pip check
	$(BIN)/python -m pipeline.models
	touch $(STAMP)

# Resolve requirements/*.txt again from pyproject.toml (after changing a dependency there), keeping the
# versions already locked where pyproject.toml allows them; `make lock UPGRADE=1` takes the newest
# allowed instead. uv is installed on the side (.cache/lock-tools), not into the venv.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(LOCK_TOOLS)/bin/uv || $(BIN)/pip install --quiet --target $(LOCK_TOOLS) uv==$(UV_VERSION)
	$(BIN)/python scripts/lock.py compile --uv $(LOCK_TOOLS)/bin/uv $(if $(UPGRADE),--upgrade)

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

bench: venv peer-venv
	$(BIN)/python benchmarks/bench_ingest.py
	$(BIN)/python benchmarks/bench_clean_langid.py
	$(BIN)/python benchmarks/bench_dedup.py
	$(BIN)/python benchmarks/bench_tokenize.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_stream.py
	$(BIN)/python benchmarks/bench_pipeline.py
	$(BIN)/python benchmarks/debian_warc.py
	$(BIN)/python benchmarks/bench_peer.py
	$(BIN)/python benchmarks/summary.py

# Wheels for benchmarks/gpu_check.sh on a GPU machine without network, into .whl/ (ignored by git; copy the
# repository with it): torch $(TORCH_VERSION)'s CUDA build from GPU_TORCH_INDEX (CUDA 12.8: drivers R570 and newer)
# with its CUDA libraries, and the worker lock's packages (DeepSpeed built into a wheel here), for GPU_PYTHON.
GPU_PYTHON      ?= 3.11
GPU_TORCH_INDEX ?= https://download.pytorch.org/whl/cu128
GPU_PLATFORMS   := --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
gpu-wheels: venv
	mkdir -p .whl
	$(BIN)/pip download --quiet --dest .whl --only-binary=:all: --python-version $(GPU_PYTHON) $(GPU_PLATFORMS) \
		--index-url $(GPU_TORCH_INDEX) torch==$(TORCH_VERSION)
	grep -E '^[A-Za-z0-9_.-]+==' requirements/py311-worker.txt | sed 's/ *\\$$//' \
		| grep -viE '^(deepspeed|torch|nvidia-|triton)==' > .whl/pins.txt
	$(BIN)/pip download --quiet --dest .whl --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) \
		$(GPU_PLATFORMS) -r .whl/pins.txt
	$(BIN)/pip wheel --quiet --no-deps --wheel-dir .whl \
		$$(grep -E '^deepspeed==' requirements/py311-worker.txt | sed 's/ *\\$$//')

# Against datatrove: its FineWeb chain and ours on the same Debian-documentation WARC, in one run
# (benchmarks/README.md, "Against datatrove"). Offline once installed: datatrove's downloads are seeded
# from what the project already has (LDNOOBW lists from npm naughty-words, lid.176.ftz, tldextract's snapshot).
bench-peer: venv peer-venv
	$(BIN)/python benchmarks/debian_warc.py
	$(BIN)/python benchmarks/bench_peer.py
	$(BIN)/python benchmarks/summary.py

peer-venv: venv $(PEER_STAMP)

$(PEER_STAMP): $(PEER_LOCK) benchmarks/peer/run_datatrove.py | $(STAMP)
	test -x $(PEER_VENV)/bin/python || $(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install --quiet pip==$(PIP_VERSION)
	$(PEER_VENV)/bin/pip install --quiet --no-deps --require-hashes -r $(PEER_LOCK)
	$(PEER_VENV)/bin/pip check
	$(PEER_VENV)/bin/python benchmarks/peer/run_datatrove.py seed --assets $(PEER_ASSETS) \
		--ldnoobw data/ldnoobw --lid $(VENV)/share/pretrain-pipeline/lid.176.ftz
	touch $(PEER_STAMP)

# Resolve benchmarks/peer/requirements.txt again from benchmarks/peer/requirements.in.
peer-lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(LOCK_TOOLS)/bin/uv || $(BIN)/pip install --quiet --target $(LOCK_TOOLS) uv==$(UV_VERSION)
	$(LOCK_TOOLS)/bin/uv pip compile $(PEER_LOCK:.txt=.in) --generate-hashes --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --no-header --quiet -o $(PEER_LOCK)

sample: venv
	$(BIN)/python scripts/build_sample_corpus.py --out data/sample

clean:
	-$(BIN)/pretrain-pipeline stack down
	rm -rf $(VENV) .stack .artifacts .pytest_cache
