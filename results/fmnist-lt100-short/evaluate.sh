#!/usr/bin/env bash
# Evaluate one seed's models (run.sh's final checkpoints) into a seed directory of this folder:
# certify eval for every model, LADC on the CE model, and the Gaussian models' per-class
# certified accuracy from run.sh's TSVs (copied beside, with their sidecars).
#
#   results/fmnist-lt100-short/evaluate.sh MODELDIR results/fmnist-lt100-short/seedK
set -euo pipefail
models=${1:?usage: evaluate.sh MODELDIR SEEDDIR}; dest=${2:?usage: evaluate.sh MODELDIR SEEDDIR}
mkdir -p "$dest"
for name in ce ldam-drw vs bayias bayias-unimix cdb-w cdb-s absgd absgd-drw cdb-w-floor cdb-s-floor; do
  [ -f "$models/$name.pt" ] || continue
  certify eval "$models/$name.pt" --json "$dest/$name.eval.json" > /dev/null
done
[ -f "$models/ce.pt" ] || exit 0  # a partial run (ONLY=...): no LADC or certified models
certify ladc "$models/ce.pt" --out "$models/ce-ladc.pt" > "$dest/ce-ladc.log"
certify eval "$models/ce-ladc.pt" --json "$dest/ce-ladc.eval.json" > /dev/null
for name in gauss-ce gauss-ldam-drw gauss-vs gauss-bayias-unimix; do
  cp "$models/$name.tsv" "$models/$name.tsv.json" "$dest/"
  certify eval "$models/$name.pt" --results "$dest/$name.tsv" --radius 0 --radius 0.25 \
    --radius 0.5 --json "$dest/$name.eval.json" > /dev/null
done
cp "$models"/*.jsonl "$dest/"
