"""Keep freed array memory in the process instead of handing it back to the OS after every training step.

glibc serves blocks over its mmap threshold (128 KiB, growing as such blocks are freed) with fresh mappings, and
gives free memory at the top of the heap back to the OS. A training step allocates and frees the same
activations every time, so each step touched all of them as new pages: 6,300 page faults (25 MiB) per report-2
step at batch 128, which took 15 ms on the Numba backend instead of 6.5. With a fixed 32 MiB mmap threshold
(glibc's largest) and a 1 GiB trim threshold, the freed blocks are reused and a step faults about once.

Applied when xpnet is imported, on glibc only, and not if the user set glibc's own ``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_`` (set ``MALLOC_TRIM_THRESHOLD_=131072``, glibc's default, to keep its behaviour).
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD = 32 << 20  # glibc's maximum: blocks at least this big (e.g. a preloaded data set) still get mappings
TRIM_THRESHOLD = 1 << 30   # free memory kept at the top of the heap before glibc trims it
USER_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

_applied = False


def keep_freed_memory() -> bool:
    """Set the thresholds above through ``mallopt``; True if they are in force (now or already)."""
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in USER_VARIABLES):
        return False
    libc = ctypes.CDLL("libc.so.6")
    _applied = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                                           TRIM_THRESHOLD))
    return _applied


def applied() -> bool:
    """Whether xpnet's thresholds are in force in this process."""
    return _applied


keep_freed_memory()
