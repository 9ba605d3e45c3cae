#!/usr/bin/env bash
# The fmnist-linf-v2-short recipe trained twice side by side, one thread each, on the 2-core
# development machine: with the native kernels as of commit 24c098d (powers for 7 ≲ p < 60 by a
# table and a polynomial) and as of its grandparent b9c60b0 (log2 then exp2 at every p), run from a git
# worktree of that commit. Same seed, data and conditions; each run's JSON-lines log has its
# seconds per epoch and its p. Then both checkpoints are certified on all 10,000 test images
# (interval bounds, the default). Checkpoints go to $MODELS (not committed).
set -euo pipefail
cd "$(dirname "$0")"
REPO=$(git rev-parse --show-toplevel)
MODELS=${MODELS:-/tmp/linf-tables}
BEFORE=${BEFORE:-/tmp/certify-b9c60b0}
mkdir -p "$MODELS"
[[ -d "$BEFORE" ]] || git -C "$REPO" worktree add --detach "$BEFORE" b9c60b0
OMP_NUM_THREADS=1 PYTHONPATH="$REPO" python -m certify train --recipe fmnist-linf-v2-short \
    --out "$MODELS/tables.pt" --log tables.jsonl --force -q &
OMP_NUM_THREADS=1 PYTHONPATH="$BEFORE" python -m certify train --recipe fmnist-linf-v2-short \
    --out "$MODELS/before.pt" --log before.jsonl --force -q &
wait
for name in tables before; do
  PYTHONPATH="$REPO" python -m certify run "$MODELS/$name.pt" --out "$name.tsv" --force -q
done
