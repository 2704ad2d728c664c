"""How a CPU process's C heap treats the large blocks torch allocates and frees at every step.

By default glibc gives each block over its mmap threshold (which it raises to 32 MB at most)
pages of its own and hands them back to the kernel when freed, and gives back the heap's free
top beyond its trim threshold: a full scene's activations, and the scoring's SSIM maps, then
fault their pages in afresh at every forward. On 2 cores (BENCHMARKS.md, bench/heap.py) a
scene predicted with the 4 rotations took 2.7x less time kept in the heap (demo model; 2.2x the
paper's), and `make demo`'s scoring 31 s instead of 44. The cost is memory kept: that
prediction peaked at 0.83 GB instead of 0.59 (the paper's model 1.93 instead of 1.08).
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
# above a full scene's activation with the rotations (4 views x 9 frames x 16 features x 128 x
# 128 float32 is 38 MB; the paper's 42 features, 99 MB)
MMAP_THRESHOLD = 128 << 20
TRIM_THRESHOLD = 512 << 20


def keep_freed_memory() -> None:
    """Blocks up to MMAP_THRESHOLD come from the heap, and up to TRIM_THRESHOLD of its free top
    stays there. Nothing where the C library is not glibc, or where the user set malloc's
    thresholds already (GLIBC_TUNABLES, MALLOC_*_ variables): theirs stand."""
    if not sys.platform.startswith("linux") or _set_by_user():
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, or no such library
        return
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def _set_by_user() -> bool:
    return "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "") or any(
        os.environ.get(name) for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    )
