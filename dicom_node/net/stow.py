"""DICOMweb STOW-RS: the SR and/or SC of a study in one multipart POST to an archive.

A plain ``urllib`` POST of ``multipart/related; type="application/dicom"`` to
``<url>/studies`` rather than ``dicomweb-client``: that client retries on its own
(``retrying``) and has no per-request timeout, while delivery needs exactly one
attempt per job, bounded by ``timeout_s``, with the error sorted into transient or
permanent for :mod:`dicom_node.pipeline.delivery`'s backoff.

Errors (as the webhook's): HTTP 5xx, 408, 429, timeouts and connection errors are
transient; other 4xx (and 409, "none stored") permanent. A 200 or 202 whose response
lists a Failed SOP Sequence (0008,1198) is a failure too: the archive took the request
but not every instance (transient: its cause, e.g. a full disk, may pass). Redirects
are not followed. Messages carry the status and counts, never the URL (it may carry a
token) nor anything from the instances.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from dicom_node.config import DicomwebDestination
from dicom_node.errors import TransientError
from dicom_node.http_post import post

FAILED_SOP_SEQUENCE: Final = "00081198"


def multipart_body(files: Sequence[Path], boundary: str) -> bytes:
    """The PS3.18 STOW-RS request body: one ``application/dicom`` part per file."""
    parts: list[bytes] = []
    for path in files:
        parts.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        parts.append(path.read_bytes())
        parts.append(b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts)


def _headers(dest: DicomwebDestination, boundary: str) -> dict[str, str]:
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
        "User-Agent": "ich-triage-node",
    }
    auth = dest.auth
    if auth is not None and auth.bearer is not None:
        headers["Authorization"] = f"Bearer {auth.bearer.get_secret_value()}"
    elif auth is not None and auth.password is not None:
        pair = f"{auth.username}:{auth.password.get_secret_value()}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    return headers


def failed_count(body: bytes) -> int:
    """How many instances the response's Failed SOP Sequence lists (0 if none)."""
    try:
        doc = json.loads(body) if body.strip() else {}
    except ValueError:
        # Not JSON (an XML answer despite our Accept): the tag's presence is enough.
        return 1 if FAILED_SOP_SEQUENCE.encode() in body else 0
    if isinstance(doc, list):  # some servers wrap the one response dataset in a list
        doc = doc[0] if doc else {}
    if not isinstance(doc, dict):
        return 0
    element = doc.get(FAILED_SOP_SEQUENCE)
    if not isinstance(element, dict):
        return 0
    value = element.get("Value")
    return len(value) if isinstance(value, list) else 0


def store(dest: DicomwebDestination, files: Sequence[Path]) -> float:
    """POST ``files`` to ``dest``'s STOW-RS endpoint; returns seconds. Raises on failure."""
    boundary = "ich-" + secrets.token_hex(16)
    request = urllib.request.Request(  # noqa: S310 - the URL's scheme is checked in config
        f"{dest.url}/studies",
        data=multipart_body(files, boundary),
        method="POST",
        headers=_headers(dest, boundary),
    )
    t0 = time.perf_counter()
    body = post(
        request,
        dest.timeout_s,
        peer="STOW-RS endpoint",
        label="STOW-RS",
        status_prefix="STOW-RS HTTP",
    )
    failed = failed_count(body)
    if failed:
        raise TransientError(f"STOW-RS: {failed} of {len(files)} instances not stored")
    return time.perf_counter() - t0
