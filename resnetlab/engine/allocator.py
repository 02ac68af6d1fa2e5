"""Keep big freed buffers for reuse instead of returning them to the OS (glibc `mallopt`).

glibc serves allocations above 32 MiB with a fresh `mmap` and unmaps them on free, so every new float batch of
(64, 3, 224, 224) (38.5 MB) page-faults all of its 9,400 pages again. Raising the mmap and trim thresholds lets the
heap reuse that memory: measured on this 2-core machine, normalising one such batch took 26.9 ms before and
13.8 ms after (benchmarks/RESULTS.md). This is what Intel's PyTorch CPU guide gets from jemalloc/tcmalloc, without
preloading a library. Set RESNETLAB_MALLOPT=0 to leave the allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
THRESHOLD = 1 << 30  # allocations up to 1 GiB come from the heap; bigger ones still get their own mapping


@functools.lru_cache(maxsize=1)
def keep_freed_memory(threshold: int = THRESHOLD) -> bool:
    """Raise glibc's mmap/trim thresholds once per process; True when they were set (Linux with glibc only)."""
    if os.environ.get("RESNETLAB_MALLOPT", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold)) and bool(mallopt(M_TRIM_THRESHOLD, threshold))
