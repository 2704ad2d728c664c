import os
import subprocess

import pytest
import torch

# two cores: keep a test's tensor ops from fighting the other processes it starts
torch.set_num_threads(min(2, torch.get_num_threads()))

# without a GPU the Triton kernels run in Triton's interpreter, on the CPU
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs of its own, which faults.fill() makes a full disk: real ENOSPC from the kernel."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if result.returncode:
        reason = f"cannot mount a tmpfs here ({result.stderr.strip()}); the full-disk tests need root"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)
