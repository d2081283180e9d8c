# Two commands for a newcomer:  `make serve` (set up, train the default model, serve it)
# and `make test` (the whole suite; .ci/run calls exactly this).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8000
RUN    ?= runs/default
BUNDLE ?= bundles/default

.PHONY: venv test serve bundle bench smoke-docker clean

# The pinned CPU torch is installed first so that no range ever pulls a multi-GB CUDA build.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

test: venv
	$(BIN)/python -m pytest -q

# Train (if no run) and export (if no bundle) the default model, without serving it.
bundle: venv
	RUN_DIR=$(RUN) BUNDLE_DIR=$(BUNDLE) PYTHON=$(BIN)/python sh deploy/entrypoint.sh train

# The same entry point as the container: builds the default bundle when missing, then serves.
serve: venv
	PATH=$(CURDIR)/$(BIN):$$PATH RUN_DIR=$(RUN) BUNDLE_DIR=$(BUNDLE) PORT=$(PORT) \
		PYTHON=$(CURDIR)/$(BIN)/python sh deploy/entrypoint.sh all

bench: venv
	$(BIN)/python -m bench.run_all

# The compose stack on a real Docker engine, one container at a time (minutes; not part of
# `make test`). Without registry access, run ../shared/tools/local-docker.sh first.
smoke-docker:
	PYTHON=$(PYTHON) deploy/smoke-docker.sh

clean:
	rm -rf $(VENV) runs bundles
