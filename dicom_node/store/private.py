"""What the node writes is its user's alone: state folders 0700, files 0600.

The spool, the results, the index and the job store hold patient data (the spool and
results whole DICOM headers; the index study UIDs and reasons). Two mechanisms, because
neither alone covers every writer:

* :func:`restrict_umask` (``dicom-node serve`` and ``reindex`` call it first): the
  process umask 077 covers files written by code the node does not control, such as
  SQLite's ``-wal``/``-shm``/``-journal`` files, APScheduler's job store through
  SQLAlchemy, pydicom/highdicom ``save_as`` and any temporary file of a library;
* explicit modes where the node itself creates a folder or a file (:func:`private_dir`,
  :func:`private_db_file`, :func:`open_private`, ``FILE_MODE`` in ``os.open``): they do not
  depend on the umask, so a node embedded in another process (tests, a supervisor
  started with umask 022) still writes private state, and a folder left 0755 by an older
  version or by hand is tightened at start.

The folder modes are the barrier that matters: a file inside a 0700 folder is out of
other users' reach whatever its own mode. A folder that the node does not own, or a
shared one with the sticky bit (``/tmp``), is never chmodded: that would take it away
from its other users; a warning names it instead.

:func:`warn_if_root` logs once at start-up when the node runs as root: a DICOM listener
that parses network input needs no privileges (ports below 1024 take a capability,
``deploy/ich-node.service``), and files it writes as root cannot be read by the service
user a later start runs as.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import IO, Final

log = logging.getLogger(__name__)

DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600
UMASK: Final = 0o077


def restrict_umask() -> int:
    """Set the process umask to 077 (new files 0600, folders 0700); returns the old one."""
    return os.umask(UMASK)


def _tighten(path: Path, mode: int) -> None:
    """chmod ``path`` to ``mode`` if it is looser and ours; a warning if it is not ours."""
    st = path.stat()
    if stat.S_IMODE(st.st_mode) & ~mode & 0o777 == 0:
        return
    if st.st_uid != os.geteuid() or st.st_mode & stat.S_ISVTX:
        log.warning(
            "storage.not_private",
            extra={"path": str(path), "mode": oct(stat.S_IMODE(st.st_mode)),
                   "hint": "give the node a folder of its own"},
        )  # fmt: skip
        return
    path.chmod(mode)


def private_dir(path: Path, *, tighten: bool = True) -> Path:
    """Create ``path`` (and missing parents) as 0700; ``tighten``: an existing ``path``
    looser than 0700 is chmodded to it.

    Existing parents are left alone (they may be shared, e.g. ``/var/lib``). Folders the
    node owns outright (spool, results) are tightened; the folder of a database file may
    be shared with other files (the config's own folder), so only created private.
    """
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for folder in reversed(missing):
        folder.mkdir(mode=DIR_MODE, exist_ok=True)
        folder.chmod(DIR_MODE)  # mkdir's mode is masked by the umask: set it whatever it is
    if tighten:
        _tighten(path, DIR_MODE)
    return path


def private_db_file(path: Path) -> None:
    """Make the SQLite file ``path`` 0600 (created empty if missing: an empty file is an
    empty database to SQLite).

    SQLite creates its ``-wal``, ``-shm`` and ``-journal`` files with the database
    file's own permissions, so this one mode covers them too.
    """
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE))
    _tighten(path, FILE_MODE)


def open_private(path: Path) -> IO[bytes]:
    """Open ``path`` for writing (created or truncated) with mode 0600 whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return os.fdopen(fd, "wb")


def warn_if_root(euid: int | None = None) -> bool:
    """Log ``node.running_as_root`` when the effective user is root; True if it warned.

    ``euid`` defaults to the process's own (tests pass one).
    """
    uid = os.geteuid() if euid is None else euid
    if uid != 0:
        return False
    log.warning(
        "node.running_as_root",
        extra={"hint": "run the node as an unprivileged user (deploy/ich-node.service)"},
    )
    return True
