"""The Procfile's lines as argv lists: the demo, the tests and the benchmark run them as is."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

PROCFILE = Path(__file__).resolve().parent.parent / "Procfile"


def procfile_command(name: str) -> list[str]:
    """The command of one Procfile line, split as a shell would (``$PORT`` left as written)."""
    for line in PROCFILE.read_text().splitlines():
        key, _, command = line.partition(":")
        if key.strip() == name:
            return shlex.split(command)
    raise KeyError(f"no {name}: line in the Procfile")


def local_command(command: list[str]) -> list[str]:
    """``command`` with its program taken from this interpreter's environment when it is there.

    A Procfile names ``celery`` or ``uvicorn`` as a PaaS would find them on PATH; here the
    ones installed beside this Python are meant, whatever PATH says.
    """
    program = Path(sys.executable).parent / command[0]
    return [str(program), *command[1:]] if program.exists() else list(command)
