"""The JSON API under ``/api``: the worklist, one study, its key image, and the actions.

Every route needs a session or a bearer token (:func:`dicom_node.web.auth.api_principal`);
the actions also need the session's CSRF token and are written to the study's audit trail
with the user and the time. ``{key}`` is the study key of the logs and the webhooks
(:func:`dicom_node.logs.study_key`), never the Study Instance UID. Index reads run in
FastAPI's thread pool (plain ``def``), never on the event loop.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response

from dicom_node.store.index import STATES, StudyRow
from dicom_node.web.auth import Principal, api_principal, require_csrf
from dicom_node.web.context import WebContext, context
from dicom_node.web.studies import StudyFilter, StudySource
from models.labels import LABELS

MAX_LIMIT: Final = 500
NO_STORE: Final = {"Cache-Control": "no-store"}

router = APIRouter(prefix="/api", tags=["api"])

Ctx = Annotated[WebContext, Depends(context)]
Who = Annotated[Principal, Depends(api_principal)]


def source(ctx: WebContext) -> StudySource:
    if ctx.studies is None:
        raise HTTPException(503, "the study index is not available")
    return ctx.studies


def study_or_404(src: StudySource, key: str) -> StudyRow:
    row = src.by_key(key)
    if row is None:
        raise HTTPException(404, "no such study")
    return row


@router.get("/health")
def health(ctx: Ctx, who: Who) -> JSONResponse:
    """This process and every receiver and worker on its index (one node, or several
    processes around one PostgreSQL database): role, host, device, model UID, load and
    last heartbeat; studies per state and pending deliveries."""
    index = source(ctx).index
    states, pending = index.counts()
    body = {
        "role": ctx.role,
        "worker_id": ctx.worker_id,
        "version": ctx.version,
        "studies": {s: states.get(s, 0) for s in STATES},
        "pending_deliveries": pending,
        "workers": [w.to_json() for w in index.workers()],
    }
    return JSONResponse(body, headers=NO_STORE)


@router.get("/studies")
def list_studies(
    ctx: Ctx,
    who: Who,
    state: Annotated[list[str] | None, Query()] = None,
    finding: str | None = None,
    date_from: date | None = None,
    date_to: date | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JSONResponse:
    """The worklist: positives first by p(any), then the rest by arrival; paged."""
    states = tuple(state or ())
    if bad := [s for s in states if s not in STATES]:
        raise HTTPException(422, f"unknown state {bad[0]!r}; one of {', '.join(STATES)}")
    if finding is not None and finding not in LABELS:
        raise HTTPException(422, f"unknown finding {finding!r}; one of {', '.join(LABELS)}")
    src = source(ctx)
    rows = src.listing(StudyFilter(states, finding, date_from, date_to))
    page = [src.summary(r) for r in rows[offset : offset + limit]]
    body: dict[str, Any] = {"total": len(rows), "offset": offset, "limit": limit,
                            "studies": page}  # fmt: skip
    return JSONResponse(body, headers=NO_STORE)


@router.get("/studies/{key}")
def get_study(key: str, ctx: Ctx, who: Who) -> JSONResponse:
    src = source(ctx)
    return JSONResponse(src.detail(study_or_404(src, key)), headers=NO_STORE)


@router.get("/studies/{key}/image.png")
def study_image(key: str, ctx: Ctx, who: Who) -> Response:
    src = source(ctx)
    png = src.image_png(study_or_404(src, key))
    if png is None:
        raise HTTPException(404, "no result image for this study")
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, no-cache"})


def _action(
    key: str, action: str, request: Request, ctx: WebContext, who: Principal
) -> JSONResponse:
    require_csrf(request, who)
    src = source(ctx)
    row = study_or_404(src, key)
    ok, outcome = src.act(row, who.audit_name, action)
    return JSONResponse({"ok": ok, "action": action, "outcome": outcome},
                        status_code=202 if ok else 409, headers=NO_STORE)  # fmt: skip


@router.post("/studies/{key}/reprocess")
def reprocess(key: str, request: Request, ctx: Ctx, who: Who) -> JSONResponse:
    """Queue the study for inference again (the worker's queue); 409 when it cannot be."""
    return _action(key, "reprocess", request, ctx, who)


@router.post("/studies/{key}/resend")
def resend(key: str, request: Request, ctx: Ctx, who: Who) -> JSONResponse:
    """Send the current results to every destination again; 409 without results."""
    return _action(key, "resend", request, ctx, who)
