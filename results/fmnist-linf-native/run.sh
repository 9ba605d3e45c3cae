#!/usr/bin/env bash
# The fmnist-linf-v2-short recipe trained twice side by side, one thread each, on the 2-core
# development machine: with the native lp_dist kernels (the default) and without them
# (CERTIFY_NATIVE=0: the compiled kernels at every p, the path before they existed). Same seed,
# same data, same conditions; each run's JSON-lines log has its seconds per epoch and the p it
# trained at. Then each checkpoint is certified on all 10,000 test images (interval bounds).
# Checkpoints go to $MODELS (not committed).
set -euo pipefail
cd "$(dirname "$0")"
MODELS=${MODELS:-/tmp/linf-native}
mkdir -p "$MODELS"
OMP_NUM_THREADS=1 certify train --recipe fmnist-linf-v2-short --out "$MODELS/native.pt" \
    --log native.jsonl --force -q &
OMP_NUM_THREADS=1 CERTIFY_NATIVE=0 certify train --recipe fmnist-linf-v2-short \
    --out "$MODELS/compiled.pt" --log compiled.jsonl --force -q &
wait
for name in native compiled; do
  certify run "$MODELS/$name.pt" --out "$name.tsv" --force -q
done
