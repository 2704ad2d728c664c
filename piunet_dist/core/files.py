"""Writing files so that no reader ever sees half of one.

Every file and directory the project writes is written under a temporary name beside
its final one and renamed once whole. A full, read-only or forbidden disk is one
UserError naming the path, and what was half written is removed.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

PARTIAL = ".partial"
# failures that are the disk's or the permissions', not the program's
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def disk_failure(error: BaseException) -> str | None:
    """Why a write failed, when the disk or its permissions are to blame (a full disk, say);
    None for any other failure. Libraries that write in native code (safetensors) report the
    OS error only in their message."""
    if isinstance(error, OSError) and error.errno in DISK_ERRORS:
        return error.strerror or str(error)
    found = re.search(r"\(os error (\d+)\)", str(error))
    if found and int(found.group(1)) in DISK_ERRORS:
        return os.strerror(int(found.group(1)))
    return None


def disk_error(path: Path | str, error: BaseException) -> UserError:
    return UserError(f"{path}: cannot write ({disk_failure(error) or error})")


def remove(path: Path) -> None:
    """Remove a file or directory this project wrote, if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def replacing(path: Path | str) -> Iterator[Path]:
    """A temporary path beside `path` (a file or a directory) for the block to write;
    renamed onto `path` when the block ends, removed when it fails. An existing directory
    at `path` is swapped out and removed only after the new one is in place."""
    path = Path(path)
    partial = path.with_name(path.name + PARTIAL)
    try:
        remove(partial)
        path.parent.mkdir(parents=True, exist_ok=True)
        yield partial
        if partial.is_dir() and path.is_dir():
            old = path.with_name(path.name + ".old")
            remove(old)
            path.rename(old)
            partial.rename(path)
            remove(old)
        else:
            os.replace(partial, path)
    except BaseException as e:
        remove(partial)
        if disk_failure(e):
            raise disk_error(path, e) from None
        raise


def write_text(path: Path | str, text: str) -> None:
    with replacing(path) as partial:
        partial.write_text(text)


def write_json(path: Path | str, data) -> None:
    write_text(path, json.dumps(data, indent=1))


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def append_record(path: Path | str, record: dict) -> None:
    """Append a record, stamped with the time, as one JSON line of a log (its folder made if
    need be). A line torn by a kill during an earlier write is cut off by repair_lines."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps({**record, "time": utc_now()}) + "\n")
    except OSError as e:
        if disk_failure(e):
            raise disk_error(path, e) from None
        raise


def repair_lines(path: Path | str) -> int:
    """Cut a torn last line (one without its newline: a write killed half way) off a log of
    JSON lines; returns the number of bytes cut."""
    path = Path(path)
    if not path.is_file():
        return 0
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep == len(data):
        return 0
    try:
        with open(path, "r+b") as f:
            f.truncate(keep)
    except OSError as e:
        if disk_failure(e):
            raise disk_error(path, e) from None
        raise
    return len(data) - keep


def read_json(path: Path | str):
    """A JSON file this project wrote, read back; one UserError naming it when it cannot be
    read or is not whole."""
    try:
        return json.loads(Path(path).read_text())
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def read_json_or_empty(path: Path | str) -> dict:
    """A record kept beside outputs to say how they were made: {} when missing or not whole,
    which makes them be made again."""
    try:
        found = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return found if isinstance(found, dict) else {}


def read_json_lines(path: Path | str) -> tuple[list[dict], int]:
    """The records of a log of JSON lines, and how many lines were not whole records."""
    records, bad = [], 0
    for line in Path(path).read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad += 1
    return records, bad


def sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
