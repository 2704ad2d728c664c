"""Settings of a run small enough to train in seconds on a CPU: each test file adds the
steps, cadences and loader settings it checks."""

import sys

TINY_RUN = [
    "model.n_feat=8",
    "model.r_bneck=4",
    "model.n_tefa=1",
    "train.batch_size=4",
    "data.patch=16",
    "data.patches_per_scene=4",
    "data.shuffle_buffer=16",
    "train.val_cssim=false",
]


def train_command(run_dir, shards, *settings) -> list[str]:
    """`python -m piunet_dist train` of the demo's config in `run_dir` on `shards`, with `settings`."""
    return [
        sys.executable,
        "-m",
        "piunet_dist",
        "train",
        "--config",
        "configs/demo.yaml",
        f"run_dir={run_dir}",
        f"data.shards={shards}",
        *settings,
    ]
