"""Keep freed memory in the process instead of handing it back to the OS (glibc only).

A batch of 8-qubit states is a few MB, allocated and freed many times per step. glibc returns
such blocks to the OS (mmap/trim) and the next step faults them back in page by page
(`python -m benchmarks.page_faults`: ~1,100 page faults per 8-qubit forward + backward at batch 256).
Raising glibc's mmap and trim thresholds keeps that memory mapped; peak memory is unchanged,
only released later. The setting is process-wide, so entry points opt in, never library code.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit
TRIM_THRESHOLD = 1024 * 1024 * 1024


def retain_freed_memory() -> dict:
    """Raise glibc's mmap threshold to its maximum (32 MiB) and the trim threshold to 1 GiB.

    Returns what was done, for the run's record: {"applied": bool, ...}; on a C library without
    mallopt (macOS, musl) nothing changes and the reason is returned.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError) as exc:
        return {"applied": False, "reason": f"no mallopt in the C library ({exc})"}
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not ok:
        return {"applied": False, "reason": "mallopt refused the thresholds"}
    return {"applied": True, "mmap_threshold": MMAP_THRESHOLD_MAX, "trim_threshold": TRIM_THRESHOLD}
