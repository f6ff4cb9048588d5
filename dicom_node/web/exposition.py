"""``/metrics``: the node's own registry in the Prometheus text format.

Rendered in FastAPI's thread pool: the scrape-time collector reads the index (its own
read connection) and ``statvfs``, which must not stall the event loop.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dicom_node.web.context import WebContext, context

router = APIRouter(tags=["metrics"])


@router.get("/metrics")
def metrics(ctx: Annotated[WebContext, Depends(context)]) -> Response:
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)
