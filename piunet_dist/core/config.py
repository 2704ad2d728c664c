"""Every setting, typed, with a default that works and a one-line meaning.

A YAML file sets any of them (and may `extends: other.yaml`, relative to itself);
trailing `section.key=value` arguments override them. Every mistake is one UserError
that names the setting: an unknown key with the nearest valid one, a wrong type, an
impossible value.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import UserError


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


def _sections(cfg) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cfg)}


class Raw(str):
    """An override's text, read by the type of the setting it sets (not by YAML's guesses)."""


BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _from_raw(value: Raw, origin):
    text = str(value).strip()
    try:
        if origin is str:
            return text
        if origin is bool and text.lower() in BOOL_WORDS:
            return BOOL_WORDS[text.lower()]
        if origin is int:
            return int(text)
        if origin is float:
            return float(text)
        if origin in (list, dict):
            return yaml.safe_load(text)
    except (ValueError, yaml.YAMLError):
        pass
    return text  # left as text: the type check below names what was expected


def _check_type(key: str, value, kind, choices=()):
    origin = typing.get_origin(kind) or kind
    if isinstance(value, Raw):
        value = _from_raw(value, origin)
    if origin is str and isinstance(value, bool):  # YAML 1.1 reads on/off/yes/no as booleans
        words = [c for c in choices if isinstance(c, str) and BOOL_WORDS.get(c) is value]
        value = words[0] if words else value
    if origin is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is float and isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if origin is list and typing.get_args(kind) == (str,):  # names: [a, b] or, on a command line, a,b
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise UserError(f"{key}: expected a list of names (a,b or [a, b]), got {value!r}")
    if origin is list and isinstance(value, list):
        return value
    if origin is dict and isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: v if isinstance(v, list) else [v] for k, v in value.items()}
    if origin in (int, str, bool, float) and type(value) is origin:
        return value
    names = {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true or false",
        list: "a list",
        dict: "a mapping of settings to their values",
    }
    raise UserError(f"{key}: expected {names.get(origin, origin)}, got {value!r}")


def _apply(obj, values: dict, where: str, problems: list[str], prefix: str = "") -> None:
    """Set `values` on the dataclass `obj`; each mistake is added to `problems`, so that a file
    is reported whole, not one mistake per try."""
    hints = typing.get_type_hints(type(obj))
    fields = _sections(obj)
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in fields:
            near = difflib.get_close_matches(name, list(fields), n=1)
            hint = f"; did you mean {prefix}{near[0]}?" if near else f"; valid: {', '.join(fields)}"
            problems.append(f"{where}: unknown setting {key}{hint}")
            continue
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                problems.append(f"{where}: {key} is a section; give it as {key}.<setting>")
            else:
                _apply(current, value, where, problems, f"{key}.")
            continue
        rule = RULES.get(key, {})
        if type(value) is int and (rule.get("auto_or_count") is not None or str(value) in rule.get("choices", ())):
            value = str(value)  # YAML's 4 for the text setting "4"
        try:
            setattr(obj, name, _check_type(f"{where}: {key}", value, hints[name], CHOICES.get(key, ())))
        except UserError as e:
            problems.append(str(e))


def _raise_all(problems: list[str]) -> None:
    if len(problems) == 1:
        raise UserError(problems[0])
    if problems:
        raise UserError(f"{len(problems)} mistakes in the settings:\n  " + "\n  ".join(problems))


def _read_yaml(path: Path, seen: tuple = ()) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: no such config file")
    if path.resolve() in seen:
        raise UserError(f"{path}: extends itself through {' -> '.join(str(p) for p in seen)}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of settings")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    base = _read_yaml(path.parent / parent, seen + (path.resolve(),))
    return _merge(base, data)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> tuple[list[str], Raw]:
    if "=" not in text:
        raise UserError(f"{text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), Raw(raw)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    cfg = Config()
    problems = []
    if path is not None:
        _apply(cfg, _read_yaml(Path(path)), str(path), problems)
    for text in overrides:
        keys, value = parse_override(text)
        nested = value
        for k in reversed(keys):
            nested = {k: nested}
        _apply(cfg, nested, "override", problems)
    _raise_all(problems)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    for rule, broken, message in (
        (
            "choices",
            lambda v, r: v not in r["choices"],
            lambda k, v, r: f"{k}: {v!r} is not one of {', '.join(map(str, r['choices']))}",
        ),
        ("positive", lambda v, r: not v > 0, lambda k, v, r: f"{k}: must be positive, got {v}"),
        ("not_negative", lambda v, r: not v >= 0, lambda k, v, r: f"{k}: must not be negative, got {v}"),
        ("finite", lambda v, r: not math.isfinite(v), lambda k, v, r: f"{k}: must be a finite number, got {v}"),
    ):
        for key, r in RULES.items():
            if r[rule] and broken(get(cfg, key), r):
                raise UserError(message(key, get(cfg, key), r))
    for key, r in RULES.items():
        if r["share"] and not 0 <= get(cfg, key) < 1:
            raise UserError(f"{key}: must be in [0, 1), got {get(cfg, key)}")
        if r["auto_or_count"] is not None:
            count_or_auto(key, get(cfg, key), r["auto_or_count"])
    if cfg.model.n_feat % cfg.model.n_heads:
        raise UserError(f"model.n_feat: {cfg.model.n_feat} is not divisible by model.n_heads={cfg.model.n_heads}")
    if cfg.model.n_feat // cfg.model.r_bneck < 1:
        raise UserError(f"model.r_bneck: {cfg.model.r_bneck} leaves no squeeze channel of {cfg.model.n_feat}")
    if not 1 <= cfg.data.patch <= 128:
        raise UserError(f"data.patch: {cfg.data.patch} is not in 1..128 (LR frames are 128x128)")
    if any(not isinstance(m, int) or m <= 0 for m in cfg.train.lr_milestones):
        raise UserError(f"train.lr_milestones: expected positive step numbers, got {cfg.train.lr_milestones}")
    if cfg.train.batch_size % cfg.train.grad_accum:
        raise UserError(
            f"train.batch_size: {cfg.train.batch_size} is not divisible by train.grad_accum={cfg.train.grad_accum}"
        )
    for key, values in cfg.sweep.items():
        check_sweep(key, values)
    if cfg.train.init_weights:
        check_fine_tune(cfg.train)


def check_fine_tune(train: TrainConfig) -> None:
    """A run from trained weights keeps its method fitting: no L1 phase, which would train the
    image alone while the uncertainty the weights learnt drifts, and a schedule inside its steps."""
    if train.l1_warmup_steps:
        raise UserError(
            f"train.l1_warmup_steps: {train.l1_warmup_steps} steps of the L1 loss at the start of a fine-tune from "
            "train.init_weights; give train.l1_warmup_steps=0 (as configs/finetune.yaml does)"
        )
    beyond = [m for m in train.lr_milestones if m >= train.max_steps]
    if beyond:
        raise UserError(
            f"train.lr_milestones: {beyond} at or beyond this fine-tune's train.max_steps={train.max_steps}; "
            "give milestones inside its steps (configs/finetune.yaml has [15000] of 20000), or []"
        )


NOT_SWEPT = ("run_dir", "sweep", "data.band", "train.seed")  # --bands and --seeds sweep those two


def check_sweep(key: str, values: list) -> None:
    """A swept setting: one that a run has (not where it is, nor how it is launched or evaluated)."""
    if key not in RULES or key in NOT_SWEPT or key.startswith(("eval.", "launch.")):
        near = difflib.get_close_matches(key, [k for k in RULES if k not in NOT_SWEPT], n=1)
        hint = f"; did you mean {near[0]}?" if near and key not in RULES else ""
        raise UserError(
            f"sweep: {key} is not a setting a sweep can vary{hint} (--bands and --seeds sweep data.band and train.seed)"
        )
    if not values:
        raise UserError(f"sweep: {key} has no values")


def count_or_auto(what: str, value: str, least: int = 1) -> int | None:
    """An auto-or-count setting read: None for auto, else the count of at least `least`; UserError otherwise."""
    text = str(value).strip()
    if text == "auto":
        return None
    if text.isdigit() and int(text) >= least:
        return int(text)
    kind = "a positive whole number" if least == 1 else f"a whole number of at least {least}"
    raise UserError(f"{what}: expected auto or {kind}, got {value!r}")


def add_setting_flags(parser, section: str, names: tuple[str, ...] | None = None) -> None:
    """A flag (--self-ensemble, --cpus-per-task, ...) for each setting of a section, or of those
    named: its type, choices and meaning from the dataclass. A flag left out leaves the setting
    to the YAML file or its default (see flag_overrides)."""
    section_type = type(getattr(Config(), section))
    hints = typing.get_type_hints(section_type)
    for f in dataclasses.fields(section_type):
        if names is not None and f.name not in names:
            continue
        key, flag = f"{section}.{f.name}", f"--{f.name.replace('_', '-')}"
        default = json.dumps(getattr(getattr(Config(), section), f.name))
        if hints[f.name] is bool:  # a switch: given, the setting is true
            parser.add_argument(flag, action="store_const", const=True, help=f"{f.metadata['help']} [{key}]")
            continue
        least = RULES[key]["auto_or_count"]
        kind = hints[f.name] if least is None else _auto_or_count(least)
        kind = str if typing.get_origin(kind) is list else kind  # names: --log-with wandb,mlflow
        choices = [c for c in RULES[key]["choices"] if c != ""] or None  # "" is the flag left out
        parser.add_argument(flag, type=kind, choices=choices, help=f"{f.metadata['help']} (default {default}: {key})")


def _auto_or_count(least: int):
    """The type of an auto-or-count flag: checked as it is read, so that argparse names the flag."""

    def read(text: str) -> str:
        try:
            count_or_auto("", text, least)
        except UserError as e:
            raise argparse.ArgumentTypeError(str(e).split(": ", 1)[1]) from None
        return text

    read.__name__ = "auto or count"  # what argparse calls the type in its message
    return read


def flag_overrides(args, section: str, names: tuple[str, ...] | None = None) -> list[str]:
    """The setting flags given on the command line (those of add_setting_flags, of the same
    `names`) as section.key=value overrides."""
    return [
        f"{section}.{f.name}={getattr(args, f.name)}"
        for f in dataclasses.fields(type(getattr(Config(), section)))
        if (names is None or f.name in names) and getattr(args, f.name, None) is not None
    ]


def check_world(cfg: Config, world_size: int) -> int:
    """Per-process micro-batch size for this world; UserError when the global batch does not split."""
    per_step = cfg.train.batch_size // cfg.train.grad_accum
    if per_step % world_size:
        raise UserError(
            f"train.batch_size: {cfg.train.batch_size} patches (train.grad_accum={cfg.train.grad_accum}) "
            f"do not split evenly over {world_size} processes"
        )
    return per_step // world_size


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


def settings() -> list[tuple[str, object, str]]:
    """(dotted key, default, meaning) of every setting, in declaration order."""
    rows = []

    def walk(obj, prefix):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                rows.append((f"{prefix}{f.name}", value, f.metadata["help"]))

    walk(Config(), "")
    return rows


def reference() -> str:
    """Markdown table of every setting: key, default, whether a resumed run may change it, meaning
    (docs/settings.md)."""
    rows = ["| setting | default | on resume | meaning |", "|---|---|---|---|"]
    rows += [
        f"| `{key}` | `{json.dumps(value)}` | {'may change' if RULES[key]['resumable'] else ''} | {meaning} |"
        for key, value, meaning in settings()
    ]
    return "\n".join(rows)


def settings_help() -> str:
    """Every setting as plain text, for --help."""
    width = max(len(key) for key, _, _ in settings())
    lines = ["settings (section.key=value; defaults in brackets):"]
    lines += [f"  {key:<{width}}  {meaning} [{json.dumps(value)}]" for key, value, meaning in settings()]
    return "\n".join(lines)
