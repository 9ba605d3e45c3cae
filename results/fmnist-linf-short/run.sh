#!/usr/bin/env bash
# v1 hinge against the v2 objective on Fashion-MNIST at ε = 0.1, same short budget and width
# (recipes fmnist-linf-{v1,v2}-short: 5×256 net, 16 epochs), then deterministic ℓ∞ certification
# of all 10,000 test images with both bounds, and the plot. The two trainings ran side by side,
# one thread each (OMP_NUM_THREADS=1), on the 2-core development machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
for v in v1 v2; do
  [ -f models/fmnist-linf-$v-short.pt ] || OMP_NUM_THREADS=1 certify train --recipe fmnist-linf-$v-short \
      --out models/fmnist-linf-$v-short.pt --log results/fmnist-linf-short/train-$v.jsonl -q
  # the Lipschitz bound: $v.tsv was made on 2026-11-26 by this command without --bound, which was
  # the pure net's default then
  certify run models/fmnist-linf-$v-short.pt --out results/fmnist-linf-short/$v.tsv --bound lipschitz \
      --force -q
  # interval bounds, the default since 2026-11-27 (before, this file was made with --bound interval)
  certify run models/fmnist-linf-$v-short.pt --out results/fmnist-linf-short/$v-interval.tsv --force -q
done
certify plot results/fmnist-linf-short/{v1,v2,v1-interval,v2-interval}.tsv \
    --label "v1 hinge (Lipschitz)" --label "v2 mixture (Lipschitz)" \
    --label "v1 hinge (interval)" --label "v2 mixture (interval)" \
    --radii 0,0.02,0.05,0.08,0.1,0.12,0.15,0.2 \
    --out results/fmnist-linf-short/certified_accuracy.png --table results/fmnist-linf-short/table.md
