#!/usr/bin/env bash
# Fashion-MNIST with 40% symmetric label noise, short budget (lenet, 10k noisy training images,
# 15 epochs, SGD): plain CE against label smoothing, LogitClip, the α-loss and CALS; each epoch
# logs ζ and memorization, then `certify eval` measures clean test accuracy, ECE and average-k.
# Checkpoints go to $MODELS (not committed); logs, eval JSON and diagrams stay here.
set -euo pipefail
cd "$(dirname "$0")"
MODELS=${MODELS:-/tmp/noisy}
mkdir -p "$MODELS"
common=(--dataset fashion-mnist --arch lenet --objective classify --label-noise symmetric:0.4
        --train-count 10000 --val-count 5000 --susceptibility 128 --epochs 15 --batch 128
        --lr 0.05 --lr-step 10 --gamma 0.1 --seed 0 -q)
run() {
  name=$1; shift
  [ -f "$MODELS/$name.pt" ] || certify train "${common[@]}" "$@" --out "$MODELS/$name.pt" --log "$name.jsonl"
  certify eval "$MODELS/$name.pt" --k 2 --diagram "$name.reliability.png" --json "$name.eval.json" > "$name.eval.txt"
}
run ce
run label-smoothing --label-smoothing 0.1
run logitclip --logit-clip 1.5
run alpha3 --loss alpha --alpha 3
run cals --loss cals
# Susceptibility compares models trained with the same loss: plain CE on clean labels (nothing to
# memorize) and plain CE on 2000 noisy images for 40 epochs (memorizes), beside `ce` above.
run ce-clean --label-noise none
run ce-memorize --train-count 2000 --epochs 40 --lr-step 40
# Calibration on clean labels, where CALS's margin constraint is active: CE (ce-clean above)
# against label smoothing and CALS.
run label-smoothing-clean --label-noise none --label-smoothing 0.1
run cals-clean --label-noise none --loss cals
