#!/usr/bin/env bash
# The comparison study's trained models on a large independent Monte Carlo file, for intervals
# the study's own test split (about 1,000 particles with light) is too small to give.
#
#   bash validation/heldout_check.sh zn|zp [STUDY_FOLDER] [SEED_FOLDER]
#
# Simulates an independent held-out file (ZN 200,000 events, ZP 4,000,000: 98 % of ZP
# responses are empty; every particle twice for the matched floor; other seeds than the study's
# data) into data/heldout_DET.h5 unless it exists, then validates every model of the study
# folder (default studies/DET, runs/*/seed0/model.pt) and the nearest-neighbour lookup of the
# study's training file on its events with light (three generations each), and prints each
# report's headline. Reports land in STUDY_FOLDER/heldout/.
set -euo pipefail
DETECTOR=${1:?usage: bash validation/heldout_check.sh zn|zp [STUDY_FOLDER] [SEED_FOLDER]}
STUDY=${2:-studies/$DETECTOR}
SEED=${3:-seed0}
EXPERTSIM=${EXPERTSIM:-.venv/bin/expertsim}
MC=data/heldout_$DETECTOR.h5
case "$DETECTOR" in
    zn) N=200000; MC_SEED=21 ;;
    zp) N=4000000; MC_SEED=22 ;;
    *) echo "detector must be zn or zp" >&2; exit 2 ;;
esac
test -f "$MC" || "$EXPERTSIM" simulate --detector "$DETECTOR" -n "$N" --repeat 2 \
    --seed "$MC_SEED" --split 0,0,1 -o "$MC"
mkdir -p "$STUDY/heldout"
for MODEL in "$STUDY"/runs/*/"$SEED"/model.pt; do
    NAME=$(basename "$(dirname "$(dirname "$MODEL")")")
    "$EXPERTSIM" validate --model "$MODEL" --reference "$MC" --min-photon-sum 1 \
        -o "$STUDY/heldout/$NAME" --overwrite
done
"$EXPERTSIM" validate --lookup "data/study_$DETECTOR.h5" --reference "$MC" --min-photon-sum 1 \
    -o "$STUDY/heldout/nn-lookup" --overwrite
