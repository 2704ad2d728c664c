"""The PROBA-V challenge layout: find, validate and read scenes; select frames.

    ROOT/norm.csv                         "imgsetNNNN <float>" per line, no header
    ROOT/{train,test}/{NIR,RED}/imgsetNNNN/LR000.png QM000.png ... [HR.png SM.png]

LR and HR are 16-bit greyscale PNGs, quality and status maps any PNG kind (nonzero =
clear). Train scenes have HR and SM, test scenes need not. Every uint16 value is data: the
values are nominally 14-bit, but real LR frames hold bright clouds above 16,383 and 65,520
where the sensor saw nothing (docs/method.md section 5).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.config import BANDS, DataConfig

TREE_SPLITS = ("train", "test")  # the challenge tree's folders; the shards add val (shards.SPLITS)
LR_SIZE = 128
HR_SIZE = 384
NOMINAL_DN = 2**14 - 1  # the sensor's nominal top: real LR frames pass it (docs/method.md section 5)
NO_DATA = 65520  # what a real LR frame holds where the sensor saw nothing
SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I"}
SCENE_NAME = re.compile(r"imgset\d{4}$")


@dataclass(frozen=True)
class SceneRef:
    """Where a scene lies; `split` is the directory it is in (train or test)."""

    name: str
    band: str
    split: str
    path: Path

    @property
    def has_target(self) -> bool:
        return self.split == "train"


@dataclass
class Scene:
    """A scene in memory: all frames, as stored."""

    name: str
    band: str
    lr: np.ndarray  # (N, 128, 128) uint16
    qm: np.ndarray  # (N, 128, 128) bool, True = clear
    hr: np.ndarray | None = None  # (384, 384) uint16
    sm: np.ndarray | None = None  # (384, 384) bool
    norm: float | None = None
    masked_frames: int | None = None  # frames read with a quality map of their own
    clearance: np.ndarray = field(init=False)

    def __post_init__(self):
        self.clearance = self.qm.reshape(len(self.qm), -1).mean(axis=1)


def find_scenes(root: Path, bands=BANDS) -> list[SceneRef]:
    """Every scene directory under root, sorted by band, split and name."""
    root = Path(root)
    refs = []
    for band in bands:
        for split in TREE_SPLITS:
            folder = root / split / band
            if folder.is_dir():
                refs += [
                    SceneRef(d.name, band, split, d)
                    for d in sorted(folder.iterdir())
                    if d.is_dir() and SCENE_NAME.match(d.name)
                ]
    return refs


def read_norm(root: Path) -> dict[str, float]:
    """norm.csv as {scene: baseline cPSNR}; missing file: {}."""
    path = Path(root) / "norm.csv"
    if not path.is_file():
        return {}
    norm = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2 or not SCENE_NAME.match(parts[0]):
                raise ValueError
            value = float(parts[1])
        except ValueError:
            raise ValueError(f"{path}:{number}: expected 'imgsetNNNN <number>', got {line.strip()!r}") from None
        if not value > 0 or value == float("inf"):  # a cPSNR in dB: nan, inf and <= 0 are damage
            raise ValueError(f"{path}:{number}: {parts[0]} has {parts[1]}, not a positive cPSNR in dB")
        if parts[0] in norm:
            raise ValueError(f"{path}:{number}: {parts[0]} is listed a second time")
        norm[parts[0]] = value
    return norm


def missing_norm(refs: list[SceneRef], norm: dict[str, float]) -> list[str]:
    """Train scenes that a norm.csv leaves out (a challenge score needs every one)."""
    return [r.name for r in refs if r.has_target and norm and r.name not in norm]


def _frame_files(ref: SceneRef, prefix: str) -> dict[str, Path]:
    return {p.name[len(prefix) : -4]: p for p in ref.path.glob(f"{prefix}*.png") if p.name[len(prefix) : -4].isdigit()}


def validate_scene(ref: SceneRef, where: str | None = None) -> list[str]:
    """Problems of one scene, one line each naming the scene (`where`, by default
    split/band/name), the file and what is wrong."""
    where = where or f"{ref.split}/{ref.band}/{ref.name}"
    problems = []
    lrs, qms = _frame_files(ref, "LR"), _frame_files(ref, "QM")
    if not lrs:
        problems.append(f"{where}: no LR frames (LR000.png ...)")
    for idx in sorted(set(lrs) - set(qms)):
        problems.append(f"{where}: LR{idx}.png has no quality map QM{idx}.png")
    for idx in sorted(set(qms) - set(lrs)):
        problems.append(f"{where}: QM{idx}.png has no frame LR{idx}.png")
    for idx in sorted(set(lrs) & set(qms)):
        problems += _check_png(where, lrs[idx], LR_SIZE, image=True)
        problems += _check_png(where, qms[idx], LR_SIZE, image=False)
    if ref.has_target:
        for name, image in (("HR.png", True), ("SM.png", False)):
            path = ref.path / name
            if not path.is_file():
                problems.append(f"{where}: {name} is missing (train scenes need HR.png and SM.png)")
            else:
                problems += _check_png(where, path, HR_SIZE, image=image)
        sm = ref.path / "SM.png"
        if sm.is_file() and not problems and not _read_mask(sm).any():
            problems.append(f"{where}: SM.png marks no pixel clear: nothing of its HR can be learnt or scored")
    return problems


def _check_png(where: str, path: Path, size: int, image: bool) -> list[str]:
    try:
        with Image.open(path) as im:
            im.load()
            mode, shape = im.mode, im.size
    except Exception as e:  # a damaged file fails in many ways inside the decoder
        return [f"{where}: {path.name} is not a readable PNG ({e})"]
    problems = []
    if shape != (size, size):
        problems.append(f"{where}: {path.name} is {shape[0]}x{shape[1]}, expected {size}x{size}")
    if image and mode not in SIXTEEN_BIT:
        problems.append(f"{where}: {path.name} is {mode}, expected a 16-bit greyscale image")
    if not image and mode not in {"1", "L", "P", "LA"} | SIXTEEN_BIT:
        problems.append(f"{where}: {path.name} is {mode}, expected a greyscale mask")
    return problems


def _read_image(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).astype(np.uint16)


def _read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        if im.mode == "P":
            im = im.convert("L")
        return np.asarray(im) != 0


def load_scene(ref: SceneRef, norm: dict[str, float] | None = None, masks_required: bool = True) -> Scene:
    """Read a scene that validate_scene found valid: frames in index order. Without
    `masks_required`, a frame without its QM is taken as all clear and a missing HR or SM
    leaves the scene without a target: for statistics of copies of the data set that kept
    only the LR frames."""
    lrs, qms = _frame_files(ref, "LR"), _frame_files(ref, "QM")
    order = sorted(lrs, key=int)
    lr = np.stack([_read_image(lrs[i]) for i in order])
    all_clear = np.ones(lr.shape[1:], bool)
    scene = Scene(
        name=ref.name,
        band=ref.band,
        lr=lr,
        qm=np.stack([_read_mask(qms[i]) if i in qms or masks_required else all_clear for i in order]),
        norm=(norm or {}).get(ref.name),
        masked_frames=sum(i in qms for i in order),
    )
    has_target = all((ref.path / name).is_file() for name in ("HR.png", "SM.png"))
    if ref.has_target and (masks_required or has_target):
        scene.hr = _read_image(ref.path / "HR.png")
        scene.sm = _read_mask(ref.path / "SM.png")
    return scene


def select_frames(
    clearance: np.ndarray,
    n_frames: int,
    policy: str,
    rng: np.random.Generator,
    keep_unclear: bool = False,
    min_clearance: float = DataConfig.min_clearance,
) -> np.ndarray | None:
    """Indices of the n_frames frames to use, or None when the scene has no clear frame.

    paper: frames more than min_clearance clear, clearest first; fewer than n_frames are
    topped up with randomly chosen kept frames. random: n_frames drawn among the clear
    frames, a new draw each call (with repeats only when there are too few).
    keep_unclear: a scene without a clear frame keeps its clearest one (test scenes).
    """
    clear = np.flatnonzero(clearance > min_clearance)
    if len(clear) == 0:
        if not keep_unclear:
            return None
        clear = np.array([int(np.argmax(clearance))])
    if policy == "paper":
        ranked = clear[np.argsort(-clearance[clear], kind="stable")]
        if len(ranked) >= n_frames:
            return ranked[:n_frames]
        return np.concatenate([ranked, rng.choice(ranked, n_frames - len(ranked))])
    if policy == "random":
        return rng.choice(clear, n_frames, replace=len(clear) < n_frames)
    raise ValueError(f"unknown frame selection policy {policy!r} (paper or random)")
