"""Pack PROBA-V scenes into WebDataset shards (the `pack` command), or join packed parts.

Every scene is validated before anything is written. The new shards are staged beside the
old pack and switched in by a written plan (shards.finish_switch), so an interrupted pack
leaves the previous one whole, and only shards that a manifest listed are deleted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

import numpy as np
import webdataset as wds
from tqdm import tqdm

from ..core.errors import UserError
from ..core.files import PARTIAL, disk_error, disk_failure, remove, sha256, write_json
from ..core.stop import process_pool, raising_on_signals
from .probav import (
    BANDS,
    NO_DATA,
    NOMINAL_DN,
    Scene,
    SceneRef,
    find_scenes,
    load_scene,
    missing_norm,
    read_norm,
    validate_scene,
)
from .scene_values import READ_WITH
from .shards import (
    FORMAT,
    MANIFEST,
    PARTS,
    SPLITS,
    SWITCH,
    encode_scene,
    finish_switch,
    load_manifest,
    previous_manifest,
    verify,
)

VAL_FRACTION = 0.3  # of each band's train scenes, held out as val
SCENES_PER_SHARD = 32


def _load_and_encode(job: tuple[SceneRef, str, dict]) -> tuple[dict, dict[str, bool]]:
    ref, split, norm = job
    scene = load_scene(ref, norm)
    return encode_scene(scene, split), scene_facts(scene)


# what the pack's summary counts, per band and split: how the scenes will be read
FACTS = {
    "fewer_clear_frames": f"fewer than {READ_WITH.n_frames} frames over {READ_WITH.min_clearance:.0%} clear "
    "(topped up with repeats when read)",
    "no_clear_frame": f"no frame over {READ_WITH.min_clearance:.0%} clear (train and val: left out when read, "
    "as in the paper; test: read from its clearest frame)",
    "above_14_bits": f"values above {NOMINAL_DN:,} DN (bright clouds; read as they are)",
    "no_data": f"{NO_DATA:,} (no data) in some frame (kept; the network sees what other frames saw there)",
    "target_under_75": "HR under 75% clear, the data set's own floor (scored on its clear pixels)",
}


def scene_facts(scene: Scene) -> dict[str, bool]:
    """What FACTS says of one scene (docs/method.md section 5)."""
    clear = int((scene.clearance > READ_WITH.min_clearance).sum())
    return {
        "fewer_clear_frames": 0 < clear < READ_WITH.n_frames,
        "no_clear_frame": clear == 0,
        "above_14_bits": bool(((scene.lr > NOMINAL_DN) & (scene.lr != NO_DATA)).any()),
        "no_data": bool((scene.lr == NO_DATA).any()),
        "target_under_75": scene.sm is not None and float(scene.sm.mean()) < 0.75,
    }


def _joined(*nested: dict) -> dict:
    """band -> split -> value dicts, later ones over earlier ones."""
    out: dict = {}
    for counts in nested:
        for band, by_split in counts.items():
            out.setdefault(band, {}).update(by_split)
    return out


def split_scenes(
    refs: list[SceneRef], val_fraction: float, val_list: set[str] | None, seed: int
) -> dict[tuple[str, str], list[SceneRef]]:
    """(band, split) -> scenes. val is held out of train by a list or a seeded fraction per band."""
    groups: dict[tuple[str, str], list[SceneRef]] = {}
    for band in sorted({r.band for r in refs}):
        train = [r for r in refs if r.band == band and r.split == "train"]
        if val_list is not None:
            val_names = val_list
        else:
            order = np.random.default_rng(seed).permutation(len(train))
            val_names = {train[i].name for i in order[: round(val_fraction * len(train))]}
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


def pack(
    src: Path,
    out: Path,
    bands=BANDS,
    *,
    val_fraction: float = VAL_FRACTION,
    val_list: Path | None = None,
    seed: int = 0,
    workers: int = 1,
    scenes_per_shard: int = SCENES_PER_SHARD,
    skip_invalid: bool = False,
    splits=SPLITS,
    part: bool = False,
) -> dict:
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
        raise UserError(
            f"{src / 'norm.csv'}: no baseline for {len(unscored)} train scene(s): {', '.join(unscored[:5])}"
        )
    with process_pool(workers) as pool, raising_on_signals("pack"):
        problems = list(
            tqdm(pool.map(validate_scene, refs, chunksize=4), total=len(refs), desc="validate", unit="scene")
        )
    invalid = {ref: lines for ref, lines in zip(refs, problems) if lines}
    if invalid and not skip_invalid:
        for lines in invalid.values():
            for line in lines:
                print(line, file=sys.stderr)
        raise UserError(
            f"{src}: {len(invalid)} invalid scene(s) listed above; nothing written (--skip-invalid packs the others)"
        )
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
    jobs, shard_plan, facts = [], [], {}
    for (band, split), group in groups.items():
        for start in range(0, len(group), scenes_per_shard):
            chunk = group[start : start + scenes_per_shard]
            shard_plan.append((f"{band}/{split}-{start // scenes_per_shard:06d}.tar", band, split, len(chunk)))
            jobs += [(ref, split, norm) for ref in chunk]
    shards = []
    try:
        with (
            process_pool(workers) as pool,
            raising_on_signals("pack"),
            tqdm(total=len(jobs), desc="pack", unit="scene") as bar,
        ):
            samples = pool.map(_load_and_encode, jobs, chunksize=2)
            for rel, band, split, count in shard_plan:
                path = staging / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                tally = facts.setdefault(band, {}).setdefault(split, dict.fromkeys(FACTS, 0))
                with wds.TarWriter(str(path), encoder=False, mtime=0) as sink:  # the same scenes, the same bytes
                    for _ in range(count):
                        sample, found = next(samples)
                        sink.write(sample)
                        for key, seen in found.items():
                            tally[key] += seen
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
        "params": {
            "bands": list(bands),
            "splits": list(splits),
            "val_fraction": None if val_list else val_fraction,
            "val_list": str(val_list) if val_list else None,
            "seed": seed,
            "scenes_per_shard": scenes_per_shard,
            "skip_invalid": skip_invalid,
        },
        "summary": summary,
        "facts": facts,
        "skipped": [{"scene": f"{r.split}/{r.band}/{r.name}", "problems": lines} for r, lines in invalid.items()],
        "shards": shards,
    }
    previous = previous_manifest(out)
    if not part:
        manifest = _keep_the_rest(manifest, previous, bands, splits)
    target = out / PARTS / f"{'+'.join(bands)}-{'+'.join(splits)}.json" if part else out / MANIFEST
    covered = {(b, sp) for b in bands for sp in splits}
    stale = [
        e["path"]
        for e in (previous or {}).get("shards", [])
        if (e["band"], e["split"]) in covered and e["path"] not in {s["path"] for s in shards}
    ]
    _switch(
        out, {"staging": staging.name, "target": str(target.relative_to(out)), "stale": stale, "manifest": manifest}
    )
    return manifest


def _keep_the_rest(manifest: dict, previous: dict | None, bands, splits) -> dict:
    """A pack of some bands or splits keeps the previous manifest's others."""
    if previous is None:
        return manifest
    covered = {(b, sp) for b in bands for sp in splits}
    kept = [e for e in previous["shards"] if (e["band"], e["split"]) not in covered]
    summary = _joined(previous.get("summary", {}), manifest["summary"])
    skipped = [s for s in previous.get("skipped", []) if s["scene"].split("/")[1] not in bands]
    every_split = [sp for sp in SPLITS if any(sp in counts for counts in summary.values())]
    return {
        **manifest,
        "shards": kept + manifest["shards"],
        "summary": summary,
        "facts": _joined(previous.get("facts", {}), manifest["facts"]),
        "skipped": skipped + manifest["skipped"],
        "params": {**manifest["params"], "bands": sorted(summary), "splits": every_split},
    }


