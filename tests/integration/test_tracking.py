"""ganops.tracking against a real ``mlflow server`` (sqlite backend, proxied artifacts) on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import math
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from mlflow import MlflowClient

from ganops import tracking
from ganops.api.spec import spec_hash
from ganops.contracts import TAG_CHECKPOINT_URI as CHECKPOINT_URI_TAG
from ganops.contracts import TAG_JOB as JOB_TAG
from ganops.tracking import (
    BufferLimits,
    Tracker,
    TrackingError,
    TrackingUnavailable,
    flatten_spec,
    lineage_tags,
)
from tests.resilience.faults import FaultPlan, FaultProxy
from tests.support.jobs import as_job, grid_job

if TYPE_CHECKING:
    from tests.support.mlflow_server import MlflowServer

pytest_plugins = ["tests.support.mlflow_server"]

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8

# Event-based waits: each waits for something to happen and fails only if it has not after GUARD_S, a bound far
# above the time it takes (milliseconds) and far below the time it would take if the behaviour broke (NEVER_S).
GUARD_S = 60.0
NEVER_S = 3600.0  # an open_timeout that a test must never wait for

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _download(uri: str, run_id: str, path: str, tmp_path: Path) -> bytes:
    local = _client(uri).download_artifacts(run_id, path, str(tmp_path / uuid.uuid4().hex))
    return Path(local).read_bytes()


def _history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in _client(uri).get_metric_history(run_id, key)]


def _eventually(condition: Callable[[], bool], guard: float = GUARD_S) -> bool:
    """Wait until ``condition()`` holds; False if it still does not after ``guard`` seconds."""
    deadline = time.monotonic() + guard
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _returns(fn: Callable[[], T], guard: float = GUARD_S) -> T:
    """``fn()``, run in a thread: fails the test if it has not returned after ``guard`` seconds (not a hang)."""
    result: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(guard)
    assert not thread.is_alive(), f"{fn} has not returned after {guard:.0f} s"
    if errors:
        raise errors[0]
    return result[0]


def _retry_waits(caplog: pytest.LogCaptureFixture, what: str = "") -> list[str]:
    """The waits the registry logged before each retry (``retrying to <what> in 0.2 s``)."""
    pattern = re.compile(r"retrying to (.*) in ([0-9.]+) s$")
    found = [pattern.search(r.getMessage()) for r in caplog.records]
    return [m.group(2) for m in found if m and what in m.group(1)]


def _registry_calls(uri: str) -> list[Callable[[], object]]:
    return [
        lambda: tracking.register_version(uri, "m", "s3://b/ckpt", {}),
        lambda: tracking.get_alias(uri, "m", "production"),
        lambda: tracking.set_alias(uri, "m", "production", "1"),
        lambda: tracking.list_versions(uri, "m"),
        lambda: tracking.delete_alias(uri, "m", "production"),
    ]


@pytest.fixture
def job_tags() -> dict[str, str]:
    job = as_job(grid_job(_name("job")))
    return lineage_tags(job, dataset_digest="sha256:abc", image="ghcr.io/ganops/trainer:test")


# ---------------------------------------------------------------------------------------------- pure helpers


def test_flatten_spec_uses_dotted_camel_case_keys() -> None:
    flat = flatten_spec(as_job(grid_job("flat")))
    assert flat["model.latentDim"] == "2"
    assert flat["model.architecture"] == "mlp"
    assert flat["optimizer.betas"] == "[0.5, 0.999]"
    assert flat["model.spectralNorm"] == "false"
    assert "budget.maxCostUSD" not in flat  # unset fields are left out
    assert "model.numClasses" not in flat and "resources.nodeSelector" not in flat
    assert all(isinstance(v, str) for v in flat.values())


def test_lineage_tags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GANOPS_GIT_COMMIT", "a" * 40)
    monkeypatch.setenv("GANOPS_IMAGE", "registry.example/trainer:1")
    job = as_job({**grid_job("lin"), "metadata": {"name": "lin", "namespace": "team-a"}})
    tags = lineage_tags(job, dataset_digest="sha256:123")
    assert tags[JOB_TAG] == "team-a/lin"
    assert tags["ganops.gitCommit"] == "a" * 40 == tags["mlflow.source.git.commit"]
    assert tags["ganops.datasetDigest"] == "sha256:123"
    assert tags["ganops.image"] == "registry.example/trainer:1"
    assert tags["ganops.version.mlflow"] and tags["ganops.version.torch"] and tags["ganops.version.ganops"]
    assert lineage_tags(job.spec, image="explicit:1", job="ns/x")["ganops.image"] == "explicit:1"

    assert tags["ganops.specHash"] == spec_hash(job.spec)  # the hash in the checkpoint manifest


def test_redact_hides_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-123456")
    text = tracking.redact("http://bob:hunter2@mlflow:5000/x?token=abc failed, header tok-123456")
    assert "hunter2" not in text and "abc" not in text and "tok-123456" not in text


# ---------------------------------------------------------------------------------------------- runs


def test_run_params_metrics_artifacts_round_trip(mlflow_uri: str, job_tags: dict[str, str], tmp_path: Path) -> None:
    experiment = _name("exp")
    tracker = Tracker.open(mlflow_uri, experiment, "grid run", tags=job_tags)
    run_id = tracker.run_id
    assert run_id and not tracker.resumed and not tracker.degraded
    params = flatten_spec(as_job(grid_job("p")))
    tracker.log_params(params)
    for step in range(0, 50, 5):
        tracker.log_metrics({"loss/generator": step / 10, "loss/discriminator": -step / 10}, step)
    tracker.log_artifact_bytes(PNG, "samples/step-000050.png")
    tracker.log_artifact_bytes(json.dumps({"fid": 1.5}).encode(), "eval/step-000050.json")
    tracker.set_tags({"ganops.phase": "Running"})
    assert tracker.flush(10)
    assert tracker.pending().empty
    assert tracker.finish("FINISHED", timeout=10)
    assert tracker.report() is None

    client = _client(mlflow_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "grid run"
    assert run.data.params == params
    assert run.data.tags[JOB_TAG] == job_tags[JOB_TAG]
    assert run.data.tags["ganops.phase"] == "Running"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert _history(mlflow_uri, run_id, "loss/generator") == [(s, s / 10) for s in range(0, 50, 5)]
    assert _download(mlflow_uri, run_id, "samples/step-000050.png", tmp_path) == PNG
    assert json.loads(_download(mlflow_uri, run_id, "eval/step-000050.json", tmp_path)) == {"fid": 1.5}


def test_a_bad_item_is_dropped_alone(mlflow_uri: str, caplog: pytest.LogCaptureFixture) -> None:
    tracker = Tracker.open(mlflow_uri, _name("exp"), "r")
    run_id = tracker.run_id
    assert run_id
    caplog.set_level(logging.WARNING, logger="ganops.tracking")
    tracker.log_metrics({"loss": 1.0}, 0)
    mixed: dict[str, Any] = {"bad key!": 1.0, "loss": 2.0, "text": "x"}
    tracker.log_metrics(mixed, 1)  # refused here: the rest goes on
    tracker.log_metrics({"loss": 3.0}, 2**70)  # refused by MLflow: the merged batch is retried op by op
    tracker.log_metrics({"loss": 4.0, "nan": float("nan")}, 3)
    tracker.log_params({"ok": 1, "bad!": 2})
    assert tracker.finish(timeout=10)
    assert _history(mlflow_uri, run_id, "loss") == [(0, 1.0), (1, 2.0), (3, 4.0)]
    assert math.isnan(_history(mlflow_uri, run_id, "nan")[0][1])
    assert _client(mlflow_uri).get_run(run_id).data.params == {"ok": "1"}
    assert tracker.dropped.metric_points == 3 and tracker.dropped.params == 1
    assert "3 metric points, 1 param could not be logged" in caplog.text


def test_resume_by_run_id_continues_the_run(mlflow_uri: str, job_tags: dict[str, str]) -> None:
    experiment = _name("exp")
    first = Tracker.open(mlflow_uri, experiment, "r", tags=job_tags)
    first.log_params({"model.latentDim": "2", "training.steps": "20"})
    for step in range(5):
        first.log_metrics({"loss": float(step)}, step)
    assert first.close(10)  # preempted: the run stays RUNNING
    run_id = first.run_id
    assert run_id

    # A different job tag on purpose: the run id from the checkpoint manifest wins over the tag search.
    resumed = Tracker.open(mlflow_uri, experiment, "r", run_id=run_id, tags={"ganops.attempt": "2"})
    assert resumed.run_id == run_id and resumed.resumed
    resumed.log_params({"model.latentDim": "2", "training.steps": "20", "training.batchSize": "32"})
    resumed.log_params({"training.steps": "40"})  # immutable in MLflow: skipped with a warning, no failure
    for step in range(5, 10):
        resumed.log_metrics({"loss": float(step)}, step)
    assert resumed.finish(timeout=10)
    assert resumed.dropped.empty

    run = _client(mlflow_uri).get_run(run_id)
    assert run.data.params == {"model.latentDim": "2", "training.steps": "20", "training.batchSize": "32"}
    assert _history(mlflow_uri, run_id, "loss") == [(s, float(s)) for s in range(10)]
    assert run.data.tags["ganops.attempt"] == "2"
    assert run.info.status == "FINISHED"
    assert len(_client(mlflow_uri).search_runs([run.info.experiment_id])) == 1


def test_finds_the_run_by_job_tag(mlflow_uri: str, job_tags: dict[str, str]) -> None:
    experiment = _name("exp")
    first = Tracker.open(mlflow_uri, experiment, "r", tags=job_tags)
    first_id = first.run_id
    assert first_id
    first.log_metrics({"loss": 1.0}, 0)
    assert first.finish(timeout=10)

    again = Tracker.open(mlflow_uri, experiment, "r", tags=job_tags)  # no run id: found by ganops.job
    assert again.run_id == first_id and again.resumed
    assert _client(mlflow_uri).get_run(first_id).info.status == "RUNNING"  # continued
    again.log_metrics({"loss": 0.5}, 1)
    assert again.finish(timeout=10)
    assert _history(mlflow_uri, first_id, "loss") == [(0, 1.0), (1, 0.5)]

    other = Tracker.open(mlflow_uri, experiment, "r", tags={**job_tags, JOB_TAG: "default/another-job"})
    assert other.run_id != first_id and not other.resumed
    other.finish(timeout=10)

    failed = Tracker.open(mlflow_uri, experiment, "r", tags={JOB_TAG: "default/failed-job"})
    assert failed.finish("FAILED", timeout=10)
    fresh = Tracker.open(mlflow_uri, experiment, "r", tags={JOB_TAG: "default/failed-job"})
    assert fresh.run_id != failed.run_id  # only RUNNING/FINISHED runs are continued by tag
    fresh.close(5)


# ---------------------------------------------------------------------------------------------- outages


def test_outage_buffers_then_flushes_in_order(
    mlflow_server: MlflowServer, job_tags: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One real stop/start of the server (a restart costs ~10 s here) for two trackers: ``running`` was open
    before the outage, ``late`` is opened during it (its run is created when the server is back)."""
    uri = mlflow_server.start().url
    running = Tracker.open(uri, _name("exp"), "r", tags=job_tags, retry_interval=1.0)
    run_id = running.run_id
    assert run_id
    running.log_metrics({"loss": 0.0}, 0)
    assert running.flush(10)

    caplog.set_level(logging.WARNING, logger="ganops.tracking")
    mlflow_server.stop()
    try:

        def log_steps(steps: range) -> None:
            for step in steps:
                running.log_metrics({"loss": float(step), "lr": 1e-4}, step)
                if step % 50 == 0:
                    running.log_artifact_bytes(PNG, f"samples/step-{step:06d}.png")
                    running.set_tags({"ganops.step": str(step)})

        # Every call returns while the server is down (a call that waited for delivery would not return).
        _returns(lambda: log_steps(range(1, 21)))
        assert _eventually(lambda: running.degraded)  # the background sender noticed the outage
        _returns(lambda: log_steps(range(21, 201)))
        assert not running.flush(0.3)  # still down: gives up waiting, keeps everything
        assert running.degraded
        pending = running.pending()  # nothing was sent or lost: everything logged during the outage waits
        assert pending.metric_points == 400 and pending.artifacts == 4 and pending.tags == 4
        assert running.dropped.empty

        late_experiment = _name("exp")
        # open() returns once its first attempt has failed, without waiting for its timeout.
        late = _returns(
            lambda: Tracker.open(
                uri, late_experiment, "late", tags={**job_tags, JOB_TAG: "default/late"}, open_timeout=NEVER_S
            )
        )
        assert late.degraded and late.run_id is None

        def log_late() -> None:
            late.log_params({"model.latentDim": "2"})
            for step in range(10):
                late.log_metrics({"loss": float(step)}, step)
            late.log_artifact_bytes(PNG, "samples/step-000010.png")

        _returns(log_late)  # no run yet: every call returns at once (one waiting for the run would not return)
        pending = late.pending()
        assert pending.metric_points == 10 and pending.params == 1 and pending.artifacts == 1
        assert late.run_id is None

        outage_warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(outage_warnings) == 2, [r.getMessage() for r in caplog.records]  # one per tracker
    finally:
        mlflow_server.start()

    assert running.flush(30) and late.flush(30)
    assert not running.degraded and running.pending().empty
    assert running.finish(timeout=10) and running.report() is None
    assert any("reachable again" in r.getMessage() for r in caplog.records)
    assert _history(uri, run_id, "loss") == [(s, float(s)) for s in range(201)]
    assert len(_history(uri, run_id, "lr")) == 200
    assert _download(uri, run_id, "samples/step-000200.png", tmp_path) == PNG
    run = _client(uri).get_run(run_id)
    assert run.data.tags["ganops.step"] == "200" and run.info.status == "FINISHED"

    late_run_id = late.run_id
    assert late_run_id and not late.resumed
    assert late.finish(timeout=10)
    late_run = _client(uri).get_run(late_run_id)
    assert late_run.info.status == "FINISHED" and late_run.data.params == {"model.latentDim": "2"}
    assert late_run.data.tags[JOB_TAG] == "default/late"
    assert _client(uri).get_experiment(late_run.info.experiment_id).name == late_experiment
    assert _history(uri, late_run_id, "loss") == [(s, float(s)) for s in range(10)]
    assert _download(uri, late_run_id, "samples/step-000010.png", tmp_path) == PNG


