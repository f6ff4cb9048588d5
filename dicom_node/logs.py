"""Logging for the node: one ``key=value`` line per event, pseudonymous study names.

Why key=value: log shippers (journald, Loki, Splunk) index ``k=v`` pairs without a
schema, and a person can still read a line. ``logging.format: json`` writes the same
fields as one JSON object per line instead, for collectors that parse JSON only
(journald forwarded to Elasticsearch or Loki's ``json`` stage): no quoting rules to
guess, numbers stay numbers. The message is an event name
(``store.ok``); fields come from ``extra``. Patient data never enters a log line: a
study is named by :func:`study_key`, a keyed hash, so an admin can follow one study
through the log without the log revealing which patient it was.

pynetdicom logs UIDs and whole identifiers at DEBUG and (by default) request
identifiers; :func:`setup_logging` keeps its logger at INFO and turns that off.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import sys
import time
from typing import Final, Literal, TextIO

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD: Final = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))
) | {"message", "asctime", "taskName"}


def study_key(uid: str, key: str) -> str:
    """A 12-hex-digit keyed hash (HMAC-SHA256) naming a study in logs.

    Keyed, so that someone who knows a study UID but not the site's ``logging.hash_key``
    cannot confirm that the study passed through this node.
    """
    return hmac.new(key.encode(), uid.encode(), hashlib.sha256).hexdigest()[:12]


def _quote(value: object) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def _timestamp(record: logging.LogRecord) -> str:
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{ts}.{int(record.msecs):03d}Z"


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=... logger=... event=... k=v ...``, with the ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            f"ts={_timestamp(record)}",
            f"level={record.levelname}",
            f"logger={record.name}",
            f"event={_quote(record.getMessage())}",
        ]
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_"):
                parts.append(f"{name}={_quote(value)}")
        if record.exc_info and record.exc_info[0] is not None:
            # The exception's type only: messages of third-party errors may quote values
            # read from a dataset (a patient name in a pydicom ValueError, for instance).
            parts.append(f"exc_type={record.exc_info[0].__name__}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``event``, the ``extra``
    fields (numbers, booleans and null as such, anything else as its text) and, after an
    exception, ``exc_type`` only, for the same reason as :class:`KeyValueFormatter`."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_") and name not in out:
                plain = value is None or isinstance(value, bool | int | float | str)
                out[name] = value if plain else str(value)
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
        return json.dumps(out, ensure_ascii=False, allow_nan=False, default=str)


LogFormat = Literal["text", "json"]

#: Loggers whose messages are the node's own event names (values go in ``extra``, and
#: the code that writes them keeps patient data out).
_OWN: Final = frozenset({"dicom_node", "models", "train"})
#: A quoted run of text in a library's message.
_QUOTED: Final = re.compile(r"'[^']*'|\"[^\"]*\"")


class WithholdQuoted(logging.Filter):
    """Replace what a library's message quotes by ``'<withheld>'``.

    Libraries quote the values they complain about: pydicom's validation logs and warns
    ``Invalid value for VR DA: '1888.02.29'`` for a birth date a device wrote in its own
    format, and a warning may quote anything it was given. Messages of the node's own
    loggers pass unchanged; uvicorn's ``color_message`` copy of a message is dropped.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("color_message", None)
        if record.name.split(".", 1)[0] in _OWN:
            return True
        message = record.getMessage()
        withheld = _QUOTED.sub("'<withheld>'", message)
        if withheld != message:
            record.msg, record.args = withheld, None
        return True


def quiet_pynetdicom() -> None:
    """Keep pynetdicom's logger at INFO (its DEBUG carries UIDs) and identifiers out.

    APScheduler is only imported to read the job store of an earlier release
    (:mod:`dicom_node.pipeline.legacy_jobs`); its logger stays at WARNING in case it
    speaks while doing so.
    """
    from pynetdicom import _config

    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    # The "standard" handlers decode and log every PDU at DEBUG: costly per image and
    # UID-bearing; "none" leaves them unbound.
    _config.LOG_HANDLER_LEVEL = "none"
    logging.getLogger("pynetdicom").setLevel(logging.INFO)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def setup_logging(
    level: str = "INFO", stream: TextIO | None = None, fmt: LogFormat = "text"
) -> logging.Handler:
    """Install one handler on the root logger, key=value (``text``) or ``json`` lines;
    returns it (tests remove it).

    Python warnings go through it too (``py.warnings``): one line in the log's format
    instead of raw text on stderr, and what they quote withheld (:class:`WithholdQuoted`).
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    handler.addFilter(WithholdQuoted())
    logging.captureWarnings(True)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    quiet_pynetdicom()
    return handler
