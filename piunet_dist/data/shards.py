"""Pack PROBA-V scenes into WebDataset shards, write and verify the manifest.

    DIR/<BAND>/<split>-NNNNNN.tar   one sample per scene, splits train, val, test
    DIR/manifest.json               written last, atomically

A sample (key imgsetNNNN) holds every frame: lr.npy uint16 (N,128,128), qm.npy bool
(N,128,128), hr.npy uint16 (384,384) and sm.npy bool (384,384) when the scene has a
target, and json with scene, band, split, per-frame clearance and norm. Frames are
selected when reading, so one set of shards serves every T and selection policy.
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import webdataset as wds
from tqdm import tqdm

from ..errors import UserError
from ..files import PARTIAL, disk_error, disk_failure, remove, sha256, write_json
from ..stop import process_pool, raising_on_signals
from .probav import (BANDS, MAX_DN, Scene, SceneRef, find_scenes, load_scene, missing_norm, read_norm,
                     validate_scene)

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
PARTS = "parts"
FORMAT = "piunet-dist shards 1"


# --- samples ----------------------------------------------------------------------------

def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def encode_scene(scene: Scene, split: str) -> dict:
    """A scene as a WebDataset sample of bytes."""
    meta = {"scene": scene.name, "band": scene.band, "split": split, "frames": len(scene.lr),
            "clearance": [round(float(c), 6) for c in scene.clearance], "norm": scene.norm}
    sample = {"__key__": scene.name, "lr.npy": _npy(scene.lr), "qm.npy": _npy(scene.qm),
              "json": json.dumps(meta).encode()}
    if scene.hr is not None:
        sample["hr.npy"] = _npy(scene.hr)
        sample["sm.npy"] = _npy(scene.sm)
    return sample


def decode_sample(sample: dict) -> tuple[Scene, dict]:
    """A sample read from a shard back to a Scene and its metadata; ValueError if broken."""
    key = sample.get("__key__", "?")
    try:
        meta = json.loads(sample["json"])
        arrays = {k: np.load(io.BytesIO(sample[f"{k}.npy"]), allow_pickle=False)
                  for k in ("lr", "qm", "hr", "sm") if f"{k}.npy" in sample}
        scene = Scene(name=meta["scene"], band=meta["band"], lr=arrays["lr"], qm=arrays["qm"],
                      hr=arrays.get("hr"), sm=arrays.get("sm"), norm=meta.get("norm"))
    except Exception as e:  # a damaged header or payload fails in many ways inside numpy and json
        raise ValueError(f"sample {key}: cannot decode ({type(e).__name__}: {e})") from None
    if scene.lr.ndim != 3 or scene.lr.shape != scene.qm.shape or len(scene.lr) != meta["frames"]:
        raise ValueError(f"sample {scene.name}: frames and quality maps do not match the metadata")
    for what, image in (("LR", scene.lr), ("HR", scene.hr)):
        if image is not None and (image.dtype != np.uint16 or int(image.max(initial=0)) > MAX_DN):
            raise ValueError(f"sample {scene.name}: {what} values outside the 14-bit range of PROBA-V (damaged)")
    return scene, meta


# --- packing ----------------------------------------------------------------------------

def _load_and_encode(job: tuple[SceneRef, str, dict]) -> dict:
    ref, split, norm = job
    return encode_scene(load_scene(ref, norm), split)


def split_scenes(refs: list[SceneRef], val_fraction: float, val_list: set[str] | None,
                 seed: int) -> dict[tuple[str, str], list[SceneRef]]:
    """(band, split) -> scenes. val is held out of train by a list or a seeded fraction per band."""
    groups: dict[tuple[str, str], list[SceneRef]] = {}
    for band in sorted({r.band for r in refs}):
        train = [r for r in refs if r.band == band and r.split == "train"]
        if val_list is not None:
            val_names = val_list
        else:
            order = np.random.default_rng(seed).permutation(len(train))
            val_names = {train[i].name for i in order[:round(val_fraction * len(train))]}
        groups[(band, "train")] = [r for r in train if r.name not in val_names]
        groups[(band, "val")] = [r for r in train if r.name in val_names]
        groups[(band, "test")] = [r for r in refs if r.band == band and r.split == "test"]
    return {k: v for k, v in groups.items() if v}


def read_val_list(path: Path, train_names: set[str]) -> set[str]:
    if not path.is_file():
        raise UserError(f"{path}: no such validation list")
    names = {line.split("#")[0].strip() for line in path.read_text().splitlines()} - {""}
    unknown = sorted(names - train_names)
    if unknown:
        raise UserError(f"{path}: {len(unknown)} name(s) that are not train scenes here: {', '.join(unknown[:5])}")
    return names


def pack(src: Path, out: Path, bands, val_fraction: float, val_list: Path | None, seed: int,
         workers: int, scenes_per_shard: int, skip_invalid: bool, splits=SPLITS, part: bool = False) -> dict:
    """Validate, split and write the scenes of `bands`, the shards of `splits` only; returns the
    manifest, written as DIR/manifest.json, or as a part (DIR/parts/) for merge() to join."""
    refs = find_scenes(src, bands)
    if not refs:
        raise UserError(f"{src}: no scenes (expected {src}/train/NIR/imgsetNNNN/LR000.png ...)")
    try:
        norm = read_norm(src)
    except ValueError as e:
        raise UserError(str(e)) from None
    unscored = missing_norm(refs, norm)
    if unscored:
        raise UserError(f"{src / 'norm.csv'}: no baseline for {len(unscored)} train scene(s): "
                        f"{', '.join(unscored[:5])}")
    with process_pool(workers) as pool, raising_on_signals("pack"):
        problems = list(tqdm(pool.map(validate_scene, refs, chunksize=4), total=len(refs),
                             desc="validate", unit="scene"))
    invalid = {ref: lines for ref, lines in zip(refs, problems) if lines}
    if invalid and not skip_invalid:
        for lines in invalid.values():
            for line in lines:
                print(line, file=sys.stderr)
        raise UserError(f"{src}: {len(invalid)} invalid scene(s) listed above; nothing written "
                        "(--skip-invalid packs the others)")
    for ref, lines in invalid.items():  # skipped, and said so
        print(f"skipped {ref.split}/{ref.band}/{ref.name}: {'; '.join(lines)}", file=sys.stderr)
    refs = [r for r in refs if r not in invalid]
    # a val list may name scenes of every band, packed or not
    known = {r.name for r in find_scenes(src) if r.split == "train"}
    groups = split_scenes(refs, val_fraction, read_val_list(val_list, known) if val_list else None, seed)
    groups = {key: group for key, group in groups.items() if key[1] in splits}

    # the new shards go beside the old ones and replace them only once all are written
    finish_switch(out)
    staging = out / f".pack{PARTIAL}-{'+'.join(bands)}-{'+'.join(splits)}"
    remove(staging)
    jobs, shard_plan = [], []
    for (band, split), group in groups.items():
        for start in range(0, len(group), scenes_per_shard):
            chunk = group[start:start + scenes_per_shard]
            shard_plan.append((f"{band}/{split}-{start // scenes_per_shard:06d}.tar", band, split, len(chunk)))
            jobs += [(ref, split, norm) for ref in chunk]
    shards = []
    try:
        with (process_pool(workers) as pool, raising_on_signals("pack"),
              tqdm(total=len(jobs), desc="pack", unit="scene") as bar):
            samples = pool.map(_load_and_encode, jobs, chunksize=2)
            for rel, band, split, count in shard_plan:
                path = staging / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                with wds.TarWriter(str(path), encoder=False, mtime=0) as sink:  # the same scenes, the same bytes
                    for _ in range(count):
                        sink.write(next(samples))
                        bar.update(1)
                shards.append({"path": rel, "band": band, "split": split, "samples": count, "sha256": sha256(path)})
    except BaseException as e:  # an interrupted or failed pack leaves no staged shard behind
        remove(staging)
        if disk_failure(e):
            raise disk_error(out, e) from None
        raise

    summary = {band: {split: len(groups.get((band, split), [])) for split in splits} for band in bands}
    manifest = {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": str(src),
        "params": {"bands": list(bands), "splits": list(splits), "val_fraction": None if val_list else val_fraction,
                   "val_list": str(val_list) if val_list else None, "seed": seed,
                   "scenes_per_shard": scenes_per_shard, "skip_invalid": skip_invalid},
        "summary": summary,
        "skipped": [{"scene": f"{r.split}/{r.band}/{r.name}", "problems": lines} for r, lines in invalid.items()],
        "shards": shards,
    }
    previous = _previous_manifest(out)
    if not part:
        manifest = _keep_the_rest(manifest, previous, bands, splits)
    target = out / PARTS / f"{'+'.join(bands)}-{'+'.join(splits)}.json" if part else out / MANIFEST
    covered = {(b, sp) for b in bands for sp in splits}
    stale = [e["path"] for e in (previous or {}).get("shards", []) if (e["band"], e["split"]) in covered
             and e["path"] not in {s["path"] for s in shards}]
    _switch(out, {"staging": staging.name, "target": str(target.relative_to(out)), "stale": stale,
                  "manifest": manifest})
    return manifest


def _previous_manifest(out: Path) -> dict | None:
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None


def _keep_the_rest(manifest: dict, previous: dict | None, bands, splits) -> dict:
    """A pack of some bands or splits keeps the previous manifest's others."""
    if previous is None:
        return manifest
    covered = {(b, sp) for b in bands for sp in splits}
    kept = [e for e in previous["shards"] if (e["band"], e["split"]) not in covered]
    summary = {band: dict(counts) for band, counts in previous.get("summary", {}).items()}
    for band, counts in manifest["summary"].items():
        summary.setdefault(band, {}).update(counts)
    skipped = [s for s in previous.get("skipped", []) if s["scene"].split("/")[1] not in bands]
    every_split = [sp for sp in SPLITS if any(sp in counts for counts in summary.values())]
    return {**manifest, "shards": kept + manifest["shards"], "summary": summary,
            "skipped": skipped + manifest["skipped"],
            "params": {**manifest["params"], "bands": sorted(summary), "splits": every_split}}


