#!/usr/bin/env bash
# The comparison study of the README, on built-in simulated data: 4 models x 3 seeds on ZN, then
# on ZP, each model trained for 450 steps (about 10 minutes on 2 CPU cores), so about 4 hours
# in all. Runs go seed by seed (every model's seed 0 first); rerun the script after an
# interruption and finished runs are reused. SEEDS=1 for a first pass (about 1.5 hours).
# Every model is also validated on an independent held-out file (a few minutes each).
# Tables: studies/zn/table.md, studies/zp/table.md.
set -euo pipefail
EXPERTSIM=${EXPERTSIM:-expertsim}
SEEDS=${SEEDS:-3}
test -f data/study_zn.h5 || $EXPERTSIM simulate --detector zn -n 24000 --repeat 2 --seed 11 \
    -o data/study_zn.h5
# ZP: 98 % of responses are empty, so 25x the events for a comparable number with light
test -f data/study_zp.h5 || $EXPERTSIM simulate --detector zp -n 600000 --repeat 2 --seed 12 \
    -o data/study_zp.h5
# independent held-out files (other seeds; every particle twice for the floor; all test
# split): every model is validated on their events with light as well, the study's second table
test -f data/heldout_zn.h5 || $EXPERTSIM simulate --detector zn -n 200000 --repeat 2 --seed 21 \
    --split 0,0,1 -o data/heldout_zn.h5
test -f data/heldout_zp.h5 || $EXPERTSIM simulate --detector zp -n 4000000 --repeat 2 \
    --seed 22 --split 0,0,1 -o data/heldout_zp.h5
$EXPERTSIM study --data data/study_zn.h5 --configs training/study --seeds "$SEEDS" \
    --heldout data/heldout_zn.h5 -o studies/zn
$EXPERTSIM study --data data/study_zp.h5 --configs training/study --seeds "$SEEDS" \
    --heldout data/heldout_zp.h5 -o studies/zp
