"""Write files so that readers only ever see the old content or the complete new content.

A crash or Ctrl-C half-way through writing a results table, checkpoint or plot must not leave a
truncated file under the real name; so we write a temporary file in the same directory (same
filesystem, so the rename is atomic), fsync it, and ``os.replace`` it over the target.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from certify.errors import UserError

__all__ = ["atomic_writer", "atomic_write_bytes", "atomic_write_text", "check_output_path",
           "fsync_dir"]


def check_output_path(path: str | os.PathLike[str], what: str = "") -> None:
    """Refuse an output whose directory is missing, before any work that would be lost.

    ``what`` names the file in the message ("checkpoint", "log"): "cannot write checkpoint
    m.pt: directory runs does not exist". A parent that is a file, or a directory this process may
    not write, gets its own reason.
    """
    p = Path(path)
    parent = p.parent
    name = f"{what} {p}" if what else str(p)
    if not parent.exists():
        raise UserError(f"cannot write {name}: directory {parent} does not exist")
    if not parent.is_dir():
        raise UserError(f"cannot write {name}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {name}: directory {parent} is not writable")


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Flush a directory entry so a completed rename survives power loss (best effort, POSIX only)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _open_tmp(path: Path) -> tuple[Path, int]:
    """Create a fresh hidden temp file next to ``path``, keeping its extension.

    Keeping the extension lets tools that pick a format from the name (matplotlib) write the temp
    file directly. ``os.open`` with mode 0o666 lets the umask apply, like a plain ``open`` would,
    so the final file gets the usual permissions (``mkstemp`` would give 0o600).
    """
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        return tmp, fd
    raise FileExistsError(f"could not create a temporary file next to {path}")


@contextlib.contextmanager
def atomic_writer(
    path: str | os.PathLike[str],
    mode: str = "w",
    *,
    encoding: str | None = "utf-8",
    newline: str | None = "",
) -> Iterator[IO[Any]]:
    """Yield a file object for a temp file; on clean exit it replaces ``path``, on error it vanishes.

    ``mode`` is ``"w"`` (text; ``encoding``/``newline`` apply, default UTF-8 and no newline
    translation) or ``"wb"`` (binary). Errors from the filesystem propagate as ``OSError``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_writer mode must be 'w' or 'wb', got {mode!r}")
    target = Path(path)
    tmp, fd = _open_tmp(target)
    try:
        if mode == "wb":
            f: IO[Any] = os.fdopen(fd, "wb")
        else:
            f = os.fdopen(fd, "w", encoding=encoding, newline=newline)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically."""
    with atomic_writer(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Replace ``path`` with ``text`` atomically (written as-is: no newline translation)."""
    with atomic_writer(path, "w", encoding=encoding) as f:
        f.write(text)
