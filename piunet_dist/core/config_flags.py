"""Settings on the command line: a flag for each (--self-ensemble, --cpus-per-task, ...), and
every setting with its default and meaning for --help and docs/settings.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing

from .config import RULES, Config
from .config_load import count_or_auto
from .errors import UserError


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
