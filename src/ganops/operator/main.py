"""kopf handlers of the ganops operator - registration only; the logic lives in the sibling modules.

    kopf run -m ganops.operator.main --all-namespaces --liveness=http://0.0.0.0:8081/healthz --log-format=json
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from ganops.contracts import API_GROUP, LABEL_JOB, PLURAL, VERSION
from ganops.operator import metrics
from ganops.operator.controller import Runtime
from ganops.operator.kube import Kube, load_api_client
from ganops.operator.observe import JobView, PodView, job_view, pod_view
from ganops.operator.settings import OperatorConfig, configure_kopf

Logger = logging.Logger | logging.LoggerAdapter[Any]
OWNED = {LABEL_JOB: kopf.PRESENT}


@kopf.on.startup()
def startup(*, settings: kopf.OperatorSettings, memo: kopf.Memo, logger: Logger, **_: Any) -> None:
    """The one place where the operator is configured: environment → OperatorConfig → kopf settings."""
    config = OperatorConfig.from_env()
    configure_kopf(settings, config)
    # The API client first: kopf retries a failed startup, and a metrics server already listening would make every
    # retry fail with "address already in use".
    kube = Kube(load_api_client(config.workers))
    server = metrics.serve(config.metrics_port)
    memo.ganops = Runtime(config, kube, metrics_server=server)
    logger.info(f"ganops operator configured: resync every {config.resync_seconds:g}s, "
                f"{'standalone' if config.replicas <= 1 else f'peering {config.peering_name!r}'}, "
                f"metrics on :{config.metrics_port or 'off'}")


@kopf.on.cleanup()
def cleanup(*, memo: kopf.Memo, **_: Any) -> None:
    runtime = memo.get("ganops")
    if isinstance(runtime, Runtime):
        runtime.close()


@kopf.on.probe(id="jobs")
def probe_jobs(*, memo: kopf.Memo, **_: Any) -> dict[str, int]:
    runtime = memo.get("ganops")
    return runtime.phases.counts() if isinstance(runtime, Runtime) else {}


# Indexes: kopf fills them from the watch streams before any other handler runs (also after a restart), so a
# reconcile always sees the children that exist. Each change also kicks its job's loop: one handler per event.
@kopf.index("batch", "v1", "jobs", labels=OWNED)
async def ganops_jobs(*, namespace: str | None, labels: kopf.Labels, body: kopf.Body, memo: kopf.Memo,
                      **_: Any) -> dict[Any, JobView]:
    key = (namespace, labels[LABEL_JOB])
    memo.ganops.kick_soon(key)
    return {key: job_view(body)}


@kopf.index("", "v1", "pods", labels=OWNED)
async def ganops_pods(*, namespace: str | None, labels: kopf.Labels, body: kopf.Body, memo: kopf.Memo,
                      **_: Any) -> dict[Any, PodView]:
    key = (namespace, labels[LABEL_JOB])
    memo.ganops.kick_soon(key)
    return {key: pod_view(body)}


def _deleted(*, type: str, **_: Any) -> bool:
    return type == "DELETED"


# kopf drops a deleted object from its index without calling the index handler: kick the loop when a Job goes.
# (Not for pods: any event handler makes kopf diff every pod event; a Job's pods going shows in its status, and
# the periodic resync catches the rest.)
@kopf.on.event("batch", "v1", "jobs", labels=OWNED, when=_deleted)
async def job_deleted(*, namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    memo.ganops.kick((namespace, labels[LABEL_JOB]))


def _spec_or_annotations_changed(*, namespace: str | None, name: str, meta: kopf.Meta, memo: kopf.Memo,
                                 **_: Any) -> bool:
    return bool(memo.ganops.changed(str(namespace), name, meta.get("generation"), meta.annotations))


@kopf.on.event(API_GROUP, VERSION, PLURAL, when=_spec_or_annotations_changed)
async def resource_changed(*, namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    """The spec or a promotion annotation changed (status writes, the operator's own, never get here)."""
    memo.ganops.kick((str(namespace), name))


@kopf.daemon(API_GROUP, VERSION, PLURAL, id="reconcile", cancellation_timeout=1.0)
async def reconcile(*, body: kopf.Body, stopped: kopf.DaemonStopped, logger: Logger, memo: kopf.Memo,
                    **kwargs: Any) -> None:
    """One loop per GanTrainingJob; the indexes come in as kwargs named after their handlers."""
    jobs: kopf.Index[Any, JobView] = kwargs["ganops_jobs"]
    pods: kopf.Index[Any, PodView] = kwargs["ganops_pods"]
    await memo.ganops.run_job(body=body, stopped=stopped, logger=logger, jobs_index=jobs, pods_index=pods)
