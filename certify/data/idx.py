"""Reader for the IDX files that MNIST and Fashion-MNIST ship as.

IDX layout: two zero bytes, a type byte (0x08 = unsigned byte), a byte with the number of
dimensions, one big-endian uint32 per dimension, then the values in row-major order. The
files may be gzipped (as distributed) or not (as torchvision leaves them after extracting).
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from certify.errors import UserError

UBYTE = 0x08
GZIP_MAGIC = b"\x1f\x8b"

# (images, labels) file stems per split, as published by both datasets.
IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _read_maybe_gzipped(path: Path) -> bytearray:
    """File contents, decompressed if the file starts with the gzip magic (whatever its name)."""
    try:
        raw = path.read_bytes()
        if raw[:2] == GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"cannot read {path}: {exc}") from exc
    return bytearray(raw)  # writable, so torch.frombuffer can share it without a warning


def read_idx(path: str | Path) -> Tensor:
    """Parse an unsigned-byte IDX file into a uint8 tensor of the shape its header declares.

    Anything that does not match the format (bad magic, unsupported type, size not matching the
    header) raises UserError naming the file, since it means a corrupt or wrong download.
    """
    path = Path(path)
    buf = _read_maybe_gzipped(path)
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0:
        raise UserError(f"{path}: not an IDX file (bad magic {bytes(buf[:4]).hex() or 'empty'})")
    type_code, ndim = buf[2], buf[3]
    if type_code != UBYTE:
        raise UserError(f"{path}: IDX type 0x{type_code:02x} is not supported (only unsigned byte, 0x08)")
    header_len = 4 + 4 * ndim
    if len(buf) < header_len:
        raise UserError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", buf[4:header_len])
    count = math.prod(shape)
    if len(buf) - header_len != count:
        raise UserError(
            f"{path}: IDX header declares shape {shape} ({count} bytes) "
            f"but the file holds {len(buf) - header_len} data bytes (truncated or corrupt)"
        )
    if count == 0:
        return torch.zeros(shape, dtype=torch.uint8)
    return torch.frombuffer(buf, dtype=torch.uint8, offset=header_len, count=count).reshape(shape)


@dataclass(frozen=True)
class IdxFormat:
    """Where and how an MNIST-style dataset is stored.

    `torchvision_dir` is the folder torchvision downloads into (`<root>/<torchvision_dir>/raw/`).
    """

    torchvision_dir: str

    def _candidates(self, directory: Path, shared_root: bool) -> list[Path]:
        nested = directory / self.torchvision_dir / "raw"
        # MNIST and Fashion-MNIST use identical file names, so loose files in a directory shared
        # by several datasets cannot tell which one they are; only the named subfolder counts there.
        return [nested] if shared_root else [directory, nested]

    @staticmethod
    def _file(directory: Path, stem: str) -> Path | None:
        for path in (directory / stem, directory / f"{stem}.gz"):  # prefer the extracted copy
            if path.is_file():
                return path
        return None

    def locate(self, directory: Path, shared_root: bool = False) -> Path | None:
        """The directory under `directory` that holds all four IDX files, or None."""
        for candidate in self._candidates(directory, shared_root):
            if all(self._file(candidate, stem) for stems in IDX_FILES.values() for stem in stems):
                return candidate
        return None

    def read(self, directory: Path, split: str) -> tuple[Tensor, Tensor]:
        """Images (uint8, N x 1 x H x W) and labels (int64, N) of `split` from `directory`."""
        image_stem, label_stem = IDX_FILES[split]
        image_path = self._file(directory, image_stem)
        label_path = self._file(directory, label_stem)
        if image_path is None or label_path is None:
            raise UserError(f"{directory}: missing {image_stem}[.gz] or {label_stem}[.gz]")
        images = read_idx(image_path)
        labels = read_idx(label_path)
        if images.dim() != 3:
            raise UserError(f"{image_path}: expected 3-d IDX images, got shape {tuple(images.shape)}")
        if labels.dim() != 1:
            raise UserError(f"{label_path}: expected 1-d IDX labels, got shape {tuple(labels.shape)}")
        if images.shape[0] != labels.shape[0]:
            raise UserError(
                f"{image_path}: {images.shape[0]} images but {label_path.name} has {labels.shape[0]} labels"
            )
        return images.unsqueeze(1), labels.to(torch.int64)