SWITCH = ".switch.json"  # beside the staging folder: the plan of its switch-over


def _switch(out: Path, plan: dict) -> None:
    """Put a staged pack in place: the plan is written first, so an interruption anywhere
    below is finished by the next reader (finish_switch), never left half done."""
    write_json(out / (plan["staging"] + SWITCH), plan)
    finish_switch(out)


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


def merge(out: Path) -> dict:
    """Join the part manifests in DIR/parts/ into DIR/manifest.json; they must agree."""
    paths = sorted((out / PARTS).glob("*.json"))
    if not paths:
        raise UserError(f"{out}: no part manifests in {PARTS}/ (pack with --part first)")
    parts = [json.loads(p.read_text()) for p in paths]

    def common(m):
        params = {k: v for k, v in m["params"].items() if k not in ("bands", "splits")}
        return m["source"], json.dumps(params, sort_keys=True)
    for p, m in zip(paths[1:], parts[1:]):
        if common(m) != common(parts[0]):
            raise UserError(f"{p}: packed from another source or with other parameters than {paths[0]}")
    shards, summary, skipped = [], {}, []
    for m in parts:
        taken = {(s["band"], s["split"]) for s in shards}
        clash = {(s["band"], s["split"]) for s in m["shards"]} & taken
        if clash:
            raise UserError(f"{out}: several parts hold {sorted(clash)[0]}")
        shards += m["shards"]
        for band, counts in m["summary"].items():
            summary.setdefault(band, {}).update(counts)
        skipped += [s for s in m["skipped"] if s not in skipped]
    manifest = {**parts[0], "shards": shards, "summary": summary, "skipped": skipped,
                "params": {**parts[0]["params"], "bands": sorted(summary)}}
    manifest["params"].pop("splits", None)
    write_json(out / MANIFEST, manifest)
    return manifest


