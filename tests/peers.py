"""Real external peers for tests: the dciodvfy validator, free loopback ports.

Imported by test modules (``pythonpath = ["tests"]``). Helpers here start and check
real programs; nothing is mocked.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

DCIODVFY = "/usr/bin/dciodvfy"


def dciodvfy_errors(path: Path) -> list[str]:
    """Lines of ``dciodvfy`` output that report an error for ``path``.

    dciodvfy prints on stderr and exits 0 even when it finds errors, so the output is
    what counts. Warnings are allowed; lines naming an ``Error`` are not.
    """
    exe = shutil.which(DCIODVFY) or DCIODVFY
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, check=False)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [ln for ln in lines if ln.lstrip().startswith("Error")]


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (for peers that need a number)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
