# The README's two commands:  `make demo`  and  `make test`.  Both set everything up first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel of torch 2.13.0 lies on disk on our machines; elsewhere pip fetches it. Override with
# e.g. TORCH='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128' for a CUDA build.
TORCH  ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast images clean

$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,onnx]'
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/fedtune demo $(DEMO_ARGS)

# Installs what the container tests need (Docker engine, debootstrap, kubectl) when it can (root + apt),
# then runs every test. pytest exits 5 when it collected no test: that is a failure here too.
test: setup
	bash scripts/test.sh $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/pytest -q -m "not slow and not docker" $(PYTEST_ARGS)

# The container images (CPU torch); needs a Docker engine: `eval "$$(scripts/docker-engine.sh start)"`.
images:
	bash scripts/build-images.sh --cpu

clean:
	rm -rf $(VENV) .pytest_cache build dist src/*.egg-info
