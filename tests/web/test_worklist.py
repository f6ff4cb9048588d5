"""The radiologist's worklist over real HTTP: login, the JSON API, the pages, the actions.

A node with the random-init model processes a positive phantom (``any`` present by the
test thresholds) and a study it cannot read (an MR series: ``skipped``); its PACS is the
recording SCP. Users log in with a form and a signed cookie, an API client with a bearer
token; actions need the session's CSRF token and land in the audit table.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from nodes import SENTINEL_ID, SENTINEL_NAME, Node, storescu, wait_for
from PIL import Image
from pipeline.support import RecordingPacs, assert_no_phi, destination, phantom

from dicom_node.logs import study_key
from dicom_node.store.index import StudyRow
from dicom_node.web.auth import hash_password, token_digest
from dicom_node.web.studies import worklist_order
from models.labels import LABELS

PASSWORD = "correct horse battery"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
TOKEN = "tok-0123456789abcdef0123456789abcdef"
SECRET = "s" * 40


def _web(**extra: Any) -> dict[str, Any]:
    return {
        "users": [{"name": "dr.rossi", "password_hash": hash_password(PASSWORD)}],
        "api_tokens": [{"name": "ris", "token_sha256": token_digest(TOKEN)}],
        "session_secret": SECRET,
        **extra,
    }


def _client(node: Node) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{node.service.web_port}", timeout=30)


def _login(client: httpx.Client, user: str = "dr.rossi", password: str = PASSWORD) -> str:
    """Log in with the form; returns the session's CSRF token (from the page's meta tag)."""
    resp = client.post("/login", data={"username": user, "password": password, "next": "/"})
    assert resp.status_code == 303, resp.text
    assert resp.headers["location"] == "/"
    cookie = resp.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=lax" in cookie
    page = client.get("/")
    assert page.status_code == 200
    m = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
    assert m, "no CSRF token on the page"
    return m.group(1)


def _key(uid: str) -> str:
    return study_key(uid, "test-key")


def test_worklist_api_pages_and_actions(
    tmp_path: Path, start_node: Callable[..., Node], pacs: RecordingPacs, log_capture: io.StringIO
) -> None:
    node = start_node([destination(pacs.port)], web=_web())
    positive = phantom(tmp_path / "pos", seed=21, n_slices=10)
    other = phantom(tmp_path / "mr", seed=22, n_slices=4, modality="MR")
    assert storescu(node.port, [f for s in positive.series for f in s.files]).returncode == 0
    node.wait_state(positive.study_uid, "done", 90)
    assert storescu(node.port, [f for s in other.series for f in s.files]).returncode == 0
    node.wait_state(other.study_uid, "skipped", 60)
    wait_for(lambda: node.delivery_states(positive.study_uid) == ["sent"], 60, "sent")
    kp, ko = _key(positive.study_uid), _key(other.study_uid)

    with _client(node) as c:
        csrf = _login(c)
        body = c.get("/api/studies").json()
        assert body["total"] == 2
        first, second = body["studies"]
        assert (first["key"], second["key"]) == (kp, ko)  # the positive on top
        assert first["positive"] is True
        assert first["patient"] == {"name": SENTINEL_NAME, "id": SENTINEL_ID}
        assert first["accession"]
        assert set(first["findings"]) == set(LABELS)
        assert first["findings"]["any"]["threshold"] == 0.0
        assert first["findings"]["subdural"]["present"] is False
        assert first["deliveries"]["pacs"]["state"] == "sent"
        assert second["state"] == "skipped"
        assert second["reason"]
        only = c.get("/api/studies", params={"state": "skipped"}).json()
        assert [s["key"] for s in only["studies"]] == [ko]
        epi = c.get("/api/studies", params={"finding": "epidural"}).json()
        assert [s["key"] for s in epi["studies"]] == [kp]
        paged = c.get("/api/studies", params={"limit": 1, "offset": 1}).json()
        assert (paged["total"], [s["key"] for s in paged["studies"]]) == (2, [ko])
        assert c.get("/api/studies", params={"state": "nonsense"}).status_code == 422
        today = first["arrival"][:10]
        assert c.get("/api/studies", params={"date_from": today}).json()["total"] == 2
        later = c.get("/api/studies", params={"date_from": "2999-01-01"}).json()
        assert later["total"] == 0
        assert c.get("/api/studies", params={"date_to": "2000-01-01"}).json()["total"] == 0

        detail = c.get(f"/api/studies/{kp}").json()
        chosen = [o for o in detail["series_choice"] if o["chosen"]]
        assert len(chosen) == 1
        assert {"select", "read_preprocess", "inference", "build"} <= set(
            detail["result"]["timings_s"]
        )
        assert detail["deliveries"]["pacs"]["attempts"] == 1
        skipped = c.get(f"/api/studies/{ko}").json()
        assert skipped["series_choice"]
        assert all(not o["chosen"] and o["reason"] for o in skipped["series_choice"])
        assert c.get("/api/studies/000000000000").status_code == 404

        png = c.get(detail["image"])
        assert png.status_code == 200
        assert png.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(png.content)).size == (1024, 1024)

        page = c.get(f"/studies/{kp}")
        assert page.status_code == 200
        assert "SENTINEL LEAKCHECK" in page.text
        assert "Present: any" in page.text
        assert "Content-Security-Policy" in page.headers

        # resend: the deliverer sends the same objects again (a second attempt row)
        before = sum(pacs.sop_counts().values())
        resp = c.post(f"/api/studies/{kp}/resend", headers={"X-CSRF-Token": csrf})
        assert resp.status_code == 202, resp.text
        assert resp.json()["outcome"] == "queued for 1 destination"
        wait_for(lambda: sum(pacs.sop_counts().values()) == before + 2, 60, "resent SR+SC")
        wait_for(lambda: c.get(f"/api/studies/{kp}").json()["deliveries"]["pacs"]["state"]
                 == "sent", 30, "resend recorded")  # fmt: skip
        # reprocess: through the worker's queue, back to done
        srs_before = len(pacs.by_class(SR_CLASS))
        resp = c.post(f"/api/studies/{kp}/reprocess", headers={"X-CSRF-Token": csrf})
        assert resp.status_code == 202, resp.text
        wait_for(lambda: len(pacs.by_class(SR_CLASS)) == srs_before + 1, 90, "reprocessed SR")
        node.wait_state(positive.study_uid, "done", 30)
        first_sr, *_, remade = pacs.by_class(SR_CLASS)
        # same model, series and generation: the same object again, not its own successor
        assert remade.SOPInstanceUID == first_sr.SOPInstanceUID
        assert "PredecessorDocumentsSequence" not in remade
        resp = c.post(f"/api/studies/{ko}/resend", headers={"X-CSRF-Token": csrf})
        assert resp.status_code == 409
        assert "not done" in resp.json()["outcome"]

        audit = c.get(f"/api/studies/{kp}").json()["audit"]
        assert [(a["user"], a["action"]) for a in audit] == [
            ("dr.rossi", "resend"), ("dr.rossi", "reprocess")
        ]  # fmt: skip
        assert "reprocess" in c.get(f"/studies/{kp}").text

    # An API client with the bearer token: no session, no CSRF token needed.
    with _client(node) as api:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert api.get("/api/studies", headers=auth).json()["total"] == 2
        resp = api.post(f"/api/studies/{kp}/resend", headers=auth)
        assert resp.status_code == 202, resp.text
        audit = api.get(f"/api/studies/{kp}", headers=auth).json()["audit"]
        assert audit[-1]["user"] == "token:ris"

    assert_no_phi(log_capture.getvalue(), positive, other)


PROTECTED_GET = ("/api/studies", "/api/studies/abc", "/api/studies/abc/image.png")
PROTECTED_POST = ("/api/studies/abc/reprocess", "/api/studies/abc/resend")
PAGES = ("/", "/studies/abc")


def _refused_everywhere(c: httpx.Client, **headers: str) -> None:
    for path in PROTECTED_GET:
        assert c.get(path, headers=headers).status_code == 401, path
    for path in PROTECTED_POST:
        assert c.post(path, headers=headers).status_code == 401, path
    for path in PAGES:
        resp = c.get(path, headers=headers)
        assert resp.status_code == 303, path
        assert resp.headers["location"].startswith("/login?next=")


def test_every_protected_route_is_refused_without_a_valid_login(
    start_receiver: Callable[..., Node],
) -> None:
    node = start_receiver(web=_web())
    with _client(node) as c:
        _refused_everywhere(c)
        _refused_everywhere(c, Authorization="Bearer not-the-token")
        wrong = c.post("/login", data={"username": "dr.rossi", "password": "guess"})
        assert wrong.status_code == 401
        assert "set-cookie" not in wrong.headers
        unknown = c.post("/login", data={"username": "nobody", "password": PASSWORD})
        assert unknown.status_code == 401
        _refused_everywhere(c)
        for open_path in ("/healthz", "/readyz", "/metrics"):
            assert c.get(open_path).status_code == 200, open_path
        # a forged cookie (signed with another secret) is no session
        c.cookies.set("ich_session", "eyJ1c2VyIjogImRyLnJvc3NpIn0=.forged.sig")
        _refused_everywhere(c)
        # logged in, then out: refused again
        c.cookies.clear()
        csrf = _login(c)
        assert c.get("/api/studies").status_code == 200
        # logging out is a POST with the session's CSRF token: a link on another site
        # (GET, or a form without the token) cannot end a radiologist's session
        assert c.get("/logout").status_code == 405
        assert c.post("/logout", data={"csrf": "forged"}).status_code == 403
        assert c.get("/api/studies").status_code == 200
        assert 'action="/logout"' in c.get("/").text
        assert c.post("/logout", data={"csrf": csrf}).status_code == 303
        _refused_everywhere(c)
        # an open redirect is not followed: next goes only to a path of this site
        resp = c.post("/login", data={"username": "dr.rossi", "password": PASSWORD,
                                      "next": "//evil.example/x"})  # fmt: skip
        assert resp.headers["location"] == "/"


def test_actions_need_the_csrf_token_and_are_audited(
    tmp_path: Path, start_receiver: Callable[..., Node]
) -> None:
    node = start_receiver(web=_web())
    study = phantom(tmp_path / "s", seed=23, n_slices=3)
    assert storescu(node.port, study.main.files).returncode == 0
    node.wait_state(study.study_uid, "complete")
    key = _key(study.study_uid)
    with _client(node) as c:
        csrf = _login(c)
        assert c.post(f"/api/studies/{key}/resend").status_code == 403
        bad = c.post(f"/api/studies/{key}/resend", headers={"X-CSRF-Token": csrf[:-2] + "xx"})
        assert bad.status_code == 403
        assert c.get(f"/api/studies/{key}").json()["audit"] == []  # refused: nothing recorded
        ok = c.post(f"/api/studies/{key}/reprocess", headers={"X-CSRF-Token": csrf})
        assert ok.status_code == 409  # receive-only node: no worker
        assert ok.json()["outcome"] == "refused: inference is off on this node"
        (row,) = c.get(f"/api/studies/{key}").json()["audit"]
        assert (row["user"], row["action"]) == ("dr.rossi", "reprocess")
        assert row["outcome"].startswith("refused")
        assert "inference is off" in c.get(f"/studies/{key}").text
        # another session has another token: the first one's is no good there
        with _client(node) as other:
            _login(other)
            stolen = other.post(f"/api/studies/{key}/resend", headers={"X-CSRF-Token": csrf})
            assert stolen.status_code == 403


def test_failed_logins_are_limited_and_logged_without_the_password(
    start_receiver: Callable[..., Node], log_capture: io.StringIO
) -> None:
    node = start_receiver(web=_web(login_failures_per_minute=3))
    with _client(node) as c:
        for i in range(3):
            resp = c.post("/login", data={"username": "dr.rossi", "password": f"wrong-{i}-pw"})
            assert resp.status_code == 401
        # the right password now is refused too, unchecked, for the rest of the minute
        limited = c.post("/login", data={"username": "dr.rossi", "password": PASSWORD})
        assert limited.status_code == 429
        assert "set-cookie" not in limited.headers
        # the address is limited whatever name it tries next
        assert c.post("/login", data={"username": "x", "password": "y"}).status_code == 429
    log = log_capture.getvalue()
    assert log.count("event=web.login_failed") == 3
    assert "event=web.login_limited" in log
    assert "user=dr.rossi" in log
    for i in range(3):
        assert f"wrong-{i}-pw" not in log
    assert PASSWORD not in log


def _row(uid: str, arrival: float, p: float | None, present: bool = False) -> StudyRow:
    findings = None if p is None else {"any": {"probability": p, "present": present}}
    return StudyRow(uid, "done" if p is not None else "skipped", None, 1, 1, 1, 1, 1,
                    arrival, arrival, arrival, None, findings)  # fmt: skip


def test_worklist_order_puts_positives_first_by_probability_then_arrival() -> None:
    rows = [
        _row("neg-old", 100, 0.10),
        _row("pos-low", 300, 0.60, True),
        _row("skipped-new", 500, None),
        _row("pos-high-late", 400, 0.95, True),
        _row("pos-high-early", 200, 0.95, True),
        _row("neg-new", 450, 0.20),
    ]
    assert [r.study_uid for r in worklist_order(rows)] == [
        "pos-high-early", "pos-high-late", "pos-low", "skipped-new", "neg-new", "neg-old",
    ]  # fmt: skip
