"""Loader benchmark: training patches per second from shards with 1, 2 and 4 workers,
and from the PNG tree read directly (what the shards save).

    python bench/loader.py [--scenes N] [--seconds S]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import command, report  # noqa: E402
from torch.utils.data import DataLoader

from piunet_dist.core.config import DataConfig
from piunet_dist.data.packing import pack
from piunet_dist.data.pipeline import TrainPatches
from piunet_dist.data.probav import find_scenes, load_scene
from piunet_dist.data.shards import shard_paths
from piunet_dist.data.synthetic import synthesise

BATCH = 24  # the paper's batch: 24 patches of 9 x 32 x 32


class PatchesFromPNG(TrainPatches):
    """The same patches, but every scene decoded from its PNG files each time it is drawn."""

    def __init__(self, tree: Path, settings: DataConfig):
        super().__init__(["unused"], settings, seed=0, rank=0)
        self.refs = [r for r in find_scenes(tree) if r.split == "train" and r.band == "NIR"]

    def _scene_stream(self, rng: np.random.Generator, tally):
        while True:
            yield load_scene(self.refs[rng.integers(len(self.refs))])


def patches_per_second(dataset, workers: int, seconds: float) -> float:
    loader = DataLoader(dataset, batch_size=BATCH, num_workers=workers, persistent_workers=False)
    batches = iter(loader)
    next(batches)  # start-up and the shuffle buffer's fill are not the steady state
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        count += next(batches)[0].shape[0]
    return count / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=24, help="synthetic train scenes per band")
    parser.add_argument("--seconds", type=float, default=8.0, help="measuring time per figure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tree, out = Path(tmp) / "tree", Path(tmp) / "shards"
        synthesise(tree, args.scenes, 0, ["NIR"], seed=0, workers=2)
        pack(tree, out, ["NIR"], val_fraction=0.0, workers=2, scenes_per_shard=8)
        settings = DataConfig()
        rows = []
        for workers in (1, 2, 4):
            dataset = TrainPatches(shard_paths(out, "NIR", "train"), settings, seed=0, rank=0)
            rows.append(
                {
                    "source": "shards",
                    "workers": workers,
                    "patches_per_s": patches_per_second(dataset, workers, args.seconds),
                }
            )
        rows.append(
            {
                "source": "PNG tree",
                "workers": 2,
                "patches_per_s": patches_per_second(PatchesFromPNG(tree, settings), 2, args.seconds),
            }
        )
    report("loader", rows, ["source", "workers", "patches_per_s"])


if __name__ == "__main__":
    command(main)
