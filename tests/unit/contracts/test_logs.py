"""The one logging convention: events as JSON lines off a terminal, readable lines on one, one handler."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from ganops import logs


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_events_are_json_lines_that_start_with_the_event(monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("GANOPS_LOG_FORMAT", raising=False)
    stream = io.StringIO()
    logs.setup("INFO", stream=stream)
    log = logging.getLogger("ganops.trainer.loop")
    logs.event(log, "checkpoint_saved", step=500, uri="s3://b/k", ratio=0.5)
    log.warning("plain %s", "message")
    first, second = stream.getvalue().splitlines()
    assert first.startswith('{"event": "checkpoint_saved"')
    record = json.loads(first)
    assert record["step"] == 500 and record["uri"] == "s3://b/k" and record["ratio"] == 0.5
    assert record["level"] == "INFO" and record["logger"] == "ganops.trainer.loop"
    assert record["time"].endswith("Z")
    assert [logs.event_name(r) for r in caplog.records] == ["checkpoint_saved", None]
    assert logs.event_fields(caplog.records[0]) == {"step": 500, "uri": "s3://b/k", "ratio": 0.5}
    plain = json.loads(second)
    assert plain["message"] == "plain message" and plain["level"] == "WARNING" and "event" not in plain


def test_a_terminal_gets_readable_lines_and_the_environment_can_choose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GANOPS_LOG_FORMAT", raising=False)
    terminal = Terminal()
    logs.setup("INFO", stream=terminal)
    logs.event(logging.getLogger("ganops.operator.controller"), "reconciled", job="default/a b", attempt=2)
    line = terminal.getvalue().strip()
    assert " INFO ganops.operator.controller reconciled " in line
    assert line.endswith('job="default/a b" attempt=2')
    monkeypatch.setenv("GANOPS_LOG_FORMAT", "json")
    terminal = Terminal()
    logs.setup("INFO", stream=terminal)
    logs.event(logging.getLogger("x"), "e", n=1)
    assert json.loads(terminal.getvalue())["event"] == "e"


def test_setup_twice_keeps_one_handler_and_the_level_filters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GANOPS_LOG_LEVEL", "warning")
    foreign = logging.NullHandler()
    logging.getLogger().addHandler(foreign)
    stream = io.StringIO()
    logs.setup(stream=io.StringIO())
    logs.setup(stream=stream, fmt="json")
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_ganops_handler", False)]
    assert len(ours) == 1 and foreign in logging.getLogger().handlers
    log = logging.getLogger("ganops.test")
    logs.event(log, "hidden")
    logs.log_event(log, logging.WARNING, "shown", n=1)
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["shown"]


def test_exceptions_are_kept_in_the_record() -> None:
    stream = io.StringIO()
    logs.setup("INFO", stream=stream, fmt="json")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("ganops.test").exception("failed")
    record = json.loads(stream.getvalue())
    assert record["message"] == "failed" and "ValueError: boom" in record["exception"]
