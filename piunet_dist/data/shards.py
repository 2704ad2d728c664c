"""The shards' format: samples, the manifest, and reading and verifying them.

    DIR/<BAND>/<split>-NNNNNN.tar   one sample per scene, splits train, val, test
    DIR/manifest.json               written last, atomically

A sample (key imgsetNNNN) holds every frame: lr.npy uint16 (N,128,128), qm.npy bool
(N,128,128), hr.npy uint16 (384,384) and sm.npy bool (384,384) when the scene has a
target, and json with scene, band, split, per-frame clearance and norm. Frames are
selected when reading, so one set of shards serves every T and selection policy.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tarfile
from pathlib import Path

import numpy as np
import webdataset as wds
from tqdm import tqdm

from ..core.errors import UserError
from ..core.files import PARTIAL, disk_error, disk_failure, remove, sha256, write_json
from .probav import HR_SIZE, LR_SIZE, Scene

SPLITS = ("train", "val", "test")

MANIFEST = "manifest.json"

PARTS = "parts"

FORMAT = "piunet-dist shards 1"


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def encode_scene(scene: Scene, split: str) -> dict:
    """A scene as a WebDataset sample of bytes."""
    meta = {
        "scene": scene.name,
        "band": scene.band,
        "split": split,
        "frames": len(scene.lr),
        "clearance": [round(float(c), 6) for c in scene.clearance],
        "norm": scene.norm,
    }
    sample = {
        "__key__": scene.name,
        "lr.npy": _npy(scene.lr),
        "qm.npy": _npy(scene.qm),
        "json": json.dumps(meta).encode(),
    }
    if scene.hr is not None:
        sample["hr.npy"] = _npy(scene.hr)
        sample["sm.npy"] = _npy(scene.sm)
    return sample


def read_samples(url: str):
    """The raw samples of one shard, grouped by key, as every reader of the project takes them."""
    return wds.tarfile_samples([{"url": url}])


def decode_sample(sample: dict) -> tuple[Scene, dict]:
    """A sample read from a shard back to a Scene and its metadata; ValueError if broken.

    Damage is what the format cannot be: a payload that does not decode, arrays of the wrong
    kind or shape, frames and masks that do not match, a norm that is no positive number.
    Every uint16 value is data: real frames hold bright clouds above 14 bits and 65,520 where
    the sensor saw nothing (docs/method.md section 5)."""
    key = sample.get("__key__", "?")
    try:
        meta = json.loads(sample["json"])
        arrays = {
            k: np.load(io.BytesIO(sample[f"{k}.npy"]), allow_pickle=False)
            for k in ("lr", "qm", "hr", "sm")
            if f"{k}.npy" in sample
        }
        scene = Scene(
            name=meta["scene"],
            band=meta["band"],
            lr=arrays["lr"],
            qm=arrays["qm"],
            hr=arrays.get("hr"),
            sm=arrays.get("sm"),
            norm=meta.get("norm"),
        )
    except Exception as e:  # a damaged header or payload fails in many ways inside numpy and json
        raise ValueError(f"sample {key}: cannot decode ({type(e).__name__}: {e})") from None
    problem = _format_problem(scene, meta)
    if problem:
        raise ValueError(f"sample {scene.name}: {problem} (damaged)")
    return scene, meta


def _format_problem(scene: Scene, meta: dict) -> str | None:
    lr, qm, hr, sm = scene.lr, scene.qm, scene.hr, scene.sm
    if lr.dtype != np.uint16 or lr.ndim != 3 or len(lr) == 0 or lr.shape[1:] != (LR_SIZE, LR_SIZE):
        return f"LR frames are {lr.dtype} {lr.shape}, expected uint16 (N, {LR_SIZE}, {LR_SIZE})"
    if qm.dtype != np.bool_ or qm.shape != lr.shape:
        return f"quality maps are {qm.dtype} {qm.shape}, expected bool {lr.shape} like the frames"
    if len(lr) != meta.get("frames"):
        return f"{len(lr)} frames, the metadata says {meta.get('frames')}"
    if (hr is None) != (sm is None):
        return "an HR without its status map, or a status map without its HR"
    if hr is not None and (hr.dtype != np.uint16 or hr.shape != (HR_SIZE, HR_SIZE)):
        return f"HR is {hr.dtype} {hr.shape}, expected uint16 ({HR_SIZE}, {HR_SIZE})"
    if sm is not None and (sm.dtype != np.bool_ or sm.shape != (HR_SIZE, HR_SIZE)):
        return f"status map is {sm.dtype} {sm.shape}, expected bool ({HR_SIZE}, {HR_SIZE})"
    norm = scene.norm
    if norm is not None and (isinstance(norm, bool) or not isinstance(norm, (int, float)) or not 0 < norm < math.inf):
        return f"norm {norm!r} is not a positive cPSNR in dB"
    return None


def previous_manifest(out: Path) -> dict | None:
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None


SWITCH = ".switch.json"  # beside the staging folder: the plan of its switch-over


def finish_switch(out: Path) -> None:
    """Complete every pending switch-over of a pack: move the staged shards in, remove the
    previous pack's shards that the new one does not hold, write its manifest."""
    for path in sorted(Path(out).glob(f".pack{PARTIAL}-*{SWITCH}")):
        try:
            plan = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{path}: unreadable ({e}); pack again") from None
        _move_in(Path(out), plan)
        path.unlink(missing_ok=True)
        remove(Path(out) / plan["staging"])


