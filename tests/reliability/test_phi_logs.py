"""No patient data in any log line of a full run, error paths included.

Sentinel patient name (both components), ID, accession number and birth date are
planted in every phantom; one ``dicom-node serve`` run (a subprocess, as at a site) then
goes through the paths where a value read from a header could slip into a message:

* phase 1, ``logging.format: text``: a good study, an instance whose pixel data is
  shorter than Rows x Columns say (the study fails in the worker), a truncated instance
  and non-DICOM bytes sent as a dataset (refused or failed), the PACS down (transient
  delivery failures, retried), the webhook answering 503 and the HL7 receiver AE
  (transient notification failures); then ``kill -9``;
* phase 2, the same node restarted with ``logging.format: json``: the PACS back but
  refusing our AE (permanent failure), the webhook answering 400 and the HL7 receiver AR
  (permanent), another truncated instance, and worklist/API requests whose query strings
  carry the sentinels (uvicorn's access log is off: nothing may log them);
* then ``classify`` on the bad files (its stderr is a log) and ``studies --json``.

The rule for admin tools' stdout: ``studies`` prints study UIDs, states and reasons
(what an admin needs to find a study in the PACS) and never patient data: the index
holds none. The worklist (behind a login) is the one place that shows names and IDs,
read from the spool when a page is served.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from nodes import PEER_ENV, ServeProcess, raw_store, storescu, wait_for
from notify.receivers import SECRET, HttpReceiver, MllpReceiver
from peers import free_port
from pipeline.support import destination, make_checkpoint, pipeline_config, start_pacs
from pipeline.support import study_state as read_state
from pydicom.misc import warn_and_log

from dicom_node.logs import LogFormat, setup_logging
from dicom_node.web.auth import token_digest
from train.data.phantoms import PhantomSpec, WrittenStudy, write_study

FAMILY = "PHIFAMILYSENTINEL"
GIVEN = "PHIGIVENSENTINEL"
PATIENT_ID = "PHIID424242"
ACCESSION = "ACC-PHI-777"
#: 29 February 1888: a date no timestamp, duration or counter of a run in this century
#: contains (DICOM DA, and ISO as a formatter might print it).
BIRTH_DATE = "18880229"
SENTINELS = (FAMILY, GIVEN, PATIENT_ID, ACCESSION, BIRTH_DATE, "1888-02-29")
TOKEN = "phi-test-token-0123456789abcdef0123456789"


def planted(out: Path, seed: int, n_slices: int = 10) -> WrittenStudy:
    """A phantom study carrying every sentinel, as a scanner writes them."""
    spec = PhantomSpec(
        seed=seed, n_slices=n_slices, size=64, patient_name=f"{FAMILY}^{GIVEN}",
        patient_id=PATIENT_ID,
    )  # fmt: skip
    study = write_study(out, spec, signed=False)
    for path in study.main.files:
        ds = pydicom.dcmread(path)
        ds.AccessionNumber = ACCESSION
        ds.PatientBirthDate = BIRTH_DATE
        ds.save_as(path, enforce_file_format=True)
    return study


def odd_values(study: WrittenStudy) -> list[Path]:
    """The study's birth date written ISO-style (``1888-02-29``), as some old devices
    do: not a valid DA, so pydicom's validation quotes it in a warning when it is read."""
    settings = pydicom.config.settings
    old = (settings.reading_validation_mode, settings.writing_validation_mode)
    settings.reading_validation_mode = settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        for path in study.main.files:
            ds = pydicom.dcmread(path)
            ds.PatientBirthDate = "1888-02-29"
            ds.save_as(path, enforce_file_format=True)
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = old
    return list(study.main.files)


def short_pixels(study: WrittenStudy) -> list[Path]:
    """The study's files with Rows doubled: pixel data half what the header says."""
    for path in study.main.files:
        ds = pydicom.dcmread(path)
        ds.Rows = int(ds.Rows) * 2
        ds.save_as(path, enforce_file_format=True)
    return list(study.main.files)


def truncated(src: Path, dst: Path) -> Path:
    """``src`` cut in the middle of its pixel data (the header, PHI included, intact)."""
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) - 3001])
    return dst


def not_dicom(src: Path, dst: Path) -> Path:
    """A Part 10 file meta of ``src`` followed by bytes that are no dataset, then the
    sentinels as plain text (a hostile or broken sender)."""
    ds = pydicom.dcmread(src, stop_before_pixels=True)
    meta = pydicom.Dataset()
    meta.file_meta = ds.file_meta
    meta.save_as(dst, enforce_file_format=True)
    junk = b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + " ".join(SENTINELS).encode() + bytes(64)
    dst.write_bytes(dst.read_bytes() + junk)
    return dst


