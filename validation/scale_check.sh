#!/usr/bin/env bash
# Validation at production scale: time and peak memory of `expertsim validate` on N generated
# events against N simulated ones (ZN by default).
#
#   bash validation/scale_check.sh MODEL [N_EVENTS] [DETECTOR]
#
# Simulates N events (N/2 particles, each twice: the matched MC floor) into
# runs/scale/mc_N.h5 unless it exists, generates once on them with MODEL (unless the sample
# exists), then validates with one generation under GNU time and prints the wall time and the
# peak resident memory of the validation alone. Everything lands in runs/scale/.
set -euo pipefail
MODEL=${1:?usage: bash validation/scale_check.sh MODEL [N_EVENTS] [DETECTOR]}
N=${2:-1000000}
DETECTOR=${3:-zn}
EXPERTSIM=${EXPERTSIM:-.venv/bin/expertsim}
OUT=runs/scale
mkdir -p "$OUT"
MC="$OUT/mc_${DETECTOR}_$N.h5"
GEN="$OUT/gen_${DETECTOR}_$N.h5"
test -f "$MC" || "$EXPERTSIM" simulate --detector "$DETECTOR" -n "$N" --repeat 2 --seed 21 -o "$MC"
test -f "$GEN" || "$EXPERTSIM" sample --model "$MODEL" --conditions "$MC" -o "$GEN" --threads 2
/usr/bin/time -v "$EXPERTSIM" validate --generated "$GEN" --reference "$MC" \
    -o "$OUT/report_${DETECTOR}_$N" --overwrite 2> "$OUT/time_${DETECTOR}_$N.txt" \
    || { tail -5 "$OUT/time_${DETECTOR}_$N.txt"; exit 1; }
grep -E "Elapsed \(wall clock\)|Maximum resident set size" "$OUT/time_${DETECTOR}_$N.txt"
