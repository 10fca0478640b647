# Two entry points for a fresh machine:
#   make run    set up, then run the main job on built-in simulated data
#   make test   set up, then run the test suite
# Set-up makes a virtual environment in $(VENV). PyTorch: if the environment already has a
# torch (for example a CUDA build you installed), it is kept; otherwise $(TORCH_SPEC) is
# installed, which on these machines is the CPU wheel lying on disk.

PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN        := $(VENV)/bin

.PHONY: setup run test clean slurm-deps

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install "$(TORCH_SPEC)"
	$(BIN)/pip install -e '.[dev]'
	touch $@

# Main job on built-in data: simulate and train the 3-expert smoke model (with its empty-response
# gate), simulate an independent held-out Monte Carlo sample (every particle twice, for the
# matched noise floor), generate on its conditions and validate the generators on the events
# with light, score the nearest-neighbour lookup table of the training events the same way (the
# baseline to beat), validate the whole system (gate first) on all events and on 300 Pb-Pb
# collisions (spectator neutrons summed per collision side, against the built-in MC), export
# the model for ALICE O2 (generator and classifier ONNX, checked in ONNX Runtime), and score
# the export run the way O2 runs it (the replica: batch 1, one thread, truncation, O2's pixel
# order) against the package's all-events report. Ends with where the reports, the export and
# the runs are.
# Its reports and export are written with --overwrite, so that it can be run again.
run: setup
	$(BIN)/expertsim train --config training/smoke.yaml
	test -f data/smoke_zn_mc.h5 || $(BIN)/expertsim simulate --detector zn -n 10000 --repeat 2 \
		--seed 99 -o data/smoke_zn_mc.h5
	$(BIN)/expertsim validate --model runs/smoke/model.pt --reference data/smoke_zn_mc.h5 \
		--min-photon-sum 1 -o runs/smoke/report --overwrite
	$(BIN)/expertsim validate --lookup data/smoke_zn.h5 --reference data/smoke_zn_mc.h5 \
		--min-photon-sum 1 -o runs/smoke/lookup_report --overwrite
	$(BIN)/expertsim validate --model runs/smoke/model.pt --reference data/smoke_zn_mc.h5 \
		-o runs/smoke/report_all --pbpb 300 --overwrite
	$(BIN)/expertsim export --model runs/smoke/model.pt --format onnx -o runs/smoke/onnx \
		--overwrite
	$(BIN)/expertsim validate --export runs/smoke/onnx --reference data/smoke_zn_mc.h5 \
		-o runs/smoke/o2_report --against runs/smoke/report_all --overwrite
	@echo "MLflow runs: sqlite:///mlflow.db, experiment expertsim-smoke" \
		"(browse: pip install mlflow; mlflow ui --backend-store-uri sqlite:///mlflow.db)"

# The SLURM tests start a real single-node SLURM: install it when we are root on Debian and it
# is missing (elsewhere those tests skip and say why).
slurm-deps:
	@if ! command -v sbatch >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && \
		chmod +x /usr/sbin/policy-rc.d && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends slurm-wlm munge; fi

test: setup slurm-deps
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
