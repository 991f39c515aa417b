"""The checkpoint layout and its torch-free readers (`ganops.checkpoints`): what promotion, serving and the operator
read of what the trainer wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ganops import storage
from ganops.checkpoints import (
    CheckpointError,
    LatestRecord,
    RecordUnavailable,
    choose,
    job_root,
    latest_entry,
    latest_uri,
    list_steps,
    manifest_metrics,
    memorization_index_of,
    parse_latest,
    parse_step_dir,
    read_latest_record,
    read_manifest,
    require_manifest,
    resolve,
    step_dir_name,
)


def _step(root: Path, step: int, metric: float | None = None, **extra: Any) -> str:
    folder = root / step_dir_name(step)
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"step": step, "metric": metric, **extra}))
    return folder.as_uri()


def test_names_and_paths() -> None:
    assert step_dir_name(500) == "step-000000500"
    assert parse_step_dir("s3://b/ns/j/step-000000500/") == 500 and parse_step_dir("step-000000007") == 7
    assert parse_step_dir("step-5") is None and parse_step_dir("latest.json") is None
    assert job_root("s3://b/ckpt/", "team-a", "j") == "s3://b/ckpt/team-a/j"
    assert latest_uri("s3://b/ckpt", "team-a", "j") == "s3://b/ckpt/team-a/j/latest.json"


def test_choose_takes_the_best_metric_else_latest_else_newest(tmp_path: Path) -> None:
    root = tmp_path / "job"
    _step(root, 100, 30.0)
    _step(root, 200, 20.0)
    _step(root, 300, 20.0)  # a tie goes to the earlier step
    (root / step_dir_name(400)).mkdir()  # an upload cut short: weights but no manifest
    (root / step_dir_name(400) / "generator.safetensors").write_bytes(b"x")
    assert list_steps(storage.FileStore(), root.as_uri()) == [100, 200, 300, 400]
    best = choose(root.as_uri())
    assert (best.step, best.reason) == (200, "best metric 20 of 3 scored checkpoint(s)")
    assert best.uri == f"{root.as_uri()}/step-000000200"
    raw = (root / "step-000000200" / "manifest.json").read_bytes()
    assert best.manifest_sha256 == __import__("hashlib").sha256(raw).hexdigest()

    unscored = tmp_path / "unscored"
    _step(unscored, 1)
    _step(unscored, 2)
    assert choose(unscored.as_uri()).step == 2
    (unscored / "latest.json").write_text(json.dumps({"step": 1, "uri": f"{unscored.as_uri()}/step-000000001"}))
    assert (choose(unscored.as_uri()).step, choose(unscored.as_uri()).reason) == (1, "latest (no checkpoint has a "
                                                                                   "metric)")
    given = choose(f"{root.as_uri()}/step-000000100")
    assert (given.step, given.reason) == (100, "given")
    with pytest.raises(CheckpointError, match="no checkpoint under"):
        choose((tmp_path / "nothing").as_uri())


def test_resolve_and_require_manifest(tmp_path: Path) -> None:
    root = tmp_path / "job"
    step = _step(root, 5)
    assert resolve(root.as_uri()) == root.as_uri()  # no latest.json: the URI as given
    (root / "latest.json").write_text(json.dumps({"step": 5, "uri": step}))
    assert resolve(root.as_uri()) == step and resolve(step) == step
    assert require_manifest(step)["step"] == 5
    with pytest.raises(CheckpointError, match="not a ganops checkpoint"):
        require_manifest(root.as_uri())
    (root / "step-000000005" / "manifest.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="not a JSON object"):
        read_manifest(storage.FileStore(), step)


def test_manifest_metrics_takes_finite_numbers_from_either_shape() -> None:
    assert manifest_metrics({"metrics": {"fid": 41.5, "kid": "n/a", "modes": 25, "x": float("inf"), "b": True}}) == {
        "fid": 41.5, "modes": 25.0}
    assert manifest_metrics({"metrics": {"metrics": {"recall": 0.7}, "step": 5}}) == {"recall": 0.7}
    assert manifest_metrics({}) == {} and manifest_metrics({"metrics": [1]}) == {}


def test_latest_entry_is_what_parse_latest_reads_back() -> None:
    manifest = {"time": "2026-01-01T00:00:00Z", "cost": {"usd": 1.0, "gpuHours": 0.5}, "metrics": {"fid": 3.0},
                "mlflowRunId": "r", "files": {"a": "b"}}
    entry = latest_entry(9, "s3://b/j/step-000000009", b"{}", manifest, 3.0)
    assert "files" not in entry
    record = parse_latest(json.loads(json.dumps(entry)))
    assert record == LatestRecord(step=9, uri="s3://b/j/step-000000009", time="2026-01-01T00:00:00Z",
                                  manifest_sha256=__import__("hashlib").sha256(b"{}").hexdigest(), metric=3.0,
                                  cost_usd=1.0, cost_gpu_hours=0.5, metrics={"fid": 3.0}, mlflow_run_id="r")


def test_memorization_index_of_follows_the_manifest_or_the_reference_folder(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    step = _step(ckpt / "ns" / "job", 5)
    index = ckpt / "_reference" / "k.memorization.safetensors"
    assert memorization_index_of({}, step) is None
    assert memorization_index_of({"memorizationIndex": index.as_uri()}, step) is None  # named but missing
    index.parent.mkdir(parents=True)
    index.write_bytes(b"x")
    assert memorization_index_of({"memorizationIndex": index.as_uri()}, step) == index.as_uri()
    # recorded under a URI that does not resolve here: the same name under <checkpoint.uri>/_reference/
    moved = {"memorizationIndex": "file://elsewhere/_reference/k.memorization.safetensors"}
    assert memorization_index_of(moved, step) == index.as_uri()


def test_parse_latest_is_tolerant() -> None:
    full = parse_latest({
        "step": 500, "uri": "s3://b/r/step-000000500", "time": "t", "manifestSha256": "ab", "metric": 12.5,
        "cost": {"usd": 1.5, "gpuHours": 0.5}, "metrics": {"fid": 12.5, "bad": "x", "nan": float("nan")},
        "mlflowRunId": "r1", "health": {"events": [{"type": "mode_collapse", "step": 400, "message": "m"}, "nan_loss",
                                                  {"no": "type"}], "rollbacks": [{"step": 1}, {"step": 2}]},
        "unknownFutureField": True,
    })
    assert full is not None
    assert (full.step, full.metric, full.cost_usd, full.cost_gpu_hours) == (500, 12.5, 1.5, 0.5)
    assert full.metrics == {"fid": 12.5} and full.mlflow_run_id == "r1" and full.rollbacks == 2
    assert [e.type for e in full.health_events] == ["mode_collapse", "nan_loss"]
    assert parse_latest({"step": 1, "uri": "s3://b/x", "health": {"rollbacks": 3}}).rollbacks == 3  # type: ignore
    bad: Any
    for bad in (None, [], {"step": "1", "uri": "x"}, {"step": 1}, {"step": True, "uri": "x"}, {"uri": "x"}):
        assert parse_latest(bad) is None
    minimal = parse_latest({"step": 0, "uri": "file:///x", "cost": "free", "metrics": None})
    assert minimal == LatestRecord(step=0, uri="file:///x")


def test_read_latest_record_from_a_store(tmp_path: Path) -> None:
    uri = latest_uri(f"file://{tmp_path}", "team-a", "j")
    assert uri == f"file://{tmp_path}/team-a/j/latest.json"
    store = storage.FileStore()
    assert read_latest_record(store, uri) is None
    store.put_json(uri, {"step": 7, "uri": "file:///x/step-000000007"})
    assert read_latest_record(store, uri) == LatestRecord(step=7, uri="file:///x/step-000000007")
    store.put_bytes(uri, b"{not json")
    assert read_latest_record(store, uri) is None

    class Down(storage.FileStore):
        def get_bytes(self, uri: str) -> bytes:
            raise storage.StorageError("503 SlowDown", uri)

    with pytest.raises(RecordUnavailable):
        read_latest_record(Down(), uri)
