# Greenroom: `make up` runs the service, `make test` runs the tests. Both install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: up test lint bench fuzz docker-image clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch first, so sentence-transformers does not pull a CUDA one.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[model,onnx,embedded,tracing,dev]'
	touch $(STAMP)

# RUNTIME=docker or RUNTIME=swarm: replicas as containers (the image is built on first use).
RUNTIME ?=
up: $(STAMP)
	$(BIN)/greenroom up $(if $(RUNTIME),--runtime $(RUNTIME))

# Two phases: the parallel one on TEST_WORKERS pytest-xdist workers, then the
# timing-sensitive tests one at a time (tests/run.sh; tests/support/scheduling.py says which
# test runs where). SIDE_BY_SIDE=1: the two at once, the first at nice 19.
# TEST_WORKERS=0 runs without xdist; PYTEST_ARGS chooses a part of the suite.
TEST_WORKERS ?= 4
test: $(STAMP)
	TEST_WORKERS=$(TEST_WORKERS) bash tests/run.sh $(PYTEST_ARGS)

# What CI runs (.ci/run): ruff, mypy --strict on every package, and the import contracts
# ([tool.importlinter] in pyproject.toml: which package may import which, no circles).
PACKAGES := db schemas edge service gateway launch worker model_server greenroom_client

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy --strict $(PACKAGES)
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python bench/control_plane.py
	# The model server is driven by wrk (C): a Python client would share the two cores.
	command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(BIN)/python bench/model_server.py
	# Rollout and data plane on a Docker Engine, with Debian's nginx as the proxy peer.
	bash .ci/docker-engine.sh
	command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx; }
	$(BIN)/python bench/rollout.py
	# The data plane alone: direct vs nginx vs the gateway, by wrk, hashing and MiniLM.
	$(BIN)/python bench/gateway.py

# schemathesis, every check and every phase (examples, coverage, fuzzing, stateful), on the
# API's /openapi.json and the gateway's, each with an admin token and a non-admin one (the
# API's non-admin run must end with no replica running). tests/fuzz/schemathesis.toml says
# what a JSON Schema cannot. `make test` runs the same with 10 examples per operation.
fuzz: $(STAMP)
	GREENROOM_FUZZ_EXAMPLES=100 $(BIN)/python -m pytest -q -s -p no:cacheprovider \
		tests/fuzz/test_openapi.py -k schemathesis

docker-image: $(STAMP)
	$(BIN)/greenroom image build

clean:
	rm -rf $(VENV) .greenroom
