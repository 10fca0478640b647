# Two entry points for a fresh machine:
#   make run    set up, then run the main job on built-in simulated data
#   make test   set up, then run the test suite
# Set-up makes a virtual environment in $(VENV). PyTorch: if the environment already has a
# torch (for example a CUDA build you installed), it is kept; otherwise $(TORCH_SPEC) is
# installed, which on these machines is the CPU wheel lying on disk.

PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
RUN_DIR    ?= runs/main
BIN        := $(VENV)/bin

.PHONY: setup run test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install "$(TORCH_SPEC)"
	$(BIN)/pip install -e '.[dev]'
	touch $@

run: setup
	$(BIN)/expertsim simulate --detector zn -n 100000 --seed 1 -o $(RUN_DIR)/zn.h5
	$(BIN)/expertsim inspect $(RUN_DIR)/zn.h5 --plot $(RUN_DIR)/zn.png

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
