"""Who may read the worklist and act on studies: users with a password (a session cookie
after ``/login``) and API clients with a bearer token; plus the CSRF check of actions.

* Passwords are stored as argon2 hashes in ``web.users`` (``dicom-node user add``); a
  login for an unknown name still verifies against a fixed hash, so the answer time does
  not tell which names exist.
* Sessions are Starlette's signed cookie (``itsdangerous``; ``web.session_secret``),
  HttpOnly and SameSite=Lax: the browser never sends it on a cross-site POST, and the
  per-session CSRF token (``X-CSRF-Token`` header or ``csrf`` form field) covers the rest.
* Bearer tokens (``web.api_tokens``) are compared by SHA-256 digest; a token request
  needs no CSRF token because no browser attaches a bearer token on its own.
* Failed logins are counted per client address and per user name; past
  ``web.login_failures_per_minute`` in the last minute, the next attempt is refused
  with 429 before its password is checked. Failures are logged with name and address,
  never the password.

``/healthz``, ``/readyz`` and ``/metrics`` do not use these dependencies: they stay open.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Final, Literal
from urllib.parse import parse_qs, quote

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from dicom_node.config import WebSection
from dicom_node.web.context import WebContext, context
from dicom_node.web.html import LOGIN_PAGE, page

log = logging.getLogger(__name__)

WINDOW_S: Final = 60.0
#: The largest login form read (a name and a password); more is refused unread.
MAX_FORM_BYTES: Final = 4096
CSRF_HEADER: Final = "X-CSRF-Token"

_HASHER: Final = PasswordHasher()
#: Verified against when the name is unknown, so both answers cost one argon2 verify.
_DUMMY_HASH: Final = _HASHER.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    """The argon2id hash stored in ``web.users[].password_hash``."""
    return _HASHER.hash(password)


def token_digest(token: str) -> str:
    """The SHA-256 hex stored in ``web.api_tokens[].token_sha256``."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: a logged-in user or an API token (``token:<name>`` in audit)."""

    name: str
    kind: Literal["user", "token"]
    csrf: str | None = None  # the session's CSRF token (users only)

    @property
    def audit_name(self) -> str:
        return self.name if self.kind == "user" else f"token:{self.name}"


class FailureLimiter:
    """Failed attempts per key (``addr:...``, ``user:...``) in a sliding minute."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def blocked(self, keys: Iterable[str]) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(len(self._recent(k, now)) >= self.per_minute for k in keys)

    def failed(self, keys: Iterable[str]) -> None:
        now = time.monotonic()
        with self._lock:
            for k in keys:
                self._recent(k, now).append(now)

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._failures.setdefault(key, deque())
        while q and now - q[0] > WINDOW_S:
            q.popleft()
        if not q and len(self._failures) > 10_000:  # a flood of names: forget the empty ones
            self._failures = {k: v for k, v in self._failures.items() if v}
            q = self._failures.setdefault(key, deque())
        return q


class Authenticator:
    """The configured users and tokens, and the failed-login limiter."""

    def __init__(self, web: WebSection) -> None:
        self.users = {u.name: u.password_hash for u in web.users}
        self.tokens = {t.token_sha256: t.name for t in web.api_tokens}
        self.limiter = FailureLimiter(web.login_failures_per_minute)
        #: Without users no cookie is ever issued; a random key keeps the middleware whole.
        self.session_secret = web.session_secret or secrets.token_urlsafe(32)
        self.session_max_age = int(web.session_hours * 3600)
        self.cookie_secure = web.cookie_secure

    def check_password(self, name: str, password: str) -> bool:
        stored = self.users.get(name)
        try:
            return _HASHER.verify(stored or _DUMMY_HASH, password) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def check_token(self, token: str) -> str | None:
        digest = token_digest(token)
        for known, name in self.tokens.items():
            if hmac.compare_digest(known, digest):
                return name
        return None


def principal_of(request: Request, auth: Authenticator) -> Principal | None:
    """The session's user or the bearer token's name; None when neither is valid."""
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        name = auth.check_token(header[7:].strip())
        return Principal(name, "token") if name else None
    user = request.session.get("user")
    if isinstance(user, str) and user in auth.users:  # a user removed from config is out
        return Principal(user, "user", str(request.session.get("csrf", "")))
    return None


def _auth(ctx: WebContext) -> Authenticator:
    assert ctx.auth is not None, "create_app always sets an authenticator"
    return ctx.auth


def api_principal(request: Request, ctx: Annotated[WebContext, Depends(context)]) -> Principal:
    """FastAPI dependency of ``/api``: 401 (JSON) without a session or a valid token."""
    who = principal_of(request, _auth(ctx))
    if who is None:
        raise HTTPException(401, "login or a bearer token required",
                            headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
    return who


class LoginRequired(Exception):  # noqa: N818 - a redirect, not an error
    """Raised by :func:`page_principal`; answered with a redirect to ``/login``."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def page_principal(request: Request, ctx: Annotated[WebContext, Depends(context)]) -> Principal:
    """FastAPI dependency of the pages: a redirect to ``/login?next=...`` without a session."""
    who = principal_of(request, _auth(ctx))
    if who is None:
        raise LoginRequired(request.url.path)
    return who


