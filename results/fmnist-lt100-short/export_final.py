"""Write OUTDIR/final/NAME.pt for every OUTDIR/NAME.pt: the same checkpoint without its optimizer
state (a final export, half the size). run.sh certifies these, so the results' sidecars name the
files that travel back from the GPU machine and get committed."""

import sys
from pathlib import Path

import torch

src = Path(sys.argv[1])
(src / "final").mkdir(exist_ok=True)
for path in sorted(src.glob("*.pt")):
    raw = torch.load(path, map_location="cpu", weights_only=True)
    raw["resume_state"] = {}
    torch.save(raw, src / "final" / path.name)
