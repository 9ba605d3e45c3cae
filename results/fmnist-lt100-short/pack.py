"""Pack a run.sh output directory for the trip back from the GPU machine (at most 8 files of
16 MiB): checkpoints as final exports (no optimizer state) in three archives, logs in a fourth."""

import sys
import tarfile
from pathlib import Path

import torch

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
suffix = sys.argv[3] if len(sys.argv) > 3 else ""  # one set of archives per seed
groups = {"models-a": ["ce", "ldam-drw", "vs", "bayias", "bayias-unimix"],
          "models-b": ["cdb-w", "cdb-s", "absgd", "absgd-drw"],
          "models-c": ["gauss-ce", "gauss-ldam-drw", "gauss-vs", "gauss-bayias-unimix"]}
for archive, names in groups.items():
    with tarfile.open(dst / f"{archive}{suffix}.tar", "w") as tar:
        for name in names:
            path = src / f"{name}.pt"
            if not path.exists():
                continue
            raw = torch.load(path, map_location="cpu", weights_only=True)
            raw["resume_state"] = {}
            final = src / "final" / f"{name}.pt"
            final.parent.mkdir(exist_ok=True)
            torch.save(raw, final)
            tar.add(final, arcname=f"{name}.pt")
with tarfile.open(dst / f"logs{suffix}.tar.gz", "w:gz") as tar:
    for path in sorted(src.iterdir()):
        if path.suffix in (".jsonl", ".log", ".tsv", ".json"):
            tar.add(path, arcname=path.name)
