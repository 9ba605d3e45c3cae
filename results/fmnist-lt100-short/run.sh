#!/usr/bin/env bash
# Long-tailed methods on Fashion-MNIST-LT (ρ = 100) against plain CE, at one shared short recipe
# (certify/recipes/fmnist-lt100-short.toml), then Gaussian-augmentation models (σ = 0.25) with plain
# CE and with long-tailed losses, certified by randomized smoothing.
#
#   results/fmnist-lt100-short/run.sh OUTDIR
#
# Environment: EPOCHS (default: the recipe's 30), DRW (the epoch DRW / the ABSGD stage switch at,
# default 24 = the recipe's lr drop), N (smoothing samples, default 10000), SKIP (certify every
# SKIP-th test image, default 10), JOBS (trainings at once, default 5), DEVICE (default cuda if
# present), DATA (the Fashion-MNIST directory, default: the loader's own search), SEED (the
# training seed, default 0; the long-tailed view is the same for every seed), ONLY (names of the
# runs to do, default all).
set -euo pipefail
out=${1:?usage: run.sh OUTDIR}
mkdir -p "$out"
EPOCHS=${EPOCHS:-30}; DRW=${DRW:-24}; SEED=${SEED:-0}; N=${N:-10000}; SKIP=${SKIP:-10}; JOBS=${JOBS:-5}
DEVICE=${DEVICE:-$(python3 -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}
data=(); [ -n "${DATA:-}" ] && data=(--data-dir "$DATA")
certify=(python3 -m certify.cli)

train() {  # NAME FLAGS...: one run of the shared recipe with a method's flags
  local name=$1; shift
  "${certify[@]}" train --recipe fmnist-lt100-short --epochs "$EPOCHS" --seed "$SEED" --device "$DEVICE" \
    "${data[@]}" --quiet --out "$out/$name.pt" "$@" > "$out/$name.train.log" 2>&1 \
    || { echo "FAILED: $name"; tail -3 "$out/$name.train.log"; }
}

runs=(
  "ce"
  "ldam-drw --loss ldam --reweight drw --drw-epoch $DRW"
  "vs --loss vs"
  "bayias --loss bayias"
  "bayias-unimix --loss bayias --unimix"
  "cdb-w --reweight cdb"
  "cdb-s --sampler cdb"
  "cdb-w-floor --reweight cdb --cdb-floor 0.05"
  "cdb-s-floor --sampler cdb --sampler-floor 0.05"
  "absgd --optimizer absgd --absgd-lambda 5 --absgd-init-lambda 200 --absgd-gamma 0.7 --absgd-lambda-epoch $DRW"
  "absgd-drw --optimizer absgd --absgd-lambda 5 --absgd-init-lambda 200 --absgd-gamma 0.7 --absgd-lambda-epoch $DRW --reweight drw --drw-epoch $DRW"
  "gauss-ce --objective gaussian --sigma 0.25"
  "gauss-ldam-drw --objective gaussian --sigma 0.25 --loss ldam --reweight drw --drw-epoch $DRW"
  "gauss-vs --objective gaussian --sigma 0.25 --loss vs"
  "gauss-bayias-unimix --objective gaussian --sigma 0.25 --loss bayias --unimix"
)
for spec in "${runs[@]}"; do
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" ${spec%% *} "* ]]; then continue; fi
  # shellcheck disable=SC2086
  train $spec &
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 1; done
done
wait

python3 "$(dirname "$0")/export_final.py" "$out"  # certify the files that get kept
for name in gauss-ce gauss-ldam-drw gauss-vs gauss-bayias-unimix; do
  [ -f "$out/final/$name.pt" ] || continue
  "${certify[@]}" run "$out/final/$name.pt" --out "$out/$name.tsv" --n "$N" --skip "$SKIP" --batch "${BATCH:-1000}" \
    --device "$DEVICE" "${data[@]}" --quiet > "$out/$name.run.log" 2>&1 &
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 1; done
done
wait
ls "$out"