def _switch(out: Path, plan: dict) -> None:
    """Put a staged pack in place: the plan is written first, so an interruption anywhere
    below is finished by the next reader (finish_switch), never left half done."""
    write_json(out / (plan["staging"] + SWITCH), plan)
    finish_switch(out)


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
    shards, summary, facts, skipped = [], {}, {}, []
    for m in parts:
        taken = {(s["band"], s["split"]) for s in shards}
        clash = {(s["band"], s["split"]) for s in m["shards"]} & taken
        if clash:
            raise UserError(f"{out}: several parts hold {sorted(clash)[0]}")
        shards += m["shards"]
        summary, facts = _joined(summary, m["summary"]), _joined(facts, m.get("facts", {}))
        skipped += [s for s in m["skipped"] if s not in skipped]
    manifest = {
        **parts[0],
        "shards": shards,
        "summary": summary,
        "facts": facts,
        "skipped": skipped,
        "params": {**parts[0]["params"], "bands": sorted(summary)},
    }
    manifest["params"].pop("splits", None)
    write_json(out / MANIFEST, manifest)
    return manifest


def fact_lines(by_split: dict) -> list[str]:
    """A band's FACTS that hold of some scene, a line each with its count per split."""
    lines = []
    for key, meaning in FACTS.items():
        counts = {split: tally.get(key, 0) for split, tally in by_split.items()}
        if any(counts.values()):
            lines.append(f"  {meaning}: " + ", ".join(f"{n} {split}" for split, n in counts.items()))
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", type=Path, nargs="?", help="the PROBA-V tree (train/, test/, norm.csv)")
    parser.add_argument("--out", type=Path, help="where the shards and manifest.json go")
    parser.add_argument("--verify", type=Path, metavar="DIR", help="re-check the shards in DIR against its manifest")
    parser.add_argument(
        "--merge",
        type=Path,
        metavar="DIR",
        help="join the part manifests of DIR (packs made with --part) into its manifest.json",
    )
    parser.add_argument(
        "--splits",
        nargs="+",
        choices=SPLITS,
        default=list(SPLITS),
        help="splits to write (default all; val is drawn from the train scenes all the same)",
    )
    parser.add_argument(
        "--part", action="store_true", help="write a part manifest (DIR/parts/) for --merge: one task of an array"
    )
    parser.add_argument("--bands", nargs="+", choices=BANDS, default=list(BANDS), help="bands to pack (default both)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--val-fraction",
        type=float,
        default=VAL_FRACTION,
        help=f"share of each band's train scenes held out as val, chosen by --seed (default {VAL_FRACTION})",
    )
    group.add_argument("--val-list", type=Path, help="file of scene names (one per line) that form val")
    parser.add_argument("--seed", type=int, default=0, help="seed of the val draw (default 0)")
    parser.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), help="processes reading scenes (default: up to 8)"
    )
    parser.add_argument(
        "--scenes-per-shard",
        type=int,
        default=SCENES_PER_SHARD,
        help=f"scenes per tar file (default {SCENES_PER_SHARD})",
    )
    parser.add_argument(
        "--skip-invalid", action="store_true", help="pack the valid scenes and record the invalid ones in the manifest"
    )


def run(args: argparse.Namespace) -> int:
    if args.merge:
        manifest = merge(args.merge)
        parts = len(list((args.merge / PARTS).glob("*.json")))
        print(f"{args.merge}: {len(manifest['shards'])} shards from {parts} parts")
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
    manifest = pack(
        args.src,
        args.out,
        args.bands,
        val_fraction=args.val_fraction,
        val_list=args.val_list,
        seed=args.seed,
        workers=args.workers,
        scenes_per_shard=args.scenes_per_shard,
        skip_invalid=args.skip_invalid,
        splits=args.splits,
        part=args.part,
    )
    for band, counts in manifest["summary"].items():
        print(f"{band}: " + ", ".join(f"{n} {split}" for split, n in counts.items()))
        for line in fact_lines(manifest.get("facts", {}).get(band, {})):
            print(line)
    skipped = len(manifest["skipped"])
    print(
        f"{args.out}: {len(manifest['shards'])} shards" + (f", {skipped} invalid scene(s) skipped" if skipped else "")
    )
    return 0
