"""How a command ends on a user's mistake or a failing disk: one line naming what is wrong
and exit status 2, never a traceback."""

from __future__ import annotations

import os
import sys

from .errors import UserError
from .files import disk_error, disk_failure


def error_exit(command: str, error: Exception) -> int:
    """Print `error` as one line of `command` (with the process's rank where there are several)
    and return 2; re-raise an error that is neither a UserError nor the disk's."""
    if isinstance(error, UserError):
        message = one_line(error)
    elif disk_failure(error):
        # a write that no helper named (a library's own file): the path if the error knows it
        message = str(disk_error(getattr(error, "filename", None) or "a file", error))
    else:
        raise error
    rank = f"[rank {os.environ.get('RANK', '?')}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    print(f"{rank}piunet-dist {command}: error: {message}", file=sys.stderr)
    return 2


def one_line(error: UserError) -> str:
    """The message alone, also when a DataLoader worker raised it: the loader re-raises it
    with the worker's traceback in the text, whose last line is 'module.Class: message'."""
    text = str(error).strip()
    if "Original Traceback" in text:
        return text.splitlines()[-1].split(": ", 1)[-1]
    return text
