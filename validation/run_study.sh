#!/usr/bin/env bash
# The comparison study of the README, on built-in simulated data (about 45 minutes on 2 CPU
# cores): 6 models x 3 seeds on ZN, then on ZP. Rerun it after an interruption: finished runs
# are reused. Tables: studies/zn/table.md, studies/zp/table.md.
set -euo pipefail
EXPERTSIM=${EXPERTSIM:-expertsim}
test -f data/study_zn.h5 || $EXPERTSIM simulate --detector zn -n 24000 --repeat 2 --seed 11 \
    -o data/study_zn.h5
test -f data/study_zp.h5 || $EXPERTSIM simulate --detector zp -n 120000 --repeat 2 --seed 12 \
    -o data/study_zp.h5
$EXPERTSIM study --data data/study_zn.h5 --configs training/study --seeds 3 -o studies/zn
# ZP: 98 % of responses are empty, so 5x the events and 12 epochs give a similar step count
$EXPERTSIM study --data data/study_zp.h5 --configs training/study --seeds 3 -o studies/zp \
    --set train.epochs=12