# --- reading the manifest -------------------------------------------------------------

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
    """Problems of the shards under root against their manifest; [] when all is well."""
    manifest = load_manifest(root)
    problems = []
    for entry in tqdm(manifest["shards"], desc="verify", unit="shard"):
        path = Path(root) / entry["path"]
        problem = _problem(Path(root), entry, digest=True)
        if problem:
            problems.append(problem)
            continue
        try:
            with tarfile.open(path) as tar:
                keys = {m.name.split(".", 1)[0] for m in tar.getmembers() if m.isfile()}
        except tarfile.TarError as e:
            problems.append(f"{path}: not a readable tar ({e})")
            continue
        if len(keys) != entry["samples"]:
            problems.append(f"{path}: {len(keys)} samples, the manifest says {entry['samples']}")
    return problems


# --- command line ---------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", type=Path, nargs="?", help="the PROBA-V tree (train/, test/, norm.csv)")
    parser.add_argument("--out", type=Path, help="where the shards and manifest.json go")
    parser.add_argument("--verify", type=Path, metavar="DIR", help="re-check the shards in DIR against its manifest")
    parser.add_argument("--merge", type=Path, metavar="DIR",
                        help="join the part manifests of DIR (packs made with --part) into its manifest.json")
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS),
                        help="splits to write (default all; val is drawn from the train scenes all the same)")
    parser.add_argument("--part", action="store_true",
                        help="write a part manifest (DIR/parts/) for --merge: one task of an array")
    parser.add_argument("--bands", nargs="+", choices=BANDS, default=list(BANDS), help="bands to pack (default both)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--val-fraction", type=float, default=0.3,
                       help="share of each band's train scenes held out as val, chosen by --seed (default 0.3)")
    group.add_argument("--val-list", type=Path, help="file of scene names (one per line) that form val")
    parser.add_argument("--seed", type=int, default=0, help="seed of the val draw (default 0)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="processes reading scenes (default: up to 8)")
    parser.add_argument("--scenes-per-shard", type=int, default=32, help="scenes per tar file (default 32)")
    parser.add_argument("--skip-invalid", action="store_true",
                        help="pack the valid scenes and record the invalid ones in the manifest")


def run(args: argparse.Namespace) -> int:
    if args.merge:
        manifest = merge(args.merge)
        print(f"{args.merge}: {len(manifest['shards'])} shards from {len(list((args.merge / PARTS).glob('*.json')))} parts")
        return 0
    if args.verify:
        if args.src or args.out:
            raise UserError("--verify DIR takes no SRC and no --out")
        problems = verify(args.verify)
        for line in problems:
            print(line)
        n = len(load_manifest(args.verify)["shards"])
        print(f"{args.verify}: {n - len(problems)} of {n} shards verified")
        return 1 if problems else 0
    if not args.src or not args.out:
        raise UserError("give SRC and --out DIR to pack, or --verify DIR")
    if not 0 <= args.val_fraction < 1:
        raise UserError(f"--val-fraction: {args.val_fraction} is not in [0, 1)")
    if args.scenes_per_shard < 1 or args.workers < 1:
        raise UserError("--scenes-per-shard and --workers: must be at least 1")
    manifest = pack(args.src, args.out, args.bands, args.val_fraction, args.val_list, args.seed,
                    args.workers, args.scenes_per_shard, args.skip_invalid, args.splits, args.part)
    for band, counts in manifest["summary"].items():
        print(f"{band}: " + ", ".join(f"{n} {split}" for split, n in counts.items()))
    skipped = len(manifest["skipped"])
    print(f"{args.out}: {len(manifest['shards'])} shards" + (f", {skipped} invalid scene(s) skipped" if skipped else ""))
    return 0
