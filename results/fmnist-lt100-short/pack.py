"""Pack run.sh's final checkpoints for the trip back from the GPU machine (at most 8 files of
16 MiB each): three archives, with an optional suffix per seed."""

import sys
import tarfile
from pathlib import Path

src, dst = Path(sys.argv[1]) / "final", Path(sys.argv[2])
suffix = sys.argv[3] if len(sys.argv) > 3 else ""
groups = {"models-a": ["ce", "ldam-drw", "vs", "bayias", "bayias-unimix"],
          "models-b": ["cdb-w", "cdb-s", "absgd", "absgd-drw"],
          "models-c": ["gauss-ce", "gauss-ldam-drw", "gauss-vs", "gauss-bayias-unimix"],
          "models-d": ["cdb-w-floor", "cdb-s-floor"]}
for archive, names in groups.items():
    present = [name for name in names if (src / f"{name}.pt").exists()]
    if present:  # no empty archives: only 8 files come back
        with tarfile.open(dst / f"{archive}{suffix}.tar", "w") as tar:
            for name in present:
                tar.add(src / f"{name}.pt", arcname=f"{name}.pt")