def _move_in(out: Path, plan: dict) -> None:
    staging = out / plan["staging"]
    try:
        for entry in plan["manifest"]["shards"]:
            staged = staging / entry["path"]
            if staged.is_file():
                (out / entry["path"]).parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, out / entry["path"])
        for rel in plan["stale"]:
            (out / rel).unlink(missing_ok=True)
        write_json(out / plan["target"], plan["manifest"])
    except OSError as e:
        if disk_failure(e):
            raise disk_error(out, e) from None
        raise


def load_manifest(root: Path) -> dict:
    finish_switch(Path(root))
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise UserError(f"{root}: no {MANIFEST} (not packed here, or the pack did not finish)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT:
        raise UserError(f"{path}: not a manifest of this project (format {manifest.get('format')!r})")
    return manifest


def shard_paths(root: Path, band: str, split: str, digest: bool = False) -> list[str]:
    """Paths of the shards of one band and split, in manifest order, each present; with
    `digest` each also read whole against the manifest's sha256. A UserError names the
    first shard that fails, or says there are none."""
    entries = [s for s in load_manifest(root)["shards"] if s["band"] == band and s["split"] == split]
    if not entries:
        raise UserError(f"{root}: no {band} {split} shards in {MANIFEST}")
    for entry in entries:
        problem = _problem(Path(root), entry, digest)
        if problem:
            raise UserError(f"{problem}; pack again, or see every problem with `pack --verify {root}`")
    return [str(Path(root) / s["path"]) for s in entries]


def band_digest(root: Path, band: str) -> str:
    """One sha256 for what a run of `band` reads: the paths and sha256s of its train and val
    shards in the manifest. Shards moved elsewhere keep it; other scenes, or the same ones
    split or sharded otherwise, give another."""
    entries = sorted(
        (s["path"], s["sha256"])
        for s in load_manifest(root)["shards"]
        if s["band"] == band and s["split"] in ("train", "val")
    )
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def _problem(root: Path, entry: dict, digest: bool) -> str | None:
    """What is wrong with one shard of the manifest: missing, or (with `digest`) changed."""
    path = root / entry["path"]
    if not path.is_file():
        return f"{path}: missing"
    if digest and sha256(path) != entry["sha256"]:
        return f"{path}: sha256 differs from the manifest (changed or damaged)"
    return None


def scene_count(root: Path, band: str, split: str) -> int:
    """Scenes in the shards of one band and split, as the manifest counts them."""
    return sum(s["samples"] for s in load_manifest(root)["shards"] if s["band"] == band and s["split"] == split)


def scene_names(paths: list[str]) -> list[str]:
    """Names of the scenes (sample keys) in these shards, in order."""
    names = []
    for path in paths:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key = member.name.split(".", 1)[0]
                if member.isfile() and (not names or names[-1] != key):
                    names.append(key)
    return names


def verify(root: Path) -> list[str]:
    """Problems of the shards under root against their manifest; [] when all is well. Every
    sample is decoded as the loaders decode it, so a pack verified here is one that train,
    evaluate and predict read."""
    manifest = load_manifest(root)
    problems = []
    for entry in tqdm(manifest["shards"], desc="verify", unit="shard"):
        path = Path(root) / entry["path"]
        problem = _problem(Path(root), entry, digest=True)
        if problem:
            problems.append(problem)
            continue
        problems += _shard_problems(path, entry)
    return problems


def _shard_problems(path: Path, entry: dict) -> list[str]:
    """Each sample of one shard decoded; what is wrong with them and their count."""
    problems, count = [], 0
    try:
        for sample in read_samples(str(path)):
            count += 1
            try:
                scene, meta = decode_sample(sample)
            except ValueError as e:
                problems.append(f"{path}: {e}")
                continue
            if (meta.get("band"), meta.get("split")) != (entry["band"], entry["split"]):
                problems.append(
                    f"{path}: sample {scene.name} is {meta.get('band')} {meta.get('split')}, "
                    f"the manifest says {entry['band']} {entry['split']}"
                )
    except Exception as e:  # a truncated or damaged tar fails in many ways inside tarfile
        return problems + [f"{path}: not a readable tar ({type(e).__name__}: {e})"]
    if count != entry["samples"]:
        problems.append(f"{path}: {count} samples, the manifest says {entry['samples']}")
    return problems
