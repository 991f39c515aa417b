"""A throwaway kopf operator for the emulator's own tests (the real one is `ganops.operator.main`).

On creation of a GanTrainingJob it creates a ConfigMap child `<job>-spec` (owned via `kopf.adopt`, labelled
`ganops.io/job=<job>`) through the `kubernetes` client, sets `status.phase` to Pending through kopf's patch,
and posts a k8s Event (`ChildCreated`).
On a spec change it records the new generation in `status.observedGeneration`.
With SAMPLE_OPERATOR_HANG_AFTER_CHILD=1 in its environment, the create handler hangs right after creating the
child (before the status and kopf's progress are written): the moment to kill the operator in a test.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, cast

import kopf
import kubernetes

GROUP, VERSION, PLURAL = "ganops.io", "v1alpha1", "gantrainingjobs"


@kopf.on.startup()
def configure(**_: Any) -> None:
    # Exactly what an operator does outside a cluster: follow KUBECONFIG (the kube_api fixture sets it).
    kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]


@kopf.on.create(GROUP, VERSION, PLURAL)
def create_spec_configmap(
    body: kopf.Body,
    spec: kopf.Spec,
    name: str,
    namespace: str | None,
    patch: kopf.Patch,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    assert namespace is not None  # GanTrainingJobs are namespaced
    configmap: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-spec", "labels": {"ganops.io/job": name}},
        "data": {"spec.json": json.dumps(dict(spec), sort_keys=True)},
    }
    kopf.adopt(configmap, owner=body)
    with kubernetes.client.ApiClient() as client:
        try:
            kubernetes.client.CoreV1Api(client).create_namespaced_config_map(namespace, cast(Any, configmap))
        except kubernetes.client.ApiException as exc:
            if exc.status != 409:  # already there: a previous attempt got this far
                raise
    if os.environ.get("SAMPLE_OPERATOR_HANG_AFTER_CHILD") == "1":
        logger.info("hanging after the child was created")
        time.sleep(3600)
    logger.info(f"ConfigMap {name}-spec is created")
    kopf.info(body, reason="ChildCreated", message=f"ConfigMap {name}-spec is created")  # a k8s Event
    patch.status["phase"] = "Pending"
    patch.status["observedGeneration"] = body.metadata.get("generation")


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def record_generation(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    patch.status["observedGeneration"] = body.metadata.get("generation")
