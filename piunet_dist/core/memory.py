"""How a CPU process's C heap treats the large blocks torch allocates and frees at every step.

By default glibc gives each block over its mmap threshold (which it raises to 32 MiB at most)
pages of its own and hands them back to the kernel when freed, and gives back the heap's free
top beyond its trim threshold: a full scene's activations, and the scoring's SSIM maps, then
fault their pages in afresh at every forward. On 2 cores (BENCHMARKS.md, bench/heap.py) a
scene predicted with the 4 rotations took 2.5x less time kept in the heap (demo model; 2.0x the
paper's), and `make demo`'s scoring 31 s instead of 44. The cost is memory kept: that
prediction peaked at 795 MiB instead of 594 (the paper's model 1.87 GiB instead of 1.05).
On a GPU the model's activations are not in this heap, and little changes.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
# above a full scene's activation with the rotations (4 views x 9 frames x 16 features x 128 x
# 128 float32 is 38 MiB; the paper's 42 features, 99 MiB)
MMAP_THRESHOLD = 128 << 20
TRIM_THRESHOLD = 512 << 20
USER_SETTINGS = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold")  # in GLIBC_TUNABLES
USER_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory() -> None:
    """Blocks up to MMAP_THRESHOLD come from the heap, and up to TRIM_THRESHOLD of its free top
    stays there. Nothing where the C library is not glibc, where glibc refuses the threshold
    (older releases take at most 32 MiB: their own adaptive threshold is then better left on),
    or where the user set either threshold (USER_SETTINGS, USER_VARIABLES): theirs stand."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if any(name in tunables for name in USER_SETTINGS) or any(os.environ.get(v) for v in USER_VARIABLES):
        return
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl, or no such library
        return
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1:  # 1 is success
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
