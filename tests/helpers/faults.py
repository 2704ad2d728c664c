"""Faults the tests inject into real files and disks."""

from pathlib import Path


def fill(disk: Path) -> None:
    """Take every free byte of `disk` (a small tmpfs: see conftest's small_disk)."""
    with open(disk / "ballast", "ab", buffering=0) as f:
        for size in (1 << 16, 1 << 12, 1 << 9, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass


def flip_bytes(path: Path, start: int = 600, stop: int = 700) -> None:
    data = bytearray(path.read_bytes())
    for i in range(start, stop):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
