"""Settings read from a YAML file and `section.key=value` overrides, and checked.

A YAML file sets any setting (and may `extends: other.yaml`, relative to itself);
trailing `section.key=value` arguments override them. Every mistake is one UserError
that names the setting: an unknown key with the nearest valid one, a wrong type, an
impossible value.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from pathlib import Path

import yaml

from .config import CHOICES, RULES, Config, TrainConfig, get
from .errors import UserError


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


def check_world(cfg: Config, world_size: int) -> int:
    """Per-process micro-batch size for this world; UserError when the global batch does not split."""
    per_step = cfg.train.batch_size // cfg.train.grad_accum
    if per_step % world_size:
        raise UserError(
            f"train.batch_size: {cfg.train.batch_size} patches (train.grad_accum={cfg.train.grad_accum}) "
            f"do not split evenly over {world_size} processes"
        )
    return per_step // world_size
