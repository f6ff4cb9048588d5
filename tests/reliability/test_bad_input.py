"""Bad input: every kind of the corpus (tests/reliability/bad_input_support.py) ends in a
defined outcome, through the SCP (``dicom-node serve`` as a subprocess, native engine)
and through ``dicom-node classify``.

Defined outcome: a DICOM failure status, or Success and the study ``done``, ``skipped``
or ``failed`` with a reason. After the corpus the node still answers C-ECHO, every
instance it acknowledged with Success is in the spool, and its RSS stays bounded.

``BAD_INPUT_TABLE=path`` writes the outcome of every kind as a markdown table (the one
published in RELIABILITY.md).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from ctfactory import SENTINEL_ID, SENTINEL_NAME
from nodes import ServeProcess
from pipeline.support import make_checkpoint, pipeline_config, study_state
from reliability.bad_input_support import (
    CANNOT_UNDERSTAND,
    DEFINED_STATUSES,
    MISMATCH,
    NOT_SENT,
    SUCCESS,
    TERMINAL,
    Kind,
    build_corpus,
    echo,
    rss_kib,
    send_raw_answer,
    send_storescu,
    status_text,
)

from dicom_node.net.store_answer import error_comment

#: A guard, not a target: the node with torch and a resnet18 loaded sits near 0.6 GiB.
RSS_BOUND_KIB = 3 * 1024 * 1024


@dataclass
class Outcome:
    """What the node and classify did with one kind."""

    statuses: list[int] = field(default_factory=list)
    #: the node's log reason of each failure status, in order
    refusals: list[str] = field(default_factory=list)
    state: str | None = None
    reason: str | None = None
    classify: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Kind]:
    return list(build_corpus(tmp_path_factory.mktemp("corpus"), seed=13))


def _sop_of_storescu(path: Path) -> str:
    import warnings

    import pydicom

    with warnings.catch_warnings():  # a kind's odd values must not fail the bookkeeping
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        return str(ds.SOPInstanceUID)


def _classify(kinds: list[Kind], checkpoint: Path, work: Path) -> dict[Path, str]:
    """Run ``dicom-node classify --json`` once over every kind's files; the outcome text
    of each file: ``findings``, ``skipped: <reason>``, ``failed: <reason>`` or
    ``unreadable: <reason>``."""
    listing = work / "classify_input"
    listing.mkdir()
    links: dict[Path, Path] = {}
    for i, kind in enumerate(kinds):
        for j, src in enumerate(kind.files):
            link = listing / f"{i:03d}" / f"{j:04d}_{src.name}"
            link.parent.mkdir(exist_ok=True)
            link.symlink_to(src)
            links[link] = src
    proc = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "classify", str(listing), "--json",
         "--checkpoint", str(checkpoint), "--no-slabs"],
        capture_output=True, text=True, check=False, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    by_study: dict[str, str] = {}
    for study in report["studies"]:
        skipped = study["skipped"] or ""
        by_study[study["study_uid"]] = (
            "findings" if study["findings"] is not None
            else skipped if skipped.startswith("failed: ")
            else str(_with_series(f"skipped: {skipped}", study["series_choice"]))
        )  # fmt: skip
    out: dict[Path, str] = {}
    for entry in report["unreadable"]:
        out[links[Path(entry["path"])]] = f"unreadable: {entry['reason']}"
    for src in links.values():
        if src not in out:
            uids = _study_uids_of([src])
            if uids and uids[0] in by_study:
                out[src] = by_study[uids[0]]
    return out


def test_bad_input_corpus(corpus: list[Kind], tmp_path: Path) -> None:
    crafted = [k for k in corpus if not k.from_pydicom]
    assert len(crafted) >= 25, len(crafted)
    checkpoint = tmp_path / "random-r18-64.pt"
    make_checkpoint(checkpoint, input_size=64)
    root = tmp_path / "node"
    root.mkdir()
    cfg = pipeline_config(
        root, checkpoint, [], node={"engine": "native"}, study={"quiet_seconds": 1}
    )
    node = ServeProcess(cfg, root / "node.log")
    outcomes = {k.name: Outcome() for k in corpus}
    acked: set[str] = set()
    log = _LogTail(node.log)
    try:
        rss_start = rss_kib(node.proc.pid)[0]
        for kind in corpus:
            log.read()
            got = outcomes[kind.name]
            if kind.use_storescu:
                responses = send_storescu(node.port, kind.files, kind.storescu_args)
                assert len(responses) == len(kind.files), (kind.name, responses)
                got.statuses = [_storescu_status(r) for r in responses]
                acked.update(
                    _sop_of_storescu(p) for p, r in zip(kind.files, responses, strict=False)
                    if r == "Success"
                )  # fmt: skip
            comments = []
            for item in kind.wire:
                status, comment = send_raw_answer(node.port, item, tmp_path)
                got.statuses.append(status)
                if status == SUCCESS:
                    acked.add(item.sop_uid)
                elif status > 0:
                    comments.append(comment)
            got.refusals = [m.group(1) or m.group(2) for m in _REFUSAL.finditer(log.read())]
            # the sender is told the reason the node logged (fitted to 64 characters)
            told = {error_comment(r) for r in got.refusals}
            for comment in comments:
                assert comment in told or any(r in comment for r in got.refusals), (
                    kind.name, comment, got.refusals,
                )  # fmt: skip
            assert node.proc.poll() is None, f"node exited after {kind.name}"
        assert echo(node.port), "no C-ECHO answer after the corpus"

        # every study the node accepted reaches a final state
        db = root / "index.sqlite"
        studies = _accepted_studies(db)
        deadline = time.monotonic() + 600
        while True:
            states = {uid: study_state(db, uid) for uid in studies}
            if all(s is not None and s["state"] in TERMINAL for s in states.values()):
                break
            assert time.monotonic() < deadline, {
                u: s and s["state"]
                for u, s in states.items()
                if not s or s["state"] not in TERMINAL
            }
            time.sleep(0.5)
        rss_end, rss_peak = rss_kib(node.proc.pid)
        assert echo(node.port), "no C-ECHO answer after processing"
        assert node.proc.poll() is None
    finally:
        node.stop()

    for kind in corpus:
        if SUCCESS not in outcomes[kind.name].statuses:
            continue  # a study of other files that share its UIDs is not this kind's outcome
        uids = [kind.study_uid] if kind.study_uid is not None else _study_uids_of(kind.files)
        found = [u for u in uids if u in states]
        if found:
            outcomes[kind.name].state = states[found[0]]["state"]
            outcomes[kind.name].reason = _with_series(
                states[found[0]]["reason"], _series_choice(db, found[0])
            )

    spool = {p.stem for p in (root / "spool").rglob("*.dcm")}
    classified = _classify(corpus, checkpoint, tmp_path)
    for kind in corpus:
        outcomes[kind.name].classify = sorted({classified.get(f, "MISSING") for f in kind.files})

    table = _table(corpus, outcomes, rss_start, rss_end, rss_peak, len(acked))
    if os.environ.get("BAD_INPUT_TABLE"):
        Path(os.environ["BAD_INPUT_TABLE"]).write_text(table, encoding="utf-8")
    print(table)

    problems = []
    for kind in corpus:
        problems += _check(kind, outcomes[kind.name])
    text = node.log.read_text(encoding="utf-8", errors="replace")
    for secret in (SENTINEL_NAME, SENTINEL_ID):  # error paths included: no patient data
        assert secret not in text, f"{secret} reached the node's log"
    lost = acked - spool
    assert not lost, f"{len(lost)} acknowledged instances missing from the spool"
    assert rss_peak < RSS_BOUND_KIB, f"peak RSS {rss_peak} KiB"
    assert not problems, "\n".join(problems)


#: The node's log line for a refused C-STORE: its status and reason.
_REFUSAL = re.compile(
    r'event=store\.(?:rejected|failed) status=0x[0-9A-F]{4} error="([^"]*)"'
    r"|event=store\.failed stage=\S+ error=(\S+)"
)


class _LogTail:
    """The node's log since the last read (the node writes a line per refusal before it
    answers, so after an answer the line is there)."""

    def __init__(self, path: Path) -> None:
        self.path, self.pos = path, 0

    def read(self) -> str:
        with self.path.open("rb") as fh:
            fh.seek(self.pos)
            data = fh.read()
        self.pos += len(data)
        return data.decode("utf-8", "replace")


def _series_choice(db: Path, study_uid: str) -> list[dict[str, Any]]:
    import sqlite3

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = con.execute(
            "SELECT series_choice FROM studies WHERE study_uid = ?", (study_uid,)
        ).fetchone()
    finally:
        con.close()
    if not row or not row[0]:
        return []
    return [dict(item) for item in json.loads(row[0])]


def _with_series(reason: str | None, series: list[dict[str, Any]]) -> str | None:
    """A study's reason with the reasons of its series (what ``dicom-node studies`` and
    the study page show beside it): "no eligible series" alone does not say why."""
    why = list(dict.fromkeys(s["reason"] for s in series if s.get("reason")))
    if reason is None or not why or why == [reason]:
        return reason
    return f"{reason} [series: {'; '.join(why)}]"


def _storescu_status(response: str) -> int:
    if response == "Success":
        return int(SUCCESS)
    if response == "not sent":
        return int(NOT_SENT)
    found = re.search(r"0x([0-9A-Fa-f]{4})", response)
    return int(str(found.group(1)), 16) if found else CANNOT_UNDERSTAND


def _accepted_studies(db: Path) -> list[str]:
    import sqlite3

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return [r[0] for r in con.execute("SELECT study_uid FROM studies")]
    finally:
        con.close()


def _study_uids_of(files: list[Path]) -> list[str]:
    import warnings

    import pydicom

    uids = []
    for f in files:
        try:
            with warnings.catch_warnings():  # values are converted when first read
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
                uids.append(str(ds.StudyInstanceUID))
        except Exception:  # noqa: BLE001 - not a dataset: no study
            continue
    return uids


def _check(kind: Kind, got: Outcome) -> list[str]:
    """The defined outcome of ``kind``; a list of what differs."""
    out = []
    name = kind.name
    if kind.status is not None and any(s != kind.status for s in got.statuses):
        out.append(f"{name}: statuses {[status_text(s) for s in got.statuses]}, "
                   f"want {status_text(kind.status)}")  # fmt: skip
    if kind.status is not None and not got.statuses:
        out.append(f"{name}: nothing was answered")
    failures = [s for s in got.statuses if s in (CANNOT_UNDERSTAND, MISMATCH)]
    if len(got.refusals) != len(failures):
        out.append(f"{name}: {len(failures)} failure statuses, {len(got.refusals)} logged reasons")
    if kind.refusal is not None and not all(re.search(kind.refusal, r) for r in got.refusals):
        out.append(f"{name}: refusal reasons {got.refusals} do not match {kind.refusal!r}")
    if kind.refusal is not None and not got.refusals:
        out.append(f"{name}: no refusal reason logged")
    undefined = [s for s in got.statuses if s not in DEFINED_STATUSES]
    if undefined:
        out.append(f"{name}: undefined statuses {[status_text(s) for s in undefined]}")
    if SUCCESS in got.statuses:
        if got.state not in TERMINAL:
            out.append(f"{name}: stored but study state {got.state}")
        elif got.state != "done" and not got.reason:
            out.append(f"{name}: {got.state} without a reason")
    if kind.state is not None and got.state != kind.state:
        out.append(f"{name}: state {got.state} ({got.reason}), want {kind.state}")
    if kind.reason is not None and not re.search(kind.reason, got.reason or ""):
        out.append(f"{name}: reason {got.reason!r} does not match {kind.reason!r}")
    if "MISSING" in got.classify:
        out.append(f"{name}: a file has no outcome in classify")
    if kind.classify is not None and not all(re.match(kind.classify, c) for c in got.classify):
        out.append(f"{name}: classify {got.classify}, want {kind.classify}")
    return out


def _table(
    corpus: list[Kind], outcomes: dict[str, Outcome], rss_start: int, rss_end: int,
    rss_peak: int, acked: int,
) -> str:  # fmt: skip
    def cell(text: Any) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    crafted = [k for k in corpus if not k.from_pydicom]
    shipped = [k for k in corpus if k.from_pydicom]
    n_items = sum(len(k.files) or len(k.wire) for k in crafted)
    lines = [
        f"Corpus: {len(crafted)} generated kinds ({n_items} files or datasets) and "
        f"{len(shipped)} files shipped with pydicom "
        f"{__import__('pydicom').__version__}; {acked} instances acknowledged with Success, "
        "0 missing from the spool; C-ECHO answered after the corpus.",
        "",
        f"Node RSS: {rss_start // 1024} MiB at start, {rss_end // 1024} MiB after the corpus, "
        f"peak {rss_peak // 1024} MiB.",
        "",
        "| kind | input | C-STORE status | study state: reason | classify |",
        "|---|---|---|---|---|",
    ]
    for kind in corpus:
        got = outcomes[kind.name]
        counts: dict[str, int] = {}
        for s in got.statuses:
            counts[status_text(s)] = counts.get(status_text(s), 0) + 1
        status = ", ".join(f"{t} x{c}" if c > 1 else t for t, c in counts.items()) or "not sent"
        if got.refusals:
            status += f" ({'; '.join(dict.fromkeys(got.refusals))})"
        state = f"{got.state}: {got.reason}" if got.reason else (got.state or "-")
        lines.append(
            f"| {cell(kind.name)} | {cell(kind.what)} | {cell(status)} | {cell(state)} "
            f"| {cell('; '.join(got.classify))} |"
        )
    return "\n".join(lines) + "\n"
