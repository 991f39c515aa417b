"""`ganops.operator.controller.Controller`: the I/O around the decisions, against a fake API."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable
from typing import Any

import pytest

from ganops.operator import controller as controller_module
from ganops.operator.controller import ERROR_BACKOFF, Controller, JobMemory, Runtime, Snapshot
from ganops.operator.kube import KubeError
from ganops.operator.observe import JobView, PodView
from ganops.operator.settings import OperatorConfig
from tests.support.jobs import grid_job

NOW = dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=dt.UTC)


class FakeKube:
    """Records calls; `refuse` maps (method, kind or plural) to a KubeError status to answer with."""

    def __init__(self, refuse: dict[tuple[str, str], int] | None = None) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.refuse = refuse or {}

    def _maybe_refuse(self, method: str, what: str) -> None:
        status = self.refuse.get((method, what))
        if status is not None:
            raise KubeError(status, "Refused", f"{what} refused", f"{method} {what}")

    def create(self, obj: dict[str, Any], namespace: str) -> dict[str, Any]:
        self.calls.append(("POST", obj["kind"], obj))
        self._maybe_refuse("POST", obj["kind"])
        return obj

    def patch(self, api_version: str, plural: str, namespace: str, name: str, patch: dict[str, Any], *,
              subresource: str | None = None) -> dict[str, Any]:
        what = f"{plural}/{subresource}" if subresource else plural
        self.calls.append(("PATCH", what, patch))
        self._maybe_refuse("PATCH", what)
        return {"status": patch.get("status", {})} if subresource == "status" else {}

    def post_event(self, involved: dict[str, Any], type_: str, reason: str, message: str, **kw: Any) -> None:
        self.calls.append(("EVENT", reason, {"involved": involved, "type": type_, "message": message}))
        self._maybe_refuse("EVENT", reason)

    def delete(self, api_version: str, plural: str, namespace: str, name: str, **kw: Any) -> None:
        self.calls.append(("DELETE", plural, kw))
        self._maybe_refuse("DELETE", plural)

    def close(self) -> None:
        pass

    def methods(self) -> list[tuple[str, str]]:
        """The API calls, Events left out (`posted` has them)."""
        return [(method, what) for method, what, _ in self.calls if method != "EVENT"]

    def posted(self) -> list[str]:
        return [what for method, what, _ in self.calls if method == "EVENT"]


def snap(status: dict[str, Any] | None = None, jobs: tuple[JobView, ...] = (), pods: tuple[PodView, ...] = (),
         **spec: Any) -> Snapshot:
    return Snapshot(name="gan", namespace="team-a", uid="u-1", generation=1, spec=grid_job("gan", **spec)["spec"],
                    status=status or {}, annotations={}, labels={}, jobs=jobs, pods=pods)


def controller(kube: FakeKube) -> Controller:
    return Controller(OperatorConfig(), kube, now=lambda: NOW)  # type: ignore[arg-type]


def test_creates_children_writes_status_and_does_not_repost_while_the_index_lags() -> None:
    kube = FakeKube()
    memory = JobMemory()
    outcome = controller(kube).reconcile(snap(), memory)
    assert kube.methods() == [("POST", "ConfigMap"), ("POST", "Job"), ("PATCH", "gantrainingjobs/status")]
    assert outcome.phase == "Pending" and [e.reason for e in outcome.events] == ["Created"]
    assert memory.status is not None and memory.status["attempt"] == 1

    kube.calls.clear()  # the Job is not in kopf's index yet: no second POST, no status write (nothing changed)
    controller(kube).reconcile(snap(), memory)
    assert kube.methods() == []

    kube.calls.clear()  # the index shows it: running
    running = controller(kube).reconcile(
        snap(jobs=(JobView("gan", 1, "j-1"),), pods=(PodView("gan-0", 1, 0, "Running", started=NOW),)), memory)
    assert running.phase == "Running" and kube.methods() == [("PATCH", "gantrainingjobs/status")]
    patch = next(body for method, _, body in kube.calls if method == "PATCH")["status"]
    assert patch["phase"] == "Running" and "attempt" not in patch  # a merge patch of what changed


def test_events_are_posted_before_the_status_that_records_their_transition() -> None:
    """An operator killed between the two posts the Event again on its next reconcile; the other order would lose
    it for good (tests/resilience/test_operator_kills.py counts lost transitions)."""
    kube = FakeKube()
    controller(kube).reconcile(snap(), JobMemory())
    order = [(method, what) for method, what, _ in kube.calls]
    assert order.index(("EVENT", "Created")) < order.index(("PATCH", "gantrainingjobs/status"))
    event = next(body for method, _, body in kube.calls if method == "EVENT")
    assert event["involved"] == {"apiVersion": "ganops.io/v1alpha1", "kind": "GanTrainingJob", "name": "gan",
                                 "namespace": "team-a", "uid": "u-1"}

    # An Event the API refuses is logged; the status is still written.
    refused = FakeKube({("EVENT", "Created"): 500})
    controller(refused).reconcile(snap(), JobMemory())
    assert refused.methods()[-1] == ("PATCH", "gantrainingjobs/status")

    # Below the posting level nothing is posted (Normal events are INFO).
    quiet = FakeKube()
    Controller(OperatorConfig(posting_level=logging.WARNING), quiet,  # type: ignore[arg-type]
               now=lambda: NOW).reconcile(snap(), JobMemory())
    assert quiet.posted() == []


def test_conflicts_and_permanent_errors() -> None:
    kube = FakeKube({("POST", "ConfigMap"): 409, ("POST", "Job"): 409})
    outcome = controller(kube).reconcile(snap(), JobMemory())
    # The ConfigMap exists: its job file is rewritten; the Job exists (ours, or the previous one going): wait.
    assert ("PATCH", "configmaps") in kube.methods() and outcome.requeue_after is not None

    kube = FakeKube({("POST", "Job"): 422})
    memory = JobMemory()
    outcome = controller(kube).reconcile(snap(), memory)
    assert [e.reason for e in outcome.events] == ["Created", "ReconcileError"]
    assert outcome.requeue_after == 300.0
    ready = next(c for c in memory.status["conditions"] if c["type"] == "ChildrenReady")  # type: ignore[index]
    assert ready["status"] == "False" and "Job refused" in ready["message"]

    kube = FakeKube({("PATCH", "gantrainingjobs/status"): 404})
    assert controller(kube).reconcile(snap(), JobMemory()).gone  # deleted meanwhile: the loop ends


def test_relaunch_deletes_the_old_job_by_uid_in_the_foreground() -> None:
    kube = FakeKube()
    memory = JobMemory()
    status = {"phase": "Running", "attempt": 1, "restarts": {"preemptions": 0, "failures": 0}}
    evicted = PodView("gan-0", 1, 0, "Failed", reason="Evicted")
    controller(kube).reconcile(snap(status, jobs=(JobView("gan", 1, "j-1"),), pods=(evicted,)), memory)
    # The decision is written before the delete destroys its evidence (the evicted pod): an operator killed in
    # between resumes at attempt 2 instead of relaunching attempt 1 again.
    assert kube.methods()[:3] == [("PATCH", "gantrainingjobs/status"), ("DELETE", "jobs"), ("POST", "ConfigMap")]
    recorded = kube.calls[[m for m, _, _ in kube.calls].index("PATCH")][2]["status"]
    assert recorded["attempt"] == 2 and recorded["restarts"]["preemptions"] == 1
    order = [(method, what) for method, what, _ in kube.calls]
    assert order.index(("EVENT", "Relaunched")) < order.index(("DELETE", "jobs"))
    assert next(body for method, _, body in kube.calls if method == "DELETE") == {"uid": "j-1",
                                                                                 "propagation": "Foreground"}
    job = next(obj for method, kind, obj in kube.calls if kind == "Job")
    assert job["metadata"]["labels"]["ganops.io/attempt"] == "2"


def test_reconcile_errors_back_off_from_one_second_to_a_minute() -> None:
    assert [ERROR_BACKOFF.delay(failures - 1) for failures in range(1, 10)] == [
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert ERROR_BACKOFF.delay(10_000) == 60.0


def test_the_jobs_loop_waits_the_backoff_after_each_failed_reconcile(monkeypatch: pytest.MonkeyPatch) -> None:
    """`Runtime.run_job` against a controller that always raises: the waits between its tries are the backoff."""
    waits: list[float] = []

    class Stopped:
        def __bool__(self) -> bool:
            return len(waits) >= 8

    async def no_wait(awaitable: Awaitable[Any], timeout: float) -> None:
        waits.append(timeout)
        close = getattr(awaitable, "close", None)
        if close is not None:
            close()  # the kick's wait coroutine, never awaited
        raise TimeoutError

    def failing(snap: Snapshot, memory: JobMemory) -> None:
        raise RuntimeError("the API is away")

    monkeypatch.setattr(controller_module.asyncio, "wait_for", no_wait)
    runtime = Runtime(OperatorConfig(metrics_port=0), FakeKube())  # type: ignore[arg-type]
    monkeypatch.setattr(runtime.controller, "reconcile", failing)
    body = {"metadata": {"namespace": "team-a", "name": "gan", "uid": "u-1", "generation": 1}, "spec": {}}
    try:
        asyncio.run(runtime.run_job(body=body, stopped=Stopped(), logger=logging.getLogger("test"),
                                    jobs_index={}, pods_index={}))
    finally:
        runtime.close()
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
