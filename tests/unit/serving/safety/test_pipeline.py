"""SafetyPipeline: order, short-circuit, fail-closed, replace mode, audit records (one per request, hash-chained
segments in a file:// store), metrics."""

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
from ganops.serving.safety.audit import read_audit_lines, safe_request_id, segment_uri, verify_records
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


def test_audit_records_one_record_per_request_with_blocked_samples() -> None:
    sink = ListAuditSink()
    samples = images(3)
    SafetyPipeline([Recording("first", {2}), Recording("second", {0})], audit_sink=sink).run(samples, CTX)
    (record,) = sink.records
    assert record["request_id"] == "req-1" and record["model"] == "digits" and record["version"] == "3"
    assert record["api_key_id"] == "key-7" and record["samples"] == 3 and record["blocked"] == 2
    # Every verdict counted per filter: "first" saw 3 samples, "second" the 2 that "first" let through.
    assert record["verdicts"] == {"first": {"pass": 2, "block": 1}, "second": {"pass": 1, "block": 1}}
    by_index = {b["index"]: b for b in record["blocked_samples"]}
    assert sorted(by_index) == [0, 2]
    assert by_index[2]["filter"] == "first" and by_index[2]["reason"] == "first says no" and by_index[2]["score"] == 0.9
    assert by_index[2]["sha256"] == sample_sha256(samples[2]) and by_index[0]["filter"] == "second"
    # Nothing blocked: no record at all.
    SafetyPipeline([Recording("first")], audit_sink=sink).run(images(2), CTX)
    assert len(sink.records) == 1


def test_object_store_audit_sink_writes_chained_segments_off_the_callers_thread(tmp_path: Path) -> None:
    audit_uri = f"file://{tmp_path}/audit"
    sink = ObjectStoreAuditSink(audit_uri, flush_interval_s=60)
    samples = images(4)
    pipeline = SafetyPipeline([Recording("degenerate", {0}), Recording("nsfw", {3})], audit_sink=sink)
    pipeline.run(samples, CTX)
    pipeline.run(images(2), RequestContext("req-2"))
    assert not list((tmp_path / "audit").rglob("*.jsonl"))  # queued, not written on the request's thread
    sink.flush()
    (path,) = (tmp_path / "audit").rglob("*.jsonl")
    today = dt.datetime.now(dt.UTC)
    expected = f"{today:%Y}/{today:%m}/{today:%d}/{sink.chain}-0000000000.jsonl"
    assert path.relative_to(tmp_path / "audit").as_posix() == expected
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["request_id"] for r in lines] == ["req-1", "req-2"] and [r["seq"] for r in lines] == [0, 1]
    assert lines[1]["prev"] == lines[0]["hash"] and lines[0]["prev"] == "0" * 64
    first = lines[0]
    assert [(b["index"], b["filter"]) for b in first["blocked_samples"]] == [(0, "degenerate"), (3, "nsfw")]
    assert all("pixels" not in b and "content" not in b for b in first["blocked_samples"])  # no image data
    dt.datetime.fromisoformat(first["time"])
    assert first["blocked_samples"][0]["sha256"] == sample_sha256(samples[0])
    # A later flush is a new object: nothing is read back or rewritten.
    pipeline.run(images(1), RequestContext("req-3"))
    sink.flush()
    paths = sorted((tmp_path / "audit").rglob("*.jsonl"))
    assert len(paths) == 2 and paths[0].read_text().count("\n") == 2
    report = verify_records(read_audit_lines(audit_uri))
    assert report.intact and report.records == 3 and report.chains == {sink.chain: 3}
    sink.close()


def test_object_store_audit_sink_can_include_pixels(tmp_path: Path) -> None:
    sink = ObjectStoreAuditSink(f"file://{tmp_path}", include_pixels=True)
    samples = images(2, size=8, channels=3)
    SafetyPipeline([Recording("f", {1})], audit_sink=sink).run(samples, RequestContext("weird/../id with spaces"))
    sink.flush()
    (path,) = tmp_path.rglob("*.jsonl")
    record = json.loads(path.read_text())
    assert record["request_id"] == "weird/../id with spaces"
    png = base64.b64decode(record["blocked_samples"][0]["content"]["png_base64"])
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), samples[1].pixels)
    sink.close()


def test_audit_paths_are_safe() -> None:
    assert safe_request_id("../../etc/passwd") == "_.._etc_passwd"
    assert safe_request_id("") == "unknown"
    when = dt.datetime(2026, 3, 4, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-2)))
    assert segment_uri("s3://b/audit/", "c/../1", 7, when) == "s3://b/audit/2026/03/05/c_.._1-0000000007.jsonl"  # UTC