def leaks(text: str) -> list[str]:
    """Each log line holding a sentinel, the sentinel masked (to find its source)."""
    found = []
    for line in text.splitlines():
        hits = [s for s in SENTINELS if s in line]
        if hits:
            for s in hits:
                line = line.replace(s, f"<{s[:3]}...>")
            found.append(line)
    return found


def set_format(cfg: Path, fmt: str) -> None:
    data = yaml.safe_load(cfg.read_text(encoding="utf-8"))
    data["logging"]["format"] = fmt
    cfg.write_text(yaml.safe_dump(data), encoding="utf-8")


def get(url: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def web_port(log_text: str) -> int:
    for line in reversed(log_text.splitlines()):
        if line.startswith("{") and '"web.listening"' in line:
            return int(json.loads(line)["port"])
    raise AssertionError("no web.listening line in the JSON log")


@pytest.mark.slow
def test_no_patient_data_in_any_log_line(tmp_path: Path) -> None:
    make_checkpoint(tmp_path / "model.pt", input_size=64)
    good = planted(tmp_path / "good", seed=41)
    bad_pixels_study = planted(tmp_path / "short", seed=42)
    bad_pixels = short_pixels(bad_pixels_study)
    # Studies of 9 good slices and a 10th cut short: stored, then failed by the worker.
    cut_study, later_study = planted(tmp_path / "cut", seed=43), planted(tmp_path / "l", seed=44)
    cut = truncated(cut_study.main.files[-1], tmp_path / "cut.dcm")
    later_cut = truncated(later_study.main.files[-1], tmp_path / "cut2.dcm")
    odd_study = planted(tmp_path / "odd", seed=45)
    odd = odd_values(odd_study)
    junk = not_dicom(good.main.files[4], tmp_path / "junk.dcm")

    pacs_port = free_port()  # nothing listens there in phase 1
    hook = HttpReceiver.start()
    hl7 = MllpReceiver.start()
    retry = {"max_attempts": 40, "retry_base_s": 0.3, "retry_cap_s": 1.0}
    hook.script = [503] * 100
    hl7.script = ["AE"] * 100
    root = tmp_path / "site"
    root.mkdir()
    cfg = pipeline_config(
        root,
        tmp_path / "model.pt",
        [destination(pacs_port, max_attempts=40)],
        notify={
            "webhooks": [{"name": "chat", "url": hook.url, "secret": SECRET, **retry}],
            "hl7": [{"name": "ris", "host": "127.0.0.1", "port": hl7.port, **retry}],
        },
        web={"api_tokens": [{"name": "phi-test", "token_sha256": token_digest(TOKEN)}]},
    )
    index_db = root / "index.sqlite"
    log = tmp_path / "serve.log"

    def state(study: WrittenStudy) -> dict[str, Any]:
        s = read_state(index_db, study.study_uid)
        return s or {"state": None, "deliveries": {}}

    def delivery(name: str) -> dict[str, Any]:
        return dict(state(good)["deliveries"].get(name, {"state": None, "attempts": 0}))

    pacs = None
    try:
        # -- phase 1: text log, transient failures, bad input, then kill -9 -------------
        node = ServeProcess(cfg, log)
        try:
            assert storescu(node.port, good.main.files).returncode == 0
            storescu(node.port, bad_pixels)  # stored: the worker finds the pixels short
            assert storescu(node.port, cut_study.main.files[:-1]).returncode == 0
            raw_store(node.port, cut)
            raw_store(node.port, junk)
            wait_for(
                lambda: all(delivery(n)["attempts"] >= 2 for n in ("pacs", "webhook:chat",
                                                                  "hl7:ris")),
                120, "transient failures of the PACS, the webhook and HL7",
            )  # fmt: skip
            for bad in (bad_pixels_study, cut_study):
                wait_for(lambda b=bad: state(b)["state"] == "failed", 60, "a bad study failed")
        finally:
            node.kill()

        # -- phase 2: JSON log, permanent failures, more bad input, web requests ---------
        set_format(cfg, "json")
        pacs = start_pacs(pacs_port, require_calling_aet=["NOTTHENODE"])
        hook.script = [400]
        hl7.script = ["AR"]
        node = ServeProcess(cfg, log)
        try:
            assert storescu(node.port, later_study.main.files[:-1]).returncode == 0
            assert storescu(node.port, odd).returncode == 0
            raw_store(node.port, later_cut)
            wait_for(
                lambda: all(delivery(n)["state"] == "failed" for n in ("pacs", "webhook:chat",
                                                                      "hl7:ris")),
                120, "permanent failures of the PACS, the webhook and HL7",
            )  # fmt: skip
            wait_for(lambda: state(later_study)["state"] == "failed", 60, "a bad study failed")
            wait_for(lambda: state(odd_study)["state"] in ("done", "failed"), 60, "odd study")
            base = f"http://127.0.0.1:{web_port(log.read_text(encoding='utf-8'))}"
            query = f"?name={FAMILY}%5E{GIVEN}&id={PATIENT_ID}&acc={ACCESSION}&dob={BIRTH_DATE}"
            assert get(f"{base}/api/studies{query}") == 401
            assert get(f"{base}/api/studies{query}", TOKEN) == 200
            assert get(f"{base}/api/studies/{PATIENT_ID}{query}", TOKEN) == 404
            assert get(f"{base}/{query}") in (200, 303, 307, 401)
        finally:
            assert node.stop() == 0
    finally:
        if pacs is not None:
            pacs.stop()
        hook.stop()
        hl7.stop()

    # -- the admin tools --------------------------------------------------------------
    cli = [sys.executable, "-m", "dicom_node.cli"]
    # classify over a folder holding both failing studies and the non-DICOM file
    offline = tmp_path / "offline"
    shutil.copytree(bad_pixels_study.main.files[0].parent, offline / "short")
    shutil.copytree(cut_study.main.files[0].parent, offline / "cut")
    shutil.copyfile(cut, offline / "cut" / cut_study.main.files[-1].name)
    shutil.copyfile(junk, offline / "junk.dcm")
    shutil.copytree(odd_study.main.files[0].parent, offline / "odd")
    classified = subprocess.run(
        [*cli, "classify", str(offline), "--json", "--checkpoint", str(tmp_path / "model.pt")],
        capture_output=True, text=True, env=PEER_ENV, timeout=300, check=False,
    )  # fmt: skip
    listed = subprocess.run(
        [*cli, "studies", "--config", str(cfg), "--json"],
        capture_output=True, text=True, env=PEER_ENV, timeout=120, check=False,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    rows = {r["study_uid"]: r for r in json.loads(listed.stdout)}

    # -- what happened (the check below is not vacuous) --------------------------------
    text = log.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert any(line.startswith("ts=") for line in lines)  # phase 1: key=value
    json_lines = [json.loads(line) for line in lines if line.startswith("{")]
    assert json_lines  # phase 2: JSON objects
    assert rows[good.study_uid]["state"] == "done"
    for bad in (bad_pixels_study, cut_study, later_study):
        assert rows[bad.study_uid]["state"] == "failed"
    assert {d["state"] for d in rows[good.study_uid]["deliveries"].values()} == {"failed"}
    assert "state=pending" in text
    assert "event=delivery.attempt" in text
    assert any(j["event"] == "delivery.attempt" and j["state"] == "failed" for j in json_lines)
    assert "event=store.failed" in text or "event=store.rejected" in text
    assert "event=study.finished" in text
    assert classified.returncode == 0, classified.stderr
    outcomes = sorted(str(r["skipped"]) for r in json.loads(classified.stdout)["studies"])
    assert [o.startswith("failed: slice") for o in outcomes] == [False, True, True], outcomes
    assert "classify.failed" in classified.stderr

    # -- the check --------------------------------------------------------------------
    assert leaks(text) == [], "patient data in the node's log"
    assert leaks(classified.stderr) == [], "in classify's log"
    assert leaks(classified.stdout) == [], "in classify's output"
    assert leaks(listed.stdout + listed.stderr) == [], "in studies --json"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_values_quoted_by_libraries_are_withheld(fmt: LogFormat) -> None:
    """pydicom's validation quotes the value it rejects, in its log and in a warning
    (``warn_and_log``): a birth date a device wrote in its own format would reach the
    log whole. The node's handler withholds what library messages quote, warnings
    included; its own events pass unchanged."""
    buf = io.StringIO()
    handler = setup_logging("INFO", stream=buf, fmt=fmt)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            # Route warnings to logging again inside this block (pytest displays them
            # its own way, and an earlier setup_logging left capture on: reset first).
            logging.captureWarnings(False)
            logging.captureWarnings(True)
            warn_and_log(f"Invalid value for VR DA: '{BIRTH_DATE}'.")
            warn_and_log(f'Invalid value for VR PN: "{FAMILY}^O\'{GIVEN}".')
        logging.getLogger("dicom_node.test").info("study.done", extra={"kept": "'quoted'"})
    finally:
        logging.getLogger().removeHandler(handler)
        logging.captureWarnings(False)
    text = buf.getvalue()
    lines = text.splitlines()
    library = [line for line in lines if "pydicom" in line or "py.warnings" in line]
    assert len(library) == 4  # two log records, two warnings
    assert all("<withheld>" in line for line in library)
    if fmt == "json":
        assert all(json.loads(line) for line in lines)  # warnings in the log's format too
    assert "'quoted'" in text
    assert leaks(text) == []
