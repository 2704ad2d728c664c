"""Every setting, typed, with a default that works and a one-line meaning: the dataclasses
and their rules (config_load reads and checks them, config_flags makes them flags), and
what a run's settings are as text, a flat table and a hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

import yaml


def setting(
    default,
    meaning: str,
    *,
    choices: tuple = (),
    positive: bool = False,
    not_negative: bool = False,
    finite: bool = False,
    share: bool = False,
    auto_or_count: int | None = None,
    resumable: bool = False,
):
    """A dataclass field with its one-line meaning (the configuration reference reads it) and
    its rules: the values it takes (`choices`), its bounds (`positive`, `not_negative`, `finite`, a `share` in
    [0, 1), `auto_or_count`: "auto" or a whole number of at least this), and whether a resumed run may
    change it (`resumable`: how long, how often, where and how it is computed, never what)."""
    rules = {
        "help": meaning,
        "choices": tuple(choices),
        "positive": positive,
        "not_negative": not_negative,
        "finite": finite,
        "share": share,
        "auto_or_count": auto_or_count,
        "resumable": resumable,
    }
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=rules)
    return field(default=default, metadata=rules)


def section(kind, resumable: bool = False):
    """A section of settings; a `resumable` one (eval, launch) may change as a whole on resume."""
    return field(default_factory=kind, metadata={"resumable": resumable})


BANDS = ("NIR", "RED")


@dataclass
class ModelConfig:
    n_feat: int = setting(42, "feature channels (paper: 42)", positive=True)
    r_bneck: int = setting(8, "squeeze-excite reduction ratio (paper: 8)", positive=True)
    n_tefa: int = setting(16, "TEFA blocks (paper: 16)", positive=True)
    n_heads: int = setting(1, "temporal attention heads (paper: 1)", positive=True)
    attention: str = setting(
        "auto",
        "temporal attention core: auto (triton on a GPU, sdpa on a CPU), sdpa, matmul "
        "or triton; the same function and parameters",
        choices=("auto", "sdpa", "matmul", "triton"),
        resumable=True,
    )


@dataclass
class DataConfig:
    shards: str = setting("shards/probav", "directory holding manifest.json and the band folders", resumable=True)
    band: str = setting("NIR", "band to train on: NIR or RED", choices=BANDS)
    n_frames: int = setting(9, "frames per scene, T (paper: 9)", positive=True)
    policy: str = setting(
        "paper", "frame selection in training: paper (clearest first) or random", choices=("paper", "random")
    )
    min_clearance: float = setting(0.85, "a frame is usable when more than this share is clear", share=True)
    no_data: str = setting(
        "fill",
        "what the network sees where a frame holds 65,520 (no data): fill (what the other frames saw there; "
        "docs/method.md section 5) or keep (the value, as the published code)",
        choices=("fill", "keep"),
    )
    register: bool = setting(False, "align frames to the clearest one by phase correlation first")
    patch: int = setting(32, "LR patch side in training; the HR patch is 3x (paper: 32)", positive=True)
    min_clear: float = setting(0.1, "a patch is kept when more than this share of its HR is clear", share=True)
    patches_per_scene: int = setting(16, "patches cut from a scene each time it is read", positive=True)
    augment: bool = setting(False, "random 90-degree rotations and flips of training patches (the paper: none)")
    shuffle_buffer: int = setting(512, "patches mixed across scenes in each loader worker", positive=True)
    workers: int = setting(4, "loader worker processes per training process", not_negative=True, resumable=True)
    skip_corrupt: bool = setting(
        False, "skip (count and log) unreadable training samples instead of stopping", resumable=True
    )
    max_skipped_share: float = setting(
        0.05,
        "with skip_corrupt: stop when more than this share of the training samples a loader worker read was corrupt",
        share=True,
        resumable=True,
    )


@dataclass
class TrainConfig:
    max_steps: int = setting(
        195_000, "optimizer steps in all (paper: 750 epochs, about 195,000 steps on NIR)", positive=True, resumable=True
    )
    batch_size: int = setting(
        24, "global batch: patches per optimizer step over all processes (paper: 24)", positive=True
    )
    grad_accum: int = setting(1, "micro-batches accumulated per optimizer step", positive=True)
    lr: float = setting(1e-4, "Adam learning rate (paper: 1e-4)", positive=True, finite=True)
    weight_decay: float = setting(0.0, "Adam weight decay (paper: 0)", not_negative=True, finite=True)
    lr_milestones: list = setting([150_000], "steps at which the learning rate is multiplied by lr_gamma")
    lr_gamma: float = setting(0.2, "learning-rate factor at each milestone (paper: 0.2)", positive=True, finite=True)
    grad_clip: float = setting(15.0, "gradient-norm clipping threshold (paper: 15)", positive=True, finite=True)
    l1_warmup_steps: int = setting(
        260, "steps trained with the registered L1 loss before the Laplace loss (paper: one epoch)", not_negative=True
    )
    legacy_sigma_bias: bool = setting(False, "add the brightness bias to the log-scale, as the published code did")
    precision: str = setting(
        "auto",
        "mixed precision: auto (bf16 on GPUs that support it, float32 elsewhere), no (float32), bf16 or fp16; "
        "the loss and the output layers are always float32",
        choices=("auto", "no", "bf16", "fp16"),
    )
    seed: int = setting(0, "seed of the initial weights and of the data streams", not_negative=True)
    init_weights: str = setting(
        "",
        "start a new run from these weights (fine-tuning): a weights file (.pt, .pth, "
        ".safetensors) or a run's best/ or checkpoint directory; the step, optimizer and "
        "schedule start fresh, and a resumed run continues from its own checkpoint",
    )
    sync_bn: str = setting(
        "auto", "SyncBatchNorm: auto (on with several GPU processes), on, off", choices=("auto", "on", "off")
    )
    compile_loss: bool = setting(
        True, "fuse the loss's shift search with torch.compile (eager where it cannot compile)", resumable=True
    )
    compile_model: bool = setting(
        False,
        "compile each TEFA block with torch.compile (one compile, shared by all blocks): "
        "faster steps; the compile costs the first steps seconds",
        resumable=True,
    )
    pipeline: str = setting(
        "auto",
        "queue each step before the host reads the one before (the host then never waits for the device): "
        "auto (on GPUs), on or off; the same steps either way",
        choices=("auto", "on", "off"),
        resumable=True,
    )
    activation_checkpointing: bool = setting(
        False, "recompute each TEFA block in backward: less memory, slower steps", resumable=True
    )
    val_every: int = setting(
        1000, "steps between validations on the val shards (paper: every epoch)", positive=True, resumable=True
    )
    val_batch_size: str = setting(
        "auto",
        "whole scenes per validation batch and process: auto (1 on a CPU, as many "
        "as fit on a GPU, at most 32) or a number",
        auto_or_count=1,
        resumable=True,
    )
    val_cssim: bool = setting(True, "compute cSSIM in validation (49 SSIM maps per scene)", resumable=True)
    ckpt_every: int = setting(5000, "steps between checkpoints", positive=True, resumable=True)
    keep_last: int = setting(3, "complete checkpoints kept besides best/", positive=True, resumable=True)
    log_every: int = setting(50, "steps between training log events", positive=True, resumable=True)
    max_bad_steps: int = setting(5, "consecutive non-finite losses that stop the run", positive=True, resumable=True)
    resume: bool = setting(True, "continue from the newest complete checkpoint in run_dir", resumable=True)
    log_with: list[str] = setting(
        ["tensorboard"],
        "experiment trackers the run logs to, through Accelerate: tensorboard, wandb, mlflow, aim, comet_ml, "
        "clearml, dvclive, swanlab, trackio, or all (every one installed); metrics.jsonl is written whatever they are",
        resumable=True,
    )
    tracker_project: str = setting(
        "piunet-dist", "the trackers' project (W&B) or experiment (MLflow and the others)", resumable=True
    )
    tracker_group: str = setting(
        "",
        "the sweep the run belongs to, for its trackers (W&B's group, a sweep tag): launch sets it to its "
        "run_dir's name for the members of a sweep",
        resumable=True,
    )


ENSEMBLE_METHODS = ("mean", "median", "val_weighted", "inverse_variance", "inverse_total_variance")


@dataclass
class EvalConfig:
    split: str = setting("val", "split to evaluate: val or test", choices=("val", "test"))
    shards: str = setting(
        "",
        "shards to read instead of those each run trained on (empty: each run's data.shards; "
        "weights files need it unless a run of their band gives it)",
    )
    band: str = setting(
        "",
        "band of the weights files among the members: NIR or RED (a run's own is in its config.yaml)",
        choices=("", *BANDS),
    )
    heads: int = setting(
        1, "attention heads of the weights files among the members (the published have 1)", positive=True
    )
    self_ensemble: str = setting(
        "auto",
        "views averaged per scene: auto (the views a member was trained to expect: 1 "
        "for weights files and runs trained without data.augment, the rotations for "
        "runs trained with it), 1, 4 (rotations) or 8 (rotations and flips)",
        choices=("auto", "1", "4", "8"),
    )
    checkpoint: str = setting("best", "which weights of a run: best or last", choices=("best", "last"))
    ensemble: str = setting(
        "val_weighted",
        "how members combine into the ensemble that is written and submitted: mean, "
        "median, val_weighted (by each member's validation cPSNR), inverse_variance "
        "(per pixel, 1/b^2) or inverse_total_variance (per pixel, with the members' "
        "spread); every one is scored",
        choices=ENSEMBLE_METHODS,
    )
    out: str = setting("runs/eval", "output directory")
    batch_size: str = setting(
        "auto",
        "scenes per prediction batch and process, each with its self-ensemble's "
        "views: auto (1 on a CPU, as many as fit on a GPU, at most 32) or a number",
        auto_or_count=1,
    )
    workers: int = setting(
        2, "loader worker processes reading the scenes, beside each predicting or scoring process", not_negative=True
    )
    precision: str = setting(
        "auto",
        "inference precision: auto (bf16 on a GPU that supports it, float32 elsewhere), no or bf16; the output "
        "layers always run in float32",
        choices=("auto", "no", "bf16"),
    )
    calibrate: str = setting(
        "quantile",
        "with split val: fit a calibration of each member's and the ensemble's scale: none, scale (one factor, by "
        "NLL) or quantile (the observed quantiles of |error|/scale); made on part of the scenes, checked on the rest",
        choices=("none", "scale", "quantile"),
    )
    calibration_holdout: float = setting(
        0.5, "share of the val scenes kept back from the calibration's fit, to check it on", share=True
    )
    calibration: str = setting(
        "",
        "an evaluation of the val split (its out directory) whose calibrations to apply: each band's ensemble's "
        "scale map calibrated beside its predictions (NAME_scale_calibrated.npy); refused for other members",
    )
    interval: float = setting(
        0.0,
        "write the bounds of the central interval holding this share of the pixels (0.9, say) beside each "
        "ensemble prediction: NAME_lower.png, NAME_upper.png, 16-bit DN, calibrated with eval.calibration (0: none)",
        share=True,
    )
    partial: bool = setting(
        False,
        "with split test: write a submission that lacks some of the challenge's 290 test scenes (one band, "
        "a synthetic set); without it such a submission is refused",
    )
    log_with: list[str] = setting(
        [],
        "experiment trackers the evaluation's figures go to, as train.log_with names them: each run member's "
        "to its run's tracker runs, the ensembles', the weights files' and the report's figures to a run of the "
        "evaluation's own per band, in OUT/<band> (none by default)",
    )


@dataclass
class LaunchConfig:
    nodes: int = setting(1, "SLURM nodes", positive=True)
    gpus_per_node: str = setting(
        "auto",
        "GPUs per node, one process each: auto (the partition's, from SLURM's GRES; this machine's for local "
        "processes; 0 where there are none) or a number; 0 runs tasks_per_node CPU processes",
        auto_or_count=0,
    )
    tasks_per_node: int = setting(1, "processes per node when gpus_per_node is 0", positive=True)
    cpus_per_task: int = setting(4, "CPU cores per process", positive=True)
    partition: str = setting("", "SLURM partition (empty: the cluster's default)")
    account: str = setting("", "SLURM account")
    time: str = setting("24:00:00", "time limit per job in SLURM's formats: M, M:S, H:M:S, D-H, D-H:M or D-H:M:S")
    qos: str = setting("", "SLURM quality of service")
    constraint: str = setting("", "SLURM node constraint")
    mem: str = setting("", "memory per node, e.g. 64G (empty: the cluster's default)")
    cluster: str = setting(
        "auto",
        "auto (SLURM when sbatch is on the PATH and a controller answers sinfo; local processes otherwise), "
        "slurm or local",
        choices=("auto", "slurm", "local"),
    )
    max_requeues: int = setting(5, "times a preempted or timed-out job requeues itself", not_negative=True)


@dataclass
class Config:
    run_dir: str = setting("runs/piunet", "where checkpoints, logs and metrics of the run go", resumable=True)
    sweep: dict = setting(
        {},
        "settings the launcher sweeps, each with its values ({section.key: [v1, v2]}): their grid x --bands x "
        "--seeds is one job array, a run directory each",
        resumable=True,
    )
    model: ModelConfig = section(ModelConfig)
    data: DataConfig = section(DataConfig)
    train: TrainConfig = section(TrainConfig)
    eval: EvalConfig = section(EvalConfig, resumable=True)
    launch: LaunchConfig = section(LaunchConfig, resumable=True)


def rules() -> dict[str, dict]:
    """Every setting's rules (setting()'s metadata) by its dotted key, in declaration order;
    a setting of a resumable section is resumable."""
    found = {}
    for top in dataclasses.fields(Config):
        if top.metadata.get("help") is not None:
            found[top.name] = dict(top.metadata)
            continue
        for f in dataclasses.fields(top.default_factory):
            found[f"{top.name}.{f.name}"] = {
                **f.metadata,
                "resumable": f.metadata["resumable"] or top.metadata["resumable"],
            }
    return found


RULES = rules()


CHOICES = {key: r["choices"] for key, r in RULES.items() if r["choices"]}


def get(cfg: Config, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def flat(cfg: Config) -> dict:
    """Every setting of cfg by its dotted key."""
    found = {}
    for top in dataclasses.fields(cfg):
        value = getattr(cfg, top.name)
        if dataclasses.is_dataclass(value):
            found |= {f"{top.name}.{k}": v for k, v in dataclasses.asdict(value).items()}
        else:
            found[top.name] = value
    return found


def run_differences(run: Config, new: Config) -> list[str]:
    """The settings that define a run in which `new` differs from `run`, as 'key: old -> new'."""
    old, now = flat(run), flat(new)
    return [f"{k}: {old[k]!r} -> {now[k]!r}" for k in old if old[k] != now[k] and not RULES[k]["resumable"]]


def sweep_point(configs: list[Config]) -> list[dict]:
    """Each run's values of the settings that tell these runs apart (a sweep's grid point):
    the settings that define a run, but for its seed and band, which every sweep has."""
    flats = [flat(c) for c in configs]
    keys = [
        k
        for k in (flats[0] if flats else {})
        if not RULES[k]["resumable"] and k not in ("train.seed", "data.band") and len({repr(f[k]) for f in flats}) > 1
    ]
    return [{k: f[k] for k in keys} for f in flats]


def config_hash(cfg: Config) -> str:
    """Short hash of every setting that shapes the result (not run_dir, logging or launch)."""
    d = to_dict(cfg)
    for where in ("run_dir", "launch", "sweep"):
        d.pop(where)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]
