"""Write small PROBA-V trees for the tests, file by file, with the masks and flaws asked for."""

import os
from pathlib import Path

import numpy as np
from PIL import Image


def write_scene(
    root: Path,
    split: str,
    band: str,
    name: str,
    n_frames: int = 9,
    seed: int = 0,
    mask_bits: int = 8,
    clearance=None,
    with_target: bool | None = None,
    sm_clear: float = 0.9,
) -> Path:
    """One scene; clearance: per-frame clear share (default all clear); sm_clear: the share of
    the status map that is clear."""
    rng = np.random.default_rng(seed)
    d = Path(root) / split / band / name
    d.mkdir(parents=True)
    clearance = [1.0] * n_frames if clearance is None else clearance
    for i, c in enumerate(clearance):
        Image.fromarray(rng.integers(4000, 12000, (128, 128), dtype=np.uint16)).save(d / f"LR{i:03d}.png")
        mask = np.zeros((128, 128), bool)
        mask.flat[: round(c * mask.size)] = True
        _save_mask(mask, d / f"QM{i:03d}.png", mask_bits)
    if split == "train" if with_target is None else with_target:
        Image.fromarray(rng.integers(4000, 12000, (384, 384), dtype=np.uint16)).save(d / "HR.png")
        _save_mask(rng.random((384, 384)) < sm_clear, d / "SM.png", mask_bits)
    return d


def _save_mask(mask: np.ndarray, path: Path, bits: int) -> None:
    Image.fromarray(mask if bits == 1 else mask.astype(np.uint8) * 255).save(path)


def write_norm(root: Path, names: list[str]) -> None:
    (Path(root) / "norm.csv").write_text("".join(f"{n} {40 + i * 0.5}\n" for i, n in enumerate(names)))


def holds_real_oddities(root: Path) -> bool:
    """Whether a tree's LR frames hold what real ones do: values above 14 bits, and 65,520."""
    bright = no_data = False
    for path in Path(root).glob("*/*/imgset*/LR*.png"):
        frame = np.asarray(Image.open(path))
        bright |= bool(((frame > 2**14 - 1) & (frame != 65520)).any())
        no_data |= bool((frame == 65520).any())
        if bright and no_data:
            return True
    return False


def fill_challenge_test(root: Path) -> int:
    """Make a tree's test split the challenge's 290 scenes (RED imgset1160-1305, NIR
    imgset1306-1449) from the test scenes it has, each new one a set of hard links to one of
    them: a submission's worth of scenes at the cost of a few. Returns the scenes added."""
    added = 0
    for band, first, count in (("RED", 1160, 146), ("NIR", 1306, 144)):
        folder = Path(root) / "test" / band
        have = sorted(d for d in folder.iterdir() if d.is_dir())
        for i in range(first, first + count):
            scene = folder / f"imgset{i:04d}"
            if scene.exists():
                continue
            scene.mkdir()
            for f in have[i % len(have)].iterdir():
                os.link(f, scene / f.name)
            added += 1
    return added
