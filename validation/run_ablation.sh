#!/usr/bin/env bash
# The ablation of the README (about an hour on 2 CPU cores): the comparison study's
# ExpertSim-3, the same without the counting step in training, the same without the collapse
# fix (no shared start), the same with balanced routing instead of the published router term,
# and one expert with the same terms; one seed, ZN built-in data with every particle simulated
# twice (the matched MC floor). Rerun it after an interruption:
# finished runs are reused. Table: studies/ablation_zn/table.md.
set -euo pipefail
EXPERTSIM=${EXPERTSIM:-expertsim}
test -f data/study_zn.h5 || $EXPERTSIM simulate --detector zn -n 24000 --repeat 2 --seed 11 \
    -o data/study_zn.h5
# the independent held-out file of the comparison study (validation/run_study.sh)
test -f data/heldout_zn.h5 || $EXPERTSIM simulate --detector zn -n 200000 --repeat 2 --seed 21 \
    --split 0,0,1 -o data/heldout_zn.h5
$EXPERTSIM study --data data/study_zn.h5 --configs training/ablation --seeds "${SEEDS:-1}" \
    --heldout data/heldout_zn.h5 -o studies/ablation_zn
