"""Evaluation benchmark: a whole validation band predicted with the 4-rotation
self-ensemble and scored by cPSNR, as `python -m piunet_dist evaluate` does it (scenes in
batches from the shards' loader, the fast model and metric), against scene by scene with
the straightforward reference (references/reference_piunet.py, one rotation per forward, the
cPSNR looped over the 49 shifts). Paper configuration, weights as initialised.

    python bench/evaluate.py [--scenes N] [--batch-sizes B ...]

On a CPU with glibc, a batch of two scenes (activations of ~50 MB) is slower per scene than
one: allocations above malloc's 32 MB mmap threshold go back to the kernel when freed, and
every forward pays page faults for them again. This bench keeps glibc's defaults; `evaluate`
and `train` keep freed blocks up to 128 MB in the heap (core/memory.py, bench/heap.py).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import command, report  # noqa: E402  (sets up the path to the references)
from torch.utils.data import DataLoader

from piunet_dist.data.packing import pack
from piunet_dist.data.pipeline import EvalScenes
from piunet_dist.data.shards import shard_paths
from piunet_dist.data.synthetic import synthesise
from piunet_dist.evaluation.inference import super_resolve
from piunet_dist.network.metrics import cpsnr
from piunet_dist.network.model import PIUNet, denormalise, normalise, scale_dn
from references import oracles
from references.reference_piunet import RefPIUNet


@torch.no_grad()
def band(model: PIUNet, shards: list[str], batch_size: int, device: str) -> float:
    scores = []
    for batch in DataLoader(EvalScenes(shards), batch_size=batch_size, num_workers=2):
        sr, _ = super_resolve(model, batch["lr"].to(device), 4)
        scores.append(cpsnr(sr, batch["hr"][:, None].to(device), batch["sm"][:, None].to(device)))
    return torch.cat(scores).mean().item()


@torch.no_grad()
def scene_by_scene(model: RefPIUNet, shards: list[str], device: str) -> float:
    scores = []
    for scene in EvalScenes(shards):
        scene = {k: v.to(device) if torch.is_tensor(v) else v for k, v in scene.items()}
        sr = scale = 0
        for k in range(4):
            mu, s = model(normalise(torch.rot90(scene["lr"][None], k, dims=(-2, -1))))
            sr = sr + torch.rot90(denormalise(mu), -k, dims=(-2, -1)) / 4
            scale = scale + torch.rot90(scale_dn(s), -k, dims=(-2, -1)) / 4
        scores.append(oracles.cpsnr(sr, scene["hr"][None, None], scene["sm"][None, None]))
    return torch.cat(scores).mean().item()


def timed(fn, *args) -> tuple[float, float]:
    start = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - start, value


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=4, help="synthetic validation scenes (default 4)")
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=[1, 2],
        help="scenes per batch of the evaluation, one row each (default 1 2)",
    )
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    ref = RefPIUNet().eval().to(device)
    fast = PIUNet().eval().to(device)
    fast.load_state_dict(ref.state_dict())
    with tempfile.TemporaryDirectory() as tmp:
        synthesise(Path(tmp) / "tree", args.scenes, 0, ["NIR"], seed=0, workers=2)
        pack(Path(tmp) / "tree", Path(tmp) / "shards", ["NIR"], val_fraction=0.0, workers=2, scenes_per_shard=8)
        shards = shard_paths(Path(tmp) / "shards", "NIR", "train")
        with torch.no_grad():  # warm-up: first calls allocate and pick kernels
            for model in (ref, fast):
                model(torch.randn(1, 9, 128, 128, device=device))
        t_ref, v_ref = timed(scene_by_scene, ref, shards, device)
        rows = [("reference, scene by scene", t_ref)]
        for batch_size in args.batch_sizes:
            t, value = timed(band, fast, shards, batch_size, device)
            assert abs(v_ref - value) < 1e-3, (v_ref, value)  # the same function, to rounding
            rows.append((f"this, batches of {batch_size}", t))
    rows = [
        {
            "case": f"val band of {args.scenes} scenes, self-ensemble x4, paper config",
            "variant": variant,
            "seconds": t,
            "scenes_per_s": args.scenes / t,
            "speedup": t_ref / t,
        }
        for variant, t in rows
    ]
    report("evaluate", rows, ["case", "variant", "seconds", "scenes_per_s", "speedup"])


if __name__ == "__main__":
    command(main)
