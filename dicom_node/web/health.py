"""``/healthz`` (the process answers) and ``/readyz`` (the node can take and process
studies), both open and without patient data: only check names and what is wrong.

Readiness is what a load balancer or an orchestrator acts on: 503 means "send no
studies here now", with a JSON body that names each failing check, so an admin reading
``curl`` output knows what to fix. The checks run on each request, in FastAPI's thread
pool (they touch the file system), never on the event loop.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from dicom_node.web.context import WebContext, context

MIB: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class Check:
    """One readiness condition: its name, whether it holds, and in words what was found."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class ReadinessSources:
    """Where each check looks; the service fills it with its own objects' views."""

    spool_dir: Path
    min_free_mb: int
    #: Whether the model is ready (loaded, or not needed) and in words what it is.
    model: Callable[[], tuple[bool, str]]
    scheduler_running: Callable[[], bool]
    receiver_listening: Callable[[], bool]

    def checks(self) -> list[Check]:
        return [
            Check("model", *self.model()),
            spool_writable(self.spool_dir),
            free_disk(self.spool_dir, self.min_free_mb),
            _flag("scheduler", self.scheduler_running(), "running", "not running"),
            _flag("receiver", self.receiver_listening(), "listening", "not listening"),
        ]


def _flag(name: str, ok: bool, yes: str, no: str) -> Check:
    return Check(name, ok, yes if ok else no)


def spool_writable(root: Path) -> Check:
    """Create and remove a probe file in the spool: what a C-STORE would do first.

    A write probe rather than ``os.access``: access bits say nothing of a read-only
    mount, a full inode table or a volume that went away, and root passes them anyway.
    """
    try:
        fd, probe = tempfile.mkstemp(prefix=".ready-", dir=root)
        os.close(fd)
        Path(probe).unlink()
    except OSError as exc:
        return Check("spool", False, f"cannot write in {root} ({type(exc).__name__})")
    return Check("spool", True, "writable")


def free_disk(root: Path, min_free_mb: int) -> Check:
    """Free space on the spool's file system against ``storage.min_free_disk_mb``
    (below it every C-STORE is answered Out of Resources)."""
    try:
        st = os.statvfs(root)
    except OSError as exc:
        return Check("disk", False, f"cannot stat {root} ({type(exc).__name__})")
    free_mb = st.f_bavail * st.f_frsize // MIB
    detail = f"{free_mb} MiB free, minimum {min_free_mb} MiB"
    return Check("disk", free_mb > min_free_mb, detail)


router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(ctx: Annotated[WebContext, Depends(context)]) -> dict[str, Any]:
    """The process is up and its web thread answers."""
    return {
        "status": "ok",
        "version": ctx.version,
        "uptime_s": round(time.time() - ctx.started, 1),
    }


@router.get("/readyz")
def readyz(ctx: Annotated[WebContext, Depends(context)]) -> JSONResponse:
    """200 when every check holds, else 503; the body lists every check either way."""
    checks = list(ctx.readiness())
    failing = [c.name for c in checks if not c.ok]
    body = {
        "ready": not failing,
        "failing": failing,
        "checks": {c.name: {k: v for k, v in asdict(c).items() if k != "name"} for c in checks},
    }
    return JSONResponse(body, status_code=503 if failing else 200)