def login_redirect(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequired)
    return RedirectResponse(f"/login?next={quote(exc.path)}", status_code=303)


def require_csrf(request: Request, who: Principal, form_token: str | None = None) -> None:
    """403 unless a session's request carries its CSRF token (header or form field)."""
    if who.kind == "token":
        return
    sent = request.headers.get(CSRF_HEADER) or form_token or ""
    if not who.csrf or not hmac.compare_digest(sent, who.csrf):
        raise HTTPException(403, "missing or wrong CSRF token")


def _safe_next(target: str | None) -> str:
    """Only a path on this site (no ``//host``, no scheme): no open redirect."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form body, first value per field (no multipart: nothing uploads)."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(413, "form too large")
    fields = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {k: v[0] for k, v in fields.items()}


router = APIRouter(tags=["auth"])


@router.get("/login", response_class=HTMLResponse)
def login_page(next: str = "/") -> HTMLResponse:
    """The form; errors come only from the POST (no text of a link's choosing here)."""
    return page("Log in", LOGIN_PAGE.format(next=_attr(_safe_next(next)), error=""))


def _attr(text: str) -> str:
    import html

    return html.escape(text, quote=True)


@router.post("/login")
async def login(request: Request, ctx: Annotated[WebContext, Depends(context)]) -> Response:
    auth = _auth(ctx)
    form = await read_form(request)
    name = form.get("username", "")[:64]
    password = form.get("password", "")
    target = _safe_next(form.get("next"))
    addr = request.client.host if request.client else "unknown"
    keys = (f"addr:{addr}", f"user:{name}")
    if auth.limiter.blocked(keys):
        log.warning("web.login_limited", extra={"user": name, "client": addr})
        return page("Log in", LOGIN_PAGE.format(
            next=_attr(target), error="Too many failed logins: wait a minute."),
            status_code=429)  # fmt: skip
    if not auth.check_password(name, password):
        auth.limiter.failed(keys)
        log.warning("web.login_failed", extra={"user": name, "client": addr})
        return page("Log in", LOGIN_PAGE.format(
            next=_attr(target), error="Wrong user name or password."), status_code=401)  # fmt: skip
    request.session.clear()
    request.session["user"] = name
    request.session["csrf"] = secrets.token_urlsafe(32)
    log.info("web.login", extra={"user": name, "client": addr})
    return RedirectResponse(target, status_code=303)


@router.post("/logout")
async def logout(request: Request, ctx: Annotated[WebContext, Depends(context)]) -> Response:
    """Forget the session: POST with the session's CSRF token only, so that another site
    cannot log a radiologist out in the middle of a shift by embedding a link."""
    who = principal_of(request, _auth(ctx))
    if who is None or who.kind != "user":
        return RedirectResponse("/login", status_code=303)
    require_csrf(request, who, (await read_form(request)).get("csrf"))
    request.session.clear()
    log.info("web.logout", extra={"user": who.name})
    return RedirectResponse("/login", status_code=303)
