#!/usr/bin/env bash
# The fmnist-linf-v2-short recipe trained twice, one run after the other, each with both threads of
# the 2-core development machine (as a user runs it): with the native kernels as of commit a05c339
# (powers by table for 7 ≲ p < 60, ranges on torch's own OpenMP threads) and as of b9c60b0 (log2
# then exp2 at every p, ranges on Python threads beside torch's spinning ones), the latter from a
# git worktree of that commit. Same seed, data and conditions; each run's JSON-lines log has its
# seconds per epoch and its p. Then both checkpoints are certified on all 10,000 test images
# (interval bounds, the default). Checkpoints go to $MODELS (not committed).
set -euo pipefail
cd "$(dirname "$0")"
REPO=$(git rev-parse --show-toplevel)
MODELS=${MODELS:-/tmp/linf-openmp}
BEFORE=${BEFORE:-/tmp/certify-b9c60b0}
mkdir -p "$MODELS"
[[ -d "$BEFORE" ]] || git -C "$REPO" worktree add --detach "$BEFORE" b9c60b0
PYTHONPATH="$REPO" python -m certify train --recipe fmnist-linf-v2-short \
    --out "$MODELS/openmp.pt" --log openmp.jsonl --force -q
PYTHONPATH="$BEFORE" python -m certify train --recipe fmnist-linf-v2-short \
    --out "$MODELS/before.pt" --log before.jsonl --force -q
for name in openmp before; do
  PYTHONPATH="$REPO" python -m certify run "$MODELS/$name.pt" --out "$name.tsv" --force -q
done
