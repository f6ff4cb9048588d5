"""One HTTP POST with the node's retry classification, for every HTTP peer we send to
(a STOW-RS archive, a webhook).

Why one place: both must sort answers the same way for the durable retries: 5xx, 408,
429, unreachable and timed-out peers are transient; any other 4xx, and a redirect (never
followed: it could carry the body to another host), is permanent. Messages name the
status or the cause's type, never the URL, which may carry a token in its path or query.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any, Final

from dicom_node.errors import PermanentError, TransientError

TRANSIENT_4XX: Final = frozenset({408, 429})


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER: Final = urllib.request.build_opener(_NoRedirect)


def post(
    request: urllib.request.Request,
    timeout_s: float,
    *,
    peer: str,
    label: str | None = None,
    status_prefix: str = "HTTP",
    transient: type[TransientError] = TransientError,
    permanent: type[PermanentError] = PermanentError,
) -> bytes:
    """Send ``request`` and return the answer's body; raise ``transient``/``permanent``.

    Messages: ``"cannot reach <peer> (...)"``, ``"<label> connection failed (...)"``
    (``label`` defaults to ``peer``) and ``"<status_prefix> <code>"``.
    """
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            return bytes(response.read())
    except urllib.error.HTTPError as exc:
        code = exc.code
        exc.close()
        reason = f"{status_prefix} {code}"
        if code >= 500 or code in TRANSIENT_4XX:
            raise transient(reason) from None
        raise permanent(reason) from None  # 4xx, or a redirect we do not follow
    except urllib.error.URLError as exc:
        raise transient(f"cannot reach {peer} ({why(exc.reason)})") from None
    except (TimeoutError, ConnectionError, OSError) as exc:
        raise transient(f"{label or peer} connection failed ({why(exc)})") from None


def why(reason: object) -> str:
    """A short cause without the URL (it may carry a token in its path or query)."""
    if isinstance(reason, BaseException):
        return type(reason).__name__
    return str(reason)[:80]
