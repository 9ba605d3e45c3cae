"""One process at a time per output: an exclusive lock held for a whole command.

Two commands writing the same results file or checkpoint would interleave rows or replace each
other's work. Each command that writes OUT holds ``flock`` on ``OUT.lock`` beside it while it runs;
a second one stops at once with the first one's PID. The lock file is removed on exit (a process
that opened it meanwhile notices, because the file it locked is no longer the one at the path).
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from certify.errors import UserError
from certify.fsutil import check_output_path

__all__ = ["OutputInUse", "lock_path", "output_lock"]


class OutputInUse(UserError):
    """Another process holds the output's lock."""


def lock_path(out: str | os.PathLike[str]) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".lock")


@contextmanager
def output_lock(out: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the exclusive lock of ``out`` for the duration of the block."""
    check_output_path(out)
    path = lock_path(out)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:  # e.g. a read-only file system, where access() said yes
            raise UserError(f"cannot write {out}: {err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputInUse(f"{out} is in use by PID {holder} (another certify command is "
                                  f"writing it); wait for it to finish or choose another output") from None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file between our open and our lock: take the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.close(fd)
