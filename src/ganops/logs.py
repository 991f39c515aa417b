"""One logging convention for every ganops process: the trainer, the operator, serving and the CLI.

- Loggers are named after their module (``logging.getLogger(__name__)``: ``ganops.trainer.loop``,
  ``ganops.operator.controller``, …), so one level setting reaches a whole component (``ganops.trainer``).
- Something a machine should find again is an *event*: ``event(log, "checkpoint_saved", step=500, uri=...)``.
- `setup` installs one handler on the root logger: JSON lines when the stream is not a terminal (pods, CI, log
  shippers), readable lines on a terminal; ``GANOPS_LOG_FORMAT=json|text`` and ``GANOPS_LOG_LEVEL`` override.
  A JSON line starts with the event's name when it has one: ``{"event": "checkpoint_saved", "step": 500, …,
  "level": "INFO", "logger": "ganops.trainer.loop", "time": "…"}``.

Never pass credentials as fields: nothing here redacts (`ganops.tracking.redact` does, for URIs).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from typing import IO, Any

from ganops.contracts import ENV_LOG_FORMAT, ENV_LOG_LEVEL

__all__ = ["JsonFormatter", "TextFormatter", "event", "event_fields", "event_name", "log_event", "setup"]

_EVENT = "ganops_event"
_FIELDS = "ganops_fields"
_OURS = "_ganops_handler"


def event(logger: logging.Logger, name: str, /, **fields: Any) -> None:
    """Log the event ``name`` with ``fields`` at INFO (JSON-serialisable values; others are shown with ``str``)."""
    log_event(logger, logging.INFO, name, **fields)


def log_event(logger: logging.Logger, level: int, name: str, /, **fields: Any) -> None:
    """`event` at another level (a warning, say)."""
    if logger.isEnabledFor(level):
        message = " ".join([name, *(f"{k}={_text(v)}" for k, v in fields.items())])
        logger.log(level, message, extra={_EVENT: name, _FIELDS: fields})


def event_name(record: logging.LogRecord) -> str | None:
    """The event a record carries (None for a plain message): what tests and log handlers match on."""
    name = getattr(record, _EVENT, None)
    return name if isinstance(name, str) else None


def event_fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, _FIELDS, None)
    return dict(fields) if isinstance(fields, dict) else {}


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return json.dumps(text) if (" " in text or not text) else text


def _time(record: logging.LogRecord) -> str:
    return dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line; an event's name and fields come first."""

    def format(self, record: logging.LogRecord) -> str:
        name = getattr(record, _EVENT, None)
        out: dict[str, Any] = {"event": name, **getattr(record, _FIELDS, {})} if name else {
            "message": record.getMessage()}
        out.update(level=record.levelname, logger=record.name, time=_time(record))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """``2026-12-03T15:21:45.123Z INFO ganops.trainer.loop checkpoint_saved step=500 uri=…``."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_time(record)} {record.levelname} {record.name} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(level: str | int | None = None, *, stream: IO[str] | None = None, fmt: str | None = None) -> None:
    """Route every logger to ``stream`` (stderr) in the convention's format. Idempotent: a second call replaces
    the handler it installed, and leaves handlers others installed alone."""
    stream = stream or sys.stderr
    chosen = (fmt or os.environ.get(ENV_LOG_FORMAT) or "").strip().lower()
    if chosen not in ("json", "text"):
        chosen = "text" if stream.isatty() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    setattr(handler, _OURS, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    wanted = level if level is not None else os.environ.get(ENV_LOG_LEVEL, "INFO")
    root.setLevel(wanted.upper() if isinstance(wanted, str) else wanted)
