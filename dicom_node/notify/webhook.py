"""The webhook: one signed JSON POST per finished study.

The body names the study by its keyed hash (the one the logs use), the accession number
(how a RIS or a radiologist finds the study), each finding with its probability and the
checkpoint's threshold, the model, and a link to the study's page. No patient name or ID:
a chat channel has no need of them. ``X-ICH-Signature: sha256=<hex>`` is the HMAC-SHA256
of the exact body bytes with the webhook's secret, so the receiver can drop forgeries.

Errors: HTTP 4xx other than 408/429 are permanent (the receiver refuses this request as
it is: retrying sends the same bytes); 5xx, 408, 429, timeouts and connection errors are
transient. Redirects are not followed (a POST must not silently turn into a GET).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from typing import Any, Final

from dicom_node.config import Webhook
from dicom_node.notify.report import PermanentNotifyError, StudyReport, TransientNotifyError

SIGNATURE_HEADER: Final = "X-ICH-Signature"
_TRANSIENT_4XX: Final = frozenset({408, 429})


def payload(report: StudyReport) -> dict[str, Any]:
    """The JSON document of one study (a contract with receivers: add keys, never rename)."""
    return {
        "event": "study.done",
        "study": report.study_key,
        "generation": report.generation,
        "accession_number": report.patient.accession_number,
        "positive": report.positive,
        "findings": [
            {
                "label": f.label,
                "name": f.display,
                "probability": round(f.probability, 4),
                "threshold": f.threshold,
                "present": f.present,
            }
            for f in report.findings
        ],
        "model": {"uid": report.model_uid, "name": report.model_name},
        "link": report.link,
    }


def body_of(report: StudyReport) -> bytes:
    return json.dumps(payload(report), separators=(",", ":"), sort_keys=True).encode()


def signature(body: bytes, secret: str) -> str:
    """``sha256=<hex HMAC-SHA256 of body>``: what the receiver recomputes and compares."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER: Final = urllib.request.build_opener(_NoRedirect)


def post(hook: Webhook, report: StudyReport) -> float:
    """POST the study to ``hook``; returns the seconds it took. Raises on failure."""
    body = body_of(report)
    request = urllib.request.Request(  # noqa: S310 - the URL's scheme is checked in config
        hook.url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "ich-triage-node",
            SIGNATURE_HEADER: signature(body, hook.secret),
        },
    )
    t0 = time.perf_counter()
    try:
        with _OPENER.open(request, timeout=hook.timeout_s) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        code = exc.code
        exc.close()
        reason = f"HTTP {code}"
        if code >= 500 or code in _TRANSIENT_4XX:
            raise TransientNotifyError(reason) from None
        raise PermanentNotifyError(reason) from None  # 4xx, or a redirect we do not follow
    except urllib.error.URLError as exc:
        raise TransientNotifyError(f"cannot reach webhook ({_why(exc.reason)})") from None
    except (TimeoutError, ConnectionError, OSError) as exc:
        raise TransientNotifyError(f"webhook connection failed ({_why(exc)})") from None
    return time.perf_counter() - t0


def _why(reason: object) -> str:
    """A short cause without the URL (it may carry a token in its path or query)."""
    if isinstance(reason, BaseException):
        return type(reason).__name__
    return str(reason)[:80]
