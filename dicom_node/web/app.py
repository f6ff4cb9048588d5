"""The FastAPI application: the probes, ``/metrics``, and whatever routers a feature adds.

A feature (the worklist page, its API) is an ``APIRouter`` in a module of its own,
passed to :func:`create_app`; it reads the node through
:class:`~dicom_node.web.context.WebContext`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from fastapi import APIRouter, FastAPI
from starlette.middleware.sessions import SessionMiddleware

from dicom_node.config import WebSection
from dicom_node.web import api, auth, exposition, health, pages
from dicom_node.web.context import WebContext


def create_app(ctx: WebContext, routers: Sequence[APIRouter] = ()) -> FastAPI:
    """The node's app: probes, metrics, login, the worklist and its API, then ``routers``."""
    if ctx.auth is None:  # nobody configured: every protected route answers 401 / login
        ctx = dataclasses.replace(ctx, auth=auth.Authenticator(WebSection()))
    assert ctx.auth is not None
    # No interactive docs: they load scripts from a CDN a hospital network rarely reaches.
    app = FastAPI(
        title="ICH triage node", version=ctx.version, docs_url=None, redoc_url=None,
        openapi_url=None,
    )  # fmt: skip
    app.state.context = ctx
    app.add_middleware(
        SessionMiddleware,
        secret_key=ctx.auth.session_secret,
        session_cookie="ich_session",
        max_age=ctx.auth.session_max_age,
        same_site="lax",
        https_only=ctx.auth.cookie_secure,
    )  # Starlette's session cookie is always HttpOnly
    app.add_exception_handler(auth.LoginRequired, auth.login_redirect)
    for router in (health.router, exposition.router, auth.router, api.router, pages.router,
                   *routers):  # fmt: skip
        app.include_router(router)
    return app
