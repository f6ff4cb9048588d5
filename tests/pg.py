"""A real PostgreSQL server for the tests: ``initdb`` and ``pg_ctl`` in a temporary folder.

Debian's ``postgresql`` package (installed by ``make debs``) provides the binaries under
``/usr/lib/postgresql/<major>/bin``; nothing of the system cluster is used. The server
listens on 127.0.0.1 on a free port with its socket in its own folder. PostgreSQL refuses
to run as root, so as root every server command runs as the ``postgres`` system user (the
package creates it) and the folder is handed to that user.

fsync is off: the tests kill and restart node processes, not the machine, and PostgreSQL
keeps every commit through a crash of its own processes without it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from peers import free_port

#: The superuser the test cluster is created with (trust authentication on loopback).
SUPERUSER = "postgres"


def bindir() -> Path:
    """The newest installed PostgreSQL's binaries (``make debs`` installs one)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run `make debs` (Debian's postgresql)")
    return found[-1].parent


def _as_server_user(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@dataclass
class PostgresServer:
    """One throwaway cluster; :meth:`database` hands out a fresh empty database per test."""

    root: Path
    port: int
    _names: Iterator[int] = field(default_factory=itertools.count)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "run"

    @property
    def logfile(self) -> Path:
        return self.root / "server.log"

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq connection string (``psycopg.connect``)."""
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={dbname}"

    def url(self, dbname: str) -> str:
        """The SQLAlchemy URL the node's ``storage.index_db`` takes."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *argv: str) -> None:
        subprocess.run(
            _as_server_user([str(bindir() / argv[0]), *argv[1:]]),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=120,
        )

    def init(self) -> None:
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self.data.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            for path in (self.data, self.socket_dir):
                shutil.chown(path, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
                  "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")  # fmt: skip

    def start(self) -> None:
        """Start (or start again) and wait until it accepts connections."""
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        if os.geteuid() == 0 and not self.logfile.exists():
            self.logfile.touch()
            shutil.chown(self.logfile, "postgres", "postgres")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-o", options,
                  "-w", "-t", "60", "start")  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise

    def stop(self, mode: str = "fast") -> None:
        """Stop: ``fast`` (clients disconnected, clean) or ``immediate`` (as a crash)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def database(self, prefix: str = "node") -> str:
        """Create a new empty database and return its SQLAlchemy URL."""
        name = f"{prefix}_{next(self._names)}"
        with psycopg.connect(self.dsn(), autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A started server, stopped and removed on exit.

    The folder is made with :func:`tempfile.mkdtemp` under ``/tmp``, not pytest's
    ``tmp_path``: that one is private to root (0700) and the ``postgres`` user could not
    reach its data folder inside it.
    """
    root = Path(tempfile.mkdtemp(prefix="dicom-node-pg-"))
    root.chmod(0o755)
    server = PostgresServer(root, free_port())
    try:
        server.init()
        server.start()
        yield server
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
