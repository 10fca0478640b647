#!/usr/bin/env bash
# The ALICE O2 drop-in check of a gated model on built-in data (README, "ALICE O2"):
# simulate an independent Monte Carlo file with empty responses (every particle twice, for the
# matched floor), validate the whole system on all its events (gate first), export for O2,
# run the export through the O2 replica (batch 1, one thread) on the same particles and compare
# it with the package sampler; then time a realistic particle stream through both.
#
#   bash validation/o2_check.sh DETECTOR MODEL [N_PARTICLES]
#   bash validation/o2_check.sh zn runs/zn_cpu/model.pt 50000
#
# MODEL must carry an empty-response gate (expertsim train makes one; expertsim gate adds one
# to an older model file). Writes under $OUT (default o2_check/DETECTOR). Costs on 2 CPU cores:
# ZN 50,000 particles ~13 min, ZP 150,000 ~20 min (the replica runs one particle at a time, and
# the validation holds every image: ~9 GB of memory for ZP at this size).
set -euo pipefail
DETECTOR=${1:?detector: zn or zp}
MODEL=${2:?a gated model file}
N_PARTICLES=${3:-50000}
EXPERTSIM=${EXPERTSIM:-.venv/bin/expertsim}
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-o2_check/$DETECTOR}
GENERATIONS=${GENERATIONS:-2}
mkdir -p "$OUT"
MC="$OUT/mc.h5"
test -f "$MC" || "$EXPERTSIM" simulate --detector "$DETECTOR" -n $((2 * N_PARTICLES)) --repeat 2 \
    --seed 77 -o "$MC"
"$EXPERTSIM" validate --model "$MODEL" --reference "$MC" --generations "$GENERATIONS" \
    -o "$OUT/package" --overwrite
"$EXPERTSIM" export --model "$MODEL" -o "$OUT/onnx" --overwrite
"$EXPERTSIM" validate --export "$OUT/onnx" --reference "$MC" --generations "$GENERATIONS" \
    -o "$OUT/o2" --against "$OUT/package" --overwrite
"$PYTHON" benchmarks/stream.py --model "$MODEL" --export "$OUT/onnx" --particles "$MC" \
    -n 20000 -o "$OUT/stream.json"
