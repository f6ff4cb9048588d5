"""The FastAPI application: the probes, ``/metrics``, and whatever routers a feature adds.

A feature (the worklist page, its API) is an ``APIRouter`` in a module of its own,
passed to :func:`create_app`; it reads the node through
:class:`~dicom_node.web.context.WebContext`.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, FastAPI

from dicom_node.web import exposition, health
from dicom_node.web.context import WebContext


def create_app(ctx: WebContext, routers: Sequence[APIRouter] = ()) -> FastAPI:
    """The node's app: probes, metrics, then ``routers``."""
    # No interactive docs: they load scripts from a CDN a hospital network rarely reaches,
    # and nothing here is an API yet. A later API router can turn the schema on.
    app = FastAPI(
        title="ICH triage node", version=ctx.version, docs_url=None, redoc_url=None,
        openapi_url=None,
    )  # fmt: skip
    app.state.context = ctx
    for router in (health.router, exposition.router, *routers):
        app.include_router(router)
    return app
