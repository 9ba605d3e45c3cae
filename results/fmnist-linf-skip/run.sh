#!/usr/bin/env bash
# The fmnist-linf-v2-short recipe trained twice side by side, one thread each, on the 2-core
# development machine: with the native kernels as of commit 6b7f86e (vectors of negligible terms
# skipped from p = 60) and as of its parent 0a003ef (flushed terms skipped from p = 400, through a
# slow any()), run from a git worktree of that commit. Same seed, data and conditions; each run's
# JSON-lines log has its seconds per epoch and its p. Then both checkpoints are certified on all
# 10,000 test images (interval bounds). Checkpoints go to $MODELS (not committed).
set -euo pipefail
cd "$(dirname "$0")"
REPO=$(git rev-parse --show-toplevel)
MODELS=${MODELS:-/tmp/linf-skip}
BEFORE=${BEFORE:-/tmp/certify-0a003ef}
mkdir -p "$MODELS"
[[ -d "$BEFORE" ]] || git -C "$REPO" worktree add --detach "$BEFORE" 0a003ef
OMP_NUM_THREADS=1 PYTHONPATH="$REPO" python -m certify train --recipe fmnist-linf-v2-short \
    --out "$MODELS/skip.pt" --log skip.jsonl --force -q &
OMP_NUM_THREADS=1 PYTHONPATH="$BEFORE" python -m certify train --recipe fmnist-linf-v2-short \
    --out "$MODELS/before.pt" --log before.jsonl --force -q &
wait
for name in skip before; do
  PYTHONPATH="$REPO" python -m certify run "$MODELS/$name.pt" --out "$name.tsv" --force -q
done
