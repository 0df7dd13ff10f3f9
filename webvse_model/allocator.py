"""Let glibc keep large freed buffers for reuse instead of handing them back to the kernel.

Why: glibc serves an allocation above its mmap threshold (dynamic, at most 32 MiB) with fresh
pages from the kernel and unmaps them on free, and trims the heap whenever its free top
exceeds the trim threshold. A CNN forward allocates and frees activations of several MiB per
layer per batch, so without this every batch page-faults its activations in again and the
kernel zeroes them: on the 2-core development machine (bf16, 5,489 images in the process's
main thread) the features step ran at 77.6 img/s with 11.6 s of kernel time, and at 87.0 img/s
with 0.7 s once both thresholds are raised (batch 64: 58 -> 88 img/s). Training gains ~6 %.

The thresholds apply to the main arena, i.e. to work done in the process's main thread (where
Prefect runs a flow's tasks that are called, not submitted). Threads get arenas of their own
that these settings do not cover; :func:`tasks.imaging.features.forward_batch_size` keeps the
CPU batch small so that a forward in a worker thread mostly reuses memory too.

Process-wide and idempotent; a no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
KEPT_BYTES = 256 * 2**20  # allocations up to this size come from (and return to) the heap


@cache
def keep_freed_memory_for_reuse() -> bool:
    """Raise glibc's mmap and trim thresholds to ``KEPT_BYTES``; True when they were set."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): leave the allocator as it is
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, KEPT_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, KEPT_BYTES))