def test_hung_server_does_not_block_logging(
    mlflow_server: MlflowServer, job_tags: dict[str, str], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server that accepts connections but never answers (SIGSTOP), behind proxies that count the requests it
    gets: requests time out in the background, logging calls never wait for them, registry calls give up in time."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    caplog.set_level(logging.DEBUG, logger="ganops.tracking")
    uri = mlflow_server.start().url
    with FaultProxy(uri) as proxy, FaultProxy(uri) as registry_proxy:
        tracker = Tracker.open(proxy.url, _name("exp"), "r", tags=job_tags, retry_interval=0.5)
        run_id = tracker.run_id
        assert run_id
        mlflow_server.pause()
        try:
            sent = proxy.counts["requests"]
            tracker.log_metrics({"loss": 0.0}, 0)
            assert _eventually(lambda: proxy.counts["requests"] == sent + 1)  # the sender waits for an answer
            for step in range(1, 50):
                tracker.log_metrics({"loss": float(step)}, step)
            tracker.log_artifact_bytes(PNG, "samples/hung.png")
            # Every call returned while that request was unanswered (it times out after 5 s) and none sent anything.
            assert not tracker.degraded and proxy.counts["requests"] == sent + 1
            pending = tracker.pending()
            assert pending.metric_points == 50 and pending.artifacts == 1
            assert not tracker.flush(1.5)
            assert _eventually(lambda: tracker.degraded)  # the request timed out: retried later, nothing lost
            assert tracker.dropped.empty

            # Promotion and serving get an answer, not a hang: 1 s tries, 0.2 s and 0.5 s apart, fit the 5 s budget…
            monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
            with pytest.raises(TrackingUnavailable):
                tracking.get_alias(registry_proxy.url, "any-model", "production")
            assert registry_proxy.counts["requests"] == 3
            assert _retry_waits(caplog, "any-model@production") == ["0.2", "0.5"]
            # …but after a 3 s try, another would likely end after the budget: one try only.
            monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
            caplog.clear()
            with pytest.raises(TrackingUnavailable):
                tracking.get_alias(registry_proxy.url, "any-model", "production")
            assert registry_proxy.counts["requests"] == 4
            assert _retry_waits(caplog, "any-model@production") == []
        finally:
            mlflow_server.resume()
        assert tracker.flush(30)
        assert tracker.finish(timeout=10)
    assert _history(uri, run_id, "loss") == [(s, float(s)) for s in range(50)]


def test_dead_server_drops_past_the_limits_and_reports(caplog: pytest.LogCaptureFixture) -> None:
    uri = f"http://ganops:s3cret-pw@127.0.0.1:{free_port()}"  # nothing listens; credentials must not leak
    caplog.set_level(logging.DEBUG, logger="ganops.tracking")
    limits = BufferLimits(max_metric_points=100, max_artifact_bytes=3 * len(PNG))
    # open() returns once its first attempt has failed, without waiting for its timeout.
    tracker = _returns(lambda: Tracker.open(uri, "exp", "r", limits=limits, retry_interval=0.5, open_timeout=NEVER_S))
    assert tracker.degraded
    for step in range(150):
        tracker.log_metrics({"loss": float(step)}, step)
    for step in range(5):
        tracker.log_artifact_bytes(PNG, f"samples/{step}.png")
    pending = tracker.pending()
    assert pending.metric_points == 100 and pending.artifacts == 3
    assert tracker.dropped.metric_points == 50 and tracker.dropped.artifacts == 2
    assert not tracker.finish(timeout=0.5)
    dropped = tracker.dropped
    assert dropped.metric_points == 150 and dropped.artifacts == 5 and dropped.other == 1
    assert tracker.report() == f"150 metric points, 5 artifacts ({5 * len(PNG) / 1024:.1f} KB), 1 status change " + (
        "could not be logged to MLflow"
    )
    assert any("could not be logged to MLflow" in r.getMessage() for r in caplog.records)
    assert "s3cret-pw" not in caplog.text
    tracker.log_metrics({"loss": 1.0}, 999)  # after close: counted, never raises
    assert tracker.dropped.metric_points == 151


# ---------------------------------------------------------------------------------------------- registry


def test_registry_versions_and_aliases(mlflow_uri: str, job_tags: dict[str, str], tmp_path: Path) -> None:
    model = _name("grid-gan")
    tracker = Tracker.open(mlflow_uri, _name("exp"), "r", tags=job_tags)
    run_id = tracker.run_id
    assert run_id and tracker.finish(timeout=10)

    assert tracking.get_alias(mlflow_uri, model, "production") is None  # no model yet
    assert tracking.list_versions(mlflow_uri, model) == []

    ckpt1 = (tmp_path / "ckpt" / "step-000500").as_uri()
    v1 = tracking.register_version(
        mlflow_uri, model, ckpt1, {"ganops.step": "500", "ganops.fid": "12.5"}, run_id, "first"
    )
    assert v1 == "1"
    tracking.set_alias(mlflow_uri, model, "production", v1)
    got = tracking.get_alias(mlflow_uri, model, "production")
    assert got is not None
    assert got.version == "1" and got.checkpoint_uri == ckpt1 and got.run_id == run_id
    assert got.tags["ganops.step"] == "500" and got.tags[CHECKPOINT_URI_TAG] == ckpt1
    assert got.aliases == ("production",) and got.description == "first"
    assert got.source.startswith(f"runs:/{run_id}/")  # MLflow refuses file:// sources: a pointer in the run
    pointer_path = got.source.removeprefix(f"runs:/{run_id}/")
    assert json.loads(_download(mlflow_uri, run_id, pointer_path, tmp_path))["checkpoint_uri"] == ckpt1

    ckpt2 = "s3://ckpts/team-a/grid/step-001000"
    v2 = tracking.register_version(mlflow_uri, model, ckpt2, {"ganops.step": "1000"}, run_id=None)
    assert v2 == "2"
    assert tracking.get_version(mlflow_uri, model, v2) is not None
    tracking.set_alias(mlflow_uri, model, "production", v2)  # promote: the alias moves
    tracking.set_alias(mlflow_uri, model, "canary", v2)
    moved = tracking.get_alias(mlflow_uri, model, "production")
    assert moved is not None and moved.version == "2" and moved.source == ckpt2 == moved.checkpoint_uri
    assert moved.aliases == ("canary", "production") and moved.run_id is None

    tracking.set_alias(mlflow_uri, model, "production", v1)  # rollback
    back = tracking.get_alias(mlflow_uri, model, "production")
    assert back is not None and back.version == "1"

    versions = tracking.list_versions(mlflow_uri, model)
    assert [(v.version, v.aliases) for v in versions] == [("1", ("production",)), ("2", ("canary",))]

    # A local checkpoint registered without a run gets a pointer run of its own.
    v3 = tracking.register_version(mlflow_uri, model, (tmp_path / "other").as_uri(), {})
    info3 = tracking.get_version(mlflow_uri, model, v3)
    assert info3 is not None and info3.run_id and info3.source.startswith("runs:/")

    tracking.delete_alias(mlflow_uri, model, "canary")
    tracking.delete_alias(mlflow_uri, model, "canary")  # idempotent
    assert tracking.get_alias(mlflow_uri, model, "canary") is None
    assert tracking.get_version(mlflow_uri, model, "99") is None
    with pytest.raises(TrackingError) as refused:
        tracking.set_alias(mlflow_uri, model, "production", "99")
    assert not isinstance(refused.value, TrackingUnavailable)


def test_registry_calls_raise_tracking_unavailable_on_a_dead_uri(caplog: pytest.LogCaptureFixture) -> None:
    uri = f"http://user:pa55word@127.0.0.1:{free_port()}"
    caplog.set_level(logging.DEBUG, logger="ganops.tracking")
    for call in _registry_calls(uri):
        caplog.clear()
        with pytest.raises(TrackingUnavailable) as excinfo:
            call()
        assert "pa55word" not in str(excinfo.value) and "127.0.0.1" in str(excinfo.value)
        # Three tries, 0.2 s and 0.5 s apart: the caller has its answer in under a second.
        assert _retry_waits(caplog) == ["0.2", "0.5"]
        assert "pa55word" not in caplog.text
    assert not tracking.ping(uri, timeout=2)

    # Those tries are the only requests (MLflow's own HTTP retries are off): a server that drops every request
    # sees three per call.
    with FaultProxy(uri) as dropping:
        dropping.set_faults(FaultPlan(rate=1.0, kinds=("drop",)))
        for done, call in enumerate(_registry_calls(dropping.url), start=1):
            with pytest.raises(TrackingUnavailable):
                call()
            assert dropping.counts["requests"] == dropping.counts["fault:drop"] == 3 * done
