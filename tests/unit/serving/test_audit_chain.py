"""The audit log's hash chain and its writer (issue 13, finding 6): what `ganops audit verify` catches, and a writer
that neither blocks its callers nor loses its chain when the store fails."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ganops.cli import app as cli
from ganops.serving.safety.audit import (
    GENESIS,
    ObjectStoreAuditSink,
    canonical_json,
    read_audit_lines,
    record_hash,
    verify_records,
)


def chain(n: int, name: str = "c1", start: int = 0, prev: str = GENESIS) -> list[dict[str, Any]]:
    records = []
    for seq in range(start, start + n):
        record: dict[str, Any] = {"request_id": f"r{seq}", "blocked": 2, "chain": name, "seq": seq, "prev": prev}
        record["hash"] = record_hash(record)
        prev = record["hash"]
        records.append(record)
    return records


def lines(records: list[dict[str, Any]]) -> list[tuple[str, bytes]]:
    return [(f"log:{i + 1}", canonical_json(r)) for i, r in enumerate(records)]


def test_an_intact_chain_verifies_whatever_its_formatting() -> None:
    records = chain(5)
    assert verify_records(lines(records)).intact
    pretty = [(w, json.dumps(json.loads(b), indent=1).replace("\n", " ").encode()) for w, b in lines(records)]
    report = verify_records(pretty)
    assert report.intact and report.records == 5 and report.chains == {"c1": 5}


def test_a_changed_record_is_named() -> None:
    records = chain(5)
    records[2]["blocked"] = 0
    broken = verify_records(lines(records)).broken
    assert broken is not None and (broken.where, broken.seq) == ("log:3", 2) and "content does not match" in str(broken)


def test_a_changed_record_with_its_hash_recomputed_breaks_the_next_link() -> None:
    records = chain(5)
    records[2]["blocked"] = 0
    records[2]["hash"] = record_hash(records[2])
    broken = verify_records(lines(records)).broken
    assert broken is not None and (broken.where, broken.seq) == ("log:4", 3)
    assert str(broken) == ("log:4: chain c1 seq 3: prev does not match the hash of seq 2 (that record was changed "
                           "or replaced)")


def test_removed_repeated_and_missing_first_records_are_named() -> None:
    records = chain(5)
    gap = verify_records(lines(records[:2] + records[3:])).broken
    assert gap is not None and gap.seq == 3 and "records 2..2 are missing" in gap.problem
    repeated = verify_records(lines(records[:3] + records[2:])).broken
    assert repeated is not None and repeated.seq == 2 and "out of order or repeated" in repeated.problem
    late = verify_records(lines(records[2:])).broken
    assert late is not None and late.seq == 2 and "starts at seq 2" in late.problem
    assert verify_records(lines(records[2:]), partial=True).intact  # pruned on purpose: --partial


def test_interleaved_chains_verify_each_on_its_own() -> None:
    a, b = chain(3, "a"), chain(3, "b")
    report = verify_records(lines([a[0], b[0], b[1], a[1], a[2], b[2]]))
    assert report.intact and report.chains == {"a": 3, "b": 3}
    assert not verify_records(lines([a[0], b[1]])).intact
    assert verify_records([("x:1", b"not json")]).broken is not None
    assert verify_records([("x:1", b'{"request_id": "r"}')]).broken is not None  # unchained records do not pass


def test_the_writer_never_blocks_and_keeps_its_chain_through_a_failing_store(tmp_path: Path) -> None:
    blocker = tmp_path / "audit"
    blocker.write_text("a file where the log's folder should be: every write fails")
    failures: list[tuple[str, int]] = []
    written: list[int] = []
    sink = ObjectStoreAuditSink(blocker.as_uri(), queue_size=2, segment_records=1, max_pending_records=1,
                                flush_interval_s=0.05, on_failure=lambda r, n: failures.append((r, n)),
                                on_written=written.append)
    started = time.monotonic()
    for i in range(4):
        sink.write({"request_id": f"r{i}", "blocked": 1, "blocked_samples": []})
        time.sleep(0.2)  # the writer takes one record into a segment, fails, and holds it for a retry
    assert time.monotonic() - started < 2.0  # writes returned at once
    assert ("write_error", 1) in failures and ("queue_full", 1) in failures  # a full queue drops (and says so)
    with pytest.raises(TimeoutError):
        sink.flush(timeout=0.3)
    blocker.unlink()  # the store is back
    sink.flush(timeout=10)
    sink.close()
    report = verify_records(read_audit_lines(blocker.as_uri()))
    kept = 4 - sum(n for r, n in failures if r == "queue_full")
    assert report.intact and report.records == kept == sum(written), (report, failures)  # dropped ones left no gap


def test_ganops_audit_verify(tmp_path: Path) -> None:
    sink = ObjectStoreAuditSink((tmp_path / "log").as_uri(), flush_interval_s=60)
    for i in range(3):
        sink.write({"request_id": f"r{i}", "blocked": 1, "blocked_samples": [{"index": 0, "pixels": None}]})
    sink.close()
    runner = CliRunner()
    ok = runner.invoke(cli, ["audit", "verify", str(tmp_path / "log")])
    assert ok.exit_code == 0 and ok.output.startswith(f"intact: 3 record(s) in 1 chain(s): {sink.chain} (3)")
    (segment,) = (tmp_path / "log").rglob("*.jsonl")
    text = segment.read_text().splitlines()
    text[1] = text[1].replace('"blocked":1', '"blocked":0')
    segment.write_text("\n".join(text) + "\n")
    broken = runner.invoke(cli, ["audit", "verify", segment.as_uri()])
    assert broken.exit_code == 4 and f"broken: {segment.as_uri()}:2: chain {sink.chain} seq 1" in broken.output
    empty = runner.invoke(cli, ["audit", "verify", str(tmp_path / "nothing")])
    assert empty.exit_code == 3 and "no audit records" in empty.output
    shutil.rmtree(tmp_path / "log")
