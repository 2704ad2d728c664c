"""Settings of a run small enough to train in seconds on a CPU: each test file adds the
steps, cadences and loader settings it checks."""

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
