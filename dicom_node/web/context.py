"""What the routes know of the running node: :class:`WebContext`, and the FastAPI
dependency that hands it to a route (``Annotated[WebContext, Depends(context)]``).

Why a context object instead of reaching into the service: the web layer sits beside
``pipeline`` and below ``service``, so it can import neither; the service hands down
what the routes may read (metrics, readiness), and a later feature (the worklist, its
API) adds a field here and a router of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request

from dicom_node import __version__
from dicom_node.metrics import NodeMetrics

if TYPE_CHECKING:
    from dicom_node.web.auth import Authenticator
    from dicom_node.web.health import Check
    from dicom_node.web.studies import StudySource


@dataclass(frozen=True)
class WebContext:
    """What the routes know of the running node."""

    metrics: NodeMetrics
    #: Runs every readiness check now (file system probes included: call off the loop).
    readiness: Callable[[], Sequence[Check]]
    #: Users and tokens; ``create_app`` makes one that admits nobody when none is given.
    auth: Authenticator | None = None
    #: The worklist's studies and actions (None: the API answers 503).
    studies: StudySource | None = None
    started: float = field(default_factory=time.time)
    version: str = __version__
    #: ``node.role`` of this process and its name in the index's ``workers`` table.
    role: str = "all"
    worker_id: str = ""


def context(request: Request) -> WebContext:
    """FastAPI dependency: the app's :class:`WebContext`."""
    ctx: WebContext = request.app.state.context
    return ctx
