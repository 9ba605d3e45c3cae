"""Keep glibc from returning large freed blocks to the OS between forward passes.

A CPU forward over a certification batch (1000 noisy copies) allocates activations of tens of MB,
above glibc's default 32 MiB mmap threshold, so every pass maps fresh pages and page-faults through
them: on a 2-core machine LeNet ran 1.5× slower that way (benchmarks/certify_throughput.py).
Raising the mmap and trim thresholds lets the freed memory be reused instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from <malloc.h>
M_MMAP_THRESHOLD = -3
OPT_OUT = "CERTIFY_NO_MALLOC_TUNING"

_tuned: bool | None = None


def tune_malloc() -> bool:
    """Raise glibc's mmap/trim thresholds once per process; True when they are in effect.

    Does nothing (returns False) off Linux, without glibc, or when $CERTIFY_NO_MALLOC_TUNING is set.
    The cost is that the process keeps freed memory for reuse rather than handing it back.
    """
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if not sys.platform.startswith("linux") or os.environ.get(OPT_OUT):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _tuned = bool(mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1))
    return _tuned
