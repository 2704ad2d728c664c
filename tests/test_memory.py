"""The C heap keeps freed blocks for the next step (core/memory.py), unless the user set malloc's thresholds."""

import os
import subprocess
import sys

import pytest

CYCLES = 12

# the page faults of allocating, filling and freeing a 64 MiB tensor CYCLES times, after a first
# time; counted against each other, since with transparent huge pages a block faults in 32 pages.
# The fewest of ROUNDS such counts: under load from other processes this VM's kernel has been
# seen to fault a kept block in again now and then (3 or 6 of the 12 cycles), which glibc's
# unmapping of every block does at each cycle of every round.
ROUNDS = 3
FAULTS = f"""
import resource, sys, torch
from piunet_dist.core.memory import keep_freed_memory
if sys.argv[1] == "kept":
    keep_freed_memory()
torch.ones(16 << 20)
counts = []
for _ in range({ROUNDS}):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range({CYCLES}):
        torch.ones(16 << 20)
    counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(counts))
"""


def faults(heap: str, **env) -> int:
    out = subprocess.run(
        [sys.executable, "-c", FAULTS, heap], env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    return int(out.stdout)


pytestmark = [
    pytest.mark.processes,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's heap: Linux only"),
]


def test_a_freed_block_is_reused_not_mapped_afresh():
    # glibc maps each block again: CYCLES blocks' faults, against at most the one that grows the heap
    assert faults("default") > CYCLES / 3 * faults("kept")


def test_thresholds_the_user_set_stand():
    default = faults("default")
    assert faults("kept", MALLOC_MMAP_THRESHOLD_=str(1 << 20)) > default / 2
    assert faults("kept", GLIBC_TUNABLES="glibc.malloc.mmap_threshold=1048576") > default / 2
    assert faults("kept", GLIBC_TUNABLES="glibc.malloc.arena_max=2") < default / 4  # another setting: kept
