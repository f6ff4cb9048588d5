"""The worklist in a real browser: Debian's chromium (headless), driven by Playwright.

Log in with the form, see a positive study arrive on top of the polled worklist (no
reload), open it, the key image loads, press "Resend results", see the new delivery
attempt and the audit row. Screenshots of the worklist and the study page are saved
under the test's tmp_path (for a person to look at; the assertions do not read it).

Chromium comes from the distribution (``make debs``), never ``playwright install``: no
download at test time, and the browser a hospital's Debian has.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from nodes import Node, storescu, wait_for
from pipeline.support import RecordingPacs, destination, phantom
from playwright.sync_api import sync_playwright

from dicom_node.logs import study_key
from dicom_node.web.auth import hash_password

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "reading room 4"


def test_login_worklist_study_page_and_resend_in_chromium(
    tmp_path: Path, start_node: Callable[..., Node], pacs: RecordingPacs
) -> None:
    web = {
        "users": [{"name": "dr.bianchi", "password_hash": hash_password(PASSWORD)}],
        "session_secret": "x" * 40,
    }
    node = start_node([destination(pacs.port)], web=web)
    other = phantom(tmp_path / "mr", seed=32, n_slices=4, modality="MR")
    positive = phantom(tmp_path / "pos", seed=31, n_slices=10)
    assert storescu(node.port, other.main.files).returncode == 0
    node.wait_state(other.study_uid, "skipped", 60)
    key = study_key(positive.study_uid, "test-key")
    base = f"http://127.0.0.1:{node.service.web_port}"

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1200})
            page.goto(f"{base}/")
            assert page.url.startswith(f"{base}/login")  # no session: the login form
            page.fill("input[name=username]", "dr.bianchi")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/")
            page.wait_for_selector("#worklist tbody tr")
            rows = page.locator("#worklist tbody tr")
            assert rows.count() == 1  # only the skipped study so far
            page.evaluate("window.stillTheSamePage = true")

            # The positive arrives while the page is open: polling shows it, on top.
            assert storescu(node.port, positive.main.files).returncode == 0
            node.wait_state(positive.study_uid, "done", 90)
            wait_for(lambda: node.delivery_states(positive.study_uid) == ["sent"], 60, "sent")
            page.locator("#worklist tbody tr.positive").wait_for(timeout=30_000)
            assert page.evaluate("window.stillTheSamePage") is True  # no full reload
            assert rows.count() == 2
            assert rows.nth(0).get_attribute("data-key") == key  # the positive on top
            assert "positive" in (rows.nth(0).get_attribute("class") or "")
            assert "any" in rows.nth(0).inner_text()
            page.screenshot(path=str(tmp_path / "worklist.png"))

            rows.nth(0).click()
            page.wait_for_url(f"{base}/studies/{key}")
            # Polled from here: the page's CSP (no eval) stops wait_for_function's poller.
            wait_for(lambda: page.eval_on_selector("#key-image",
                                                   "img => img.complete && img.naturalWidth > 0"),
                     30, "the key image loaded")  # fmt: skip
            assert page.eval_on_selector("#key-image", "img => img.naturalWidth") == 1024
            assert "Present: any" in page.inner_text("#findings-words")
            before = node.study(positive.study_uid).deliveries[0].updated

            page.click("text=Resend results")
            wait_for(lambda: (d := node.study(positive.study_uid).deliveries[0]).updated
                     > before and d.state == "sent", 60, "the resend delivered")  # fmt: skip
            page.reload()
            audit = page.inner_text("section:has(h3:text('Audit trail'))")
            assert "dr.bianchi" in audit
            assert "resend" in audit
            deliveries = page.inner_text("section:has(h3:text('Deliveries and notifications'))")
            assert "sent" in deliveries
            page.screenshot(path=str(tmp_path / "study-page.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "study-page.png").stat().st_size > 0
