"""Logging for ``im-run``: ``--log-level`` and ``--log-format text|json``.

JSON lines carry stable field names (docs/operations.md, "Logs"): ``ts`` (ISO 8601,
UTC), ``level``, ``logger``, ``msg``, plus the fields a log call passes in
``extra={"im": {...}}`` (``event``, ``user``, ``code``, ...) and ``exc`` with a
traceback. The text format shows the same fields after the message as
``key=value``.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import orjson

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("text", "json")


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of a record (``extra={"im": {...}}``)."""
    found = getattr(record, "im", None)
    return found if isinstance(found, dict) else {}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        line: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in fields(record).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        extra = fields(record)
        if extra:
            text += " " + " ".join(f"{k}={_text(v)}" for k, v in extra.items())
        return text


def _text(value: Any) -> str:
    text = str(value)
    return repr(text) if not text or any(c.isspace() or c in "\"'=" for c in text) else text


def check(level: str, fmt: str) -> tuple[str, str]:
    """Normalised (level, format); ``ValueError`` naming the choices otherwise."""
    level, fmt = level.upper(), fmt.lower()
    if level not in LEVELS:
        raise ValueError(f"--log-level: unknown level {level!r} (one of {', '.join(LEVELS)})")
    if fmt not in FORMATS:
        raise ValueError(f"--log-format: unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    return level, fmt


def setup(level: str, fmt: str) -> None:
    """Log to stderr at ``level`` in ``fmt`` (checked with ``check``)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
