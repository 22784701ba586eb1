# Two entry points a new user needs: `make run` (release on embedded data, then serve) and
# `make test` (the whole suite). Both build .venv on first use; nothing else is required.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The MLflow server the tests start runs from a venv of its own: the full `mlflow` package pins
# graphql-core and python-dateutil below what .venv's dev tools use (.venv has the client only).
MLFLOW_VENV ?= .venv-mlflow
MLFLOW_SERVER ?= mlflow>=3.17,<4
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: install mlflow-server run test lab bench bench-peers system-deps clean

$(BIN)/lab2prod: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[lab,dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

install: $(BIN)/lab2prod

$(MLFLOW_VENV)/bin/mlflow:
	$(PYTHON) -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/pip install --quiet --upgrade pip
	$(MLFLOW_VENV)/bin/pip install --quiet '$(MLFLOW_SERVER)'
	touch $@

mlflow-server: $(MLFLOW_VENV)/bin/mlflow

# Debian packages: Fashion-MNIST (full-size runs, drift tests), wrk and util-linux's taskset
# (benchmarks) and Chromium (the drawing page's browser test). Needs root or sudo; a failure here
# is only a warning (the tests that need one of them then fail and say which).
SYSTEM_PACKAGES := dataset-fashion-mnist wrk util-linux chromium
system-deps:
	@if [ ! -d $(FASHION_MNIST) ] || ! command -v wrk >/dev/null || ! command -v taskset >/dev/null \
	  || ! command -v chromium >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  ($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null) \
	  || echo "warning: could not install $(SYSTEM_PACKAGES); the tests and benchmarks that need them will say so"; \
	fi

run: install
	$(BIN)/lab2prod release && $(BIN)/lab2prod serve

lab: install
	$(BIN)/jupyter lab notebooks/

test: install mlflow-server system-deps
	$(BIN)/python -m pytest

# The serving frameworks `lab2prod bench` measures beside ours, each in a venv of its own (their
# pins clash with one another and with .venv's), each with onnxruntime, numpy and Pillow and no
# torch: they serve the int8 ONNX file our release exports (scripts/baselines/requirements/).
# Triton's Python-backend stub fails under a pyenv-built Python ('_thread.RLock' object has no
# attribute '_recursion_count') and works under Debian's, so its venv is made from that one.
PEERS := triton bentoml kserve ray
PEER_PYTHON_triton ?= $(shell [ -x /usr/bin/python3.11 ] && echo /usr/bin/python3.11 || echo $(PYTHON))
PEER_REQUIREMENTS := scripts/baselines/requirements

.venv-bench-%/installed: $(PEER_REQUIREMENTS)/%.txt $(PEER_REQUIREMENTS)/common.txt
	rm -rf .venv-bench-$*
	$(or $(PEER_PYTHON_$*),$(PYTHON)) -m venv .venv-bench-$*
	.venv-bench-$*/bin/pip install --quiet --upgrade pip
	.venv-bench-$*/bin/pip install --quiet -r $<
	touch $@

bench-peers: $(PEERS:%=.venv-bench-%/installed)

# Ray Serve takes CPU while idle and cannot be paused, so its rows get a run of their own
# beside ours (docs/benchmarks/peers.md), written to docs/benchmarks/ray-serve/.
bench: install system-deps bench-peers
	$(BIN)/lab2prod bench
	$(BIN)/lab2prod bench --targets ours,ours-png,ray-serve,ray-serve-png --workers 0 \
	  --out docs/benchmarks/ray-serve --no-readme

clean:
	rm -rf $(VENV) $(MLFLOW_VENV) $(PEERS:%=.venv-bench-%) runs models .pytest_cache
