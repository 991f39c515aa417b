"""SafetyPipeline: order, short-circuit, fail-closed, replace mode, audit records in a file:// store, metrics."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ganops.serving.safety import (
    ListAuditSink,
    ObjectStoreAuditSink,
    RequestContext,
    SafetyPipeline,
    Sample,
    Verdict,
    make_samples,
)
from ganops.serving.safety.audit import audit_object_uri, safe_request_id
from ganops.serving.safety.pipeline import sample_sha256

CTX = RequestContext("req-1", model_name="digits", model_version="3", label=None, api_key_id="key-7")


class Recording:
    """Blocks the sample indices given; records what it was shown."""

    def __init__(self, name: str, block: set[int] | None = None) -> None:
        self.name = name
        self.block = block or set()
        self.seen: list[list[int]] = []

    def check(self, samples: list[Sample], context: RequestContext) -> list[Verdict]:
        self.seen.append([s.index for s in samples])
        return [
            Verdict(self.name, "block", f"{self.name} says no", 0.9)
            if s.index in self.block
            else Verdict(self.name, "pass")
            for s in samples
        ]


class Raising:
    name = "broken"

    def __init__(self) -> None:
        self.calls = 0

    def check(self, samples: list[Sample], context: RequestContext) -> list[Verdict]:
        self.calls += 1
        raise ZeroDivisionError("secret internals /etc/passwd")


class WrongCount:
    name = "short"

    def check(self, samples: list[Sample], context: RequestContext) -> list[Verdict]:
        return [Verdict(self.name, "pass")][: max(0, len(samples) - 1)]


def images(n: int = 4, size: int = 8, channels: int = 3) -> list[Sample]:
    rng = np.random.default_rng(n)
    return make_samples(rng.uniform(-1, 1, (n, channels, size, size)).astype(np.float32))


def test_filters_run_in_order_and_blocked_samples_skip_later_filters() -> None:
    first, second, third = Recording("first", {1}), Recording("second", {2}), Recording("third")
    decisions = SafetyPipeline([first, second, third]).run(images(4), CTX)

    assert first.seen == [[0, 1, 2, 3]]
    assert second.seen == [[0, 2, 3]]
    assert third.seen == [[0, 3]]
    assert [d.allowed for d in decisions] == [True, False, False, True]
    assert decisions[1].blocked_by == "first" and decisions[1].reason == "first says no"
    assert decisions[2].blocked_by == "second"
    assert [v.filter for v in decisions[0].verdicts] == ["first", "second", "third"]
    assert [v.filter for v in decisions[2].verdicts] == ["first", "second"]
    assert decisions[0].output is not None and decisions[1].output is None  # withhold mode


def test_no_filter_runs_once_everything_is_blocked() -> None:
    first, second = Recording("first", {0, 1}), Recording("second")
    SafetyPipeline([first, second]).run(images(2), CTX)
    assert second.seen == []


def test_raising_filter_blocks_all_it_was_checking_fail_closed(caplog: pytest.LogCaptureFixture) -> None:
    first, broken, after = Recording("first", {0}), Raising(), Recording("after")
    with caplog.at_level(logging.ERROR, logger="ganops.serving.safety.pipeline"):
        decisions = SafetyPipeline([first, broken, after]).run(images(3), CTX)

    assert [d.allowed for d in decisions] == [False, False, False]
    assert decisions[0].blocked_by == "first"  # blocked before: never sent to the broken filter
    for d in decisions[1:]:
        assert d.blocked_by == "broken"
        assert d.verdicts[-1].outcome == "error"
        assert d.reason == "filter broken failed: ZeroDivisionError"  # no message, no traceback for users
        assert "passwd" not in d.reason
    assert after.seen == []
    assert "Traceback" in caplog.text and "ZeroDivisionError" in caplog.text  # the log has the details


def test_wrong_number_of_verdicts_is_a_filter_failure() -> None:
    decisions = SafetyPipeline([WrongCount()]).run(images(3), CTX)
    assert all(not d.allowed for d in decisions)
    assert decisions[0].reason == "filter short failed: FilterContractError"


def test_error_verdict_returned_by_a_filter_blocks() -> None:
    class SaysError:
        name = "flaky"

        def check(self, samples: list[Sample], context: RequestContext) -> list[Verdict]:
            return [Verdict(self.name, "error", "model unavailable") for _ in samples]

    decisions = SafetyPipeline([SaysError()]).run(images(2), CTX)
    assert [d.allowed for d in decisions] == [False, False]


def test_replace_mode_gives_neutral_grey_of_the_same_shape() -> None:
    for channels in (1, 3, 4):
        samples = images(3, size=16, channels=channels)
        decisions = SafetyPipeline([Recording("f", {1})], mode="replace").run(samples, CTX)
        blocked = decisions[1]
        assert not blocked.allowed and blocked.replaced
        assert blocked.output is not None and blocked.output.shape == (16, 16, channels)
        assert blocked.output.dtype == np.uint8
        assert (blocked.output[..., :3] == 128).all()
        if channels == 4:
            assert (blocked.output[..., 3] == 255).all()
        assert decisions[0].output is samples[0].pixels and not decisions[0].replaced


def test_replace_mode_withholds_points() -> None:
    samples = make_samples(np.array([[0.0, 1.0], [2.0, 3.0]]))
    decisions = SafetyPipeline([Recording("f", {0})], mode="replace").run(samples, CTX)
    assert decisions[0].output is None and not decisions[0].replaced
    assert decisions[1].allowed


def test_mode_and_names_are_validated() -> None:
    with pytest.raises(ValueError):
        SafetyPipeline([], mode="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SafetyPipeline([Recording("a"), Recording("a")])


def test_metrics_callback_counts_every_verdict() -> None:
    counts: Counter[tuple[str, str]] = Counter()
    pipeline = SafetyPipeline(
        [Recording("first", {0}), Raising(), Recording("never")], on_decision=lambda f, o: counts.update([(f, o)])
    )
    pipeline.run(images(4), CTX)
    assert counts == Counter({("first", "pass"): 3, ("first", "block"): 1, ("broken", "error"): 3})


def test_a_failing_callback_or_sink_does_not_break_the_request() -> None:
    def bad_callback(filter_name: str, outcome: str) -> None:
        raise RuntimeError("prometheus down")

    class BadSink:
        def write(self, record: dict[str, object]) -> None:
            raise OSError("disk full")

        def flush(self) -> None:
            pass

    pipeline = SafetyPipeline([Recording("f", {0})], on_decision=bad_callback, audit_sink=BadSink())
    decisions = pipeline.run(images(2), CTX)
    assert [d.allowed for d in decisions] == [False, True]


def test_audit_records_blocked_samples_only() -> None:
    sink = ListAuditSink()
    samples = images(3)
    SafetyPipeline([Recording("first", {2})], audit_sink=sink).run(samples, CTX)
    assert sink.flushes == 1
    (record,) = sink.records
    assert record["request_id"] == "req-1" and record["model"] == "digits" and record["version"] == "3"
    assert record["filter"] == "first" and record["reason"] == "first says no" and record["score"] == 0.9
    assert record["sample_index"] == 2 and record["sample_sha256"] == sample_sha256(samples[2])
    assert record["api_key_id"] == "key-7"
    # Nothing blocked: no flush at all.
    SafetyPipeline([Recording("first")], audit_sink=sink).run(images(2), CTX)
    assert sink.flushes == 1


def test_object_store_audit_sink_writes_json_lines_to_a_file_store(tmp_path: Path) -> None:
    audit_uri = f"file://{tmp_path}/audit"
    sink = ObjectStoreAuditSink(audit_uri)
    samples = images(4)
    pipeline = SafetyPipeline([Recording("degenerate", {0}), Recording("nsfw", {3})], audit_sink=sink)
    pipeline.run(samples, CTX)

    files = list((tmp_path / "audit").rglob("*.jsonl"))
    assert len(files) == 1
    today = dt.datetime.now(dt.UTC)
    assert files[0].relative_to(tmp_path / "audit").as_posix() == f"{today:%Y}/{today:%m}/{today:%d}/req-1.jsonl"
    lines = [json.loads(line) for line in files[0].read_text().splitlines()]
    assert [(r["sample_index"], r["filter"]) for r in lines] == [(0, "degenerate"), (3, "nsfw")]
    for record in lines:
        assert {"time", "model", "version", "filter", "reason", "score", "sample_sha256"} <= set(record)
        assert "pixels" not in record and "content" not in record  # no image data by default
        dt.datetime.fromisoformat(record["time"])
    assert lines[0]["sample_sha256"] == sample_sha256(samples[0])

    # A second batch for the same request is appended, not overwritten.
    pipeline.run(images(2), CTX)
    assert len(files[0].read_text().splitlines()) == 3


def test_object_store_audit_sink_can_include_pixels(tmp_path: Path) -> None:
    sink = ObjectStoreAuditSink(f"file://{tmp_path}", include_pixels=True)
    samples = images(2, size=8, channels=3)
    SafetyPipeline([Recording("f", {1})], audit_sink=sink).run(samples, RequestContext("weird/../id with spaces"))
    (path,) = tmp_path.rglob("*.jsonl")
    assert path.name == "weird_.._id_with_spaces.jsonl"
    record = json.loads(path.read_text())
    png = base64.b64decode(record["content"]["png_base64"])
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), samples[1].pixels)


def test_audit_paths_are_safe() -> None:
    assert safe_request_id("../../etc/passwd") == "_.._etc_passwd"
    assert safe_request_id("") == "unknown"
    when = dt.datetime(2026, 3, 4, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-2)))
    assert audit_object_uri("s3://b/audit/", "r1", when) == "s3://b/audit/2026/03/05/r1.jsonl"  # UTC date
