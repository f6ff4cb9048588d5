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
from dicom_node.http_post import post as http_post
from dicom_node.notify.report import PermanentNotifyError, StudyReport, TransientNotifyError

SIGNATURE_HEADER: Final = "X-ICH-Signature"


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
    http_post(
        request,
        hook.timeout_s,
        peer="webhook",
        transient=TransientNotifyError,
        permanent=PermanentNotifyError,
    )
    return time.perf_counter() - t0
