"""The test node (`tests.support.node`) does what the kubelet and the Job controller would, with `sh` as the image:
env from Secrets, ConfigMaps and the downward API, volumes at rewritten mount paths, exit codes and failure
policies, CreateContainerConfigError, SIGTERM when the pod goes away."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.kube import KubeAPI
from tests.support.node import Node, expand

pytest_plugins = ["tests.support.kube.fixtures"]

NS = "node-test"


@pytest.fixture
def node(kube_api: KubeAPI, tmp_path: Path) -> Iterator[Node]:
    kube_api.ensure_namespace(NS)
    with Node(kube_api, tmp_path / "node", image_env={"PATH": "/usr/bin:/bin"}, namespaces=(NS,),
              poll_seconds=0.05, pod_network_env=lambda ip: {"LISTEN_ADDR": ip}) as started:
        yield started
    assert not started.failures, started.failures


def job(name: str, script: str, **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main", "image": "sh", "command": ["sh", "-c"], "args": [script],
        "env": [{"name": "OUT", "value": "/data"}],
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container],
                                "volumes": [{"name": "data", "emptyDir": {}}], "terminationGracePeriodSeconds": 5}
    for key in ("env", "envFrom", "volumeMounts"):
        if key in spec:
            container[key] = container.get(key, []) + spec.pop(key)
    pod_spec["volumes"] += spec.pop("volumes", [])
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": NS},
            "spec": {"completionMode": "Indexed", "completions": 1, "parallelism": 1, "backoffLimit": 0,
                     "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec}, **spec}}


def pods_of(kube: KubeAPI, name: str) -> list[dict[str, Any]]:
    return kube.list("v1", "Pod", NS, label_selector=f"batch.kubernetes.io/job-name={name}")


def condition(job_body: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (job_body.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


def wait_condition(kube: KubeAPI, name: str, type_: str) -> dict[str, Any]:
    return kube.wait_for(lambda: condition(kube.get("batch/v1", "Job", NS, name), type_).get("status") == "True"
                         and kube.get("batch/v1", "Job", NS, name), timeout=15, message=f"Job {name} {type_}")


def data_dir(node: Node, pod: dict[str, Any]) -> Path:
    return node.root / NS / pod["metadata"]["name"] / "volumes" / "data"


def secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def test_a_pod_runs_with_its_env_volumes_and_downward_api(kube_api: KubeAPI, node: Node) -> None:
    kube_api.create(secret("creds", {"TOKEN": "s3cr3t", "bad name": "skipped"}))
    kube_api.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": NS},
                     "data": {"conf.yaml": "answer: 42\n", "other": "x"}})
    script = ('echo "$TOKEN|$(GREETING)|$INDEX|$POD|$LISTEN_ADDR|$HOME" > $OUT/env.txt; '
              "cat /etc/cfg/job.yaml > $OUT/cfg.txt; ls /etc/cfg > $OUT/ls.txt")
    kube_api.create(job("ok", script,
                        envFrom=[{"secretRef": {"name": "creds"}}],
                        env=[{"name": "GREETING", "value": "hi-$(TOKEN)"},
                             {"name": "HOME", "value": "/data/home"},
                             {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                             {"name": "INDEX", "valueFrom": {"fieldRef": {
                                 "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}}],
                        volumeMounts=[{"name": "cfg", "mountPath": "/etc/cfg", "readOnly": True}],
                        volumes=[{"name": "cfg", "configMap": {"name": "cfg",
                                                               "items": [{"key": "conf.yaml", "path": "job.yaml"}]}}]))
    body = wait_condition(kube_api, "ok", "Complete")
    assert body["status"]["succeeded"] == 1 and body["status"]["completionTime"]
    (pod,) = pods_of(kube_api, "ok")
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    assert pod["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"]
    out = data_dir(node, pod)
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    assert (out / "env.txt").read_text() == f"s3cr3t|hi-s3cr3t|0|{name}|{ip}|{out}/home\n"
    assert (out / "cfg.txt").read_text() == "answer: 42\n" and (out / "ls.txt").read_text() == "job.yaml\n"
    assert ip.startswith("127.") and ip != "127.0.0.1"


def test_a_missing_secret_keeps_the_pod_pending_until_it_exists(kube_api: KubeAPI, node: Node) -> None:
    kube_api.create(job("waits", 'echo "$TOKEN" > $OUT/token', envFrom=[{"secretRef": {"name": "later"}}]))

    def waiting() -> str | None:
        pods = pods_of(kube_api, "waits")
        statuses = (pods[0].get("status") or {}).get("containerStatuses") if pods else None
        return statuses[0]["state"].get("waiting", {}).get("reason") if statuses else None

    assert kube_api.wait_for(waiting, timeout=10) == "CreateContainerConfigError"
    assert pods_of(kube_api, "waits")[0]["status"]["phase"] == "Pending" and not node.started_pods
    kube_api.create(secret("later", {"TOKEN": "now"}))
    wait_condition(kube_api, "waits", "Complete")
    (pod,) = pods_of(kube_api, "waits")
    assert (data_dir(node, pod) / "token").read_text() == "now\n"


def test_a_failure_policy_fails_the_job_with_the_logs_as_termination_message(kube_api: KubeAPI, node: Node) -> None:
    kube_api.create(job("boom", "echo it broke; exit 3", podFailurePolicy={"rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "NotIn", "values": [0]}}]}))
    body = wait_condition(kube_api, "boom", "Failed")
    assert condition(body, "Failed")["reason"] == "PodFailurePolicy"
    (pod,) = pods_of(kube_api, "boom")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert pod["status"]["phase"] == "Failed" and terminated["exitCode"] == 3
    assert terminated["reason"] == "Error" and "it broke" in terminated["message"]


def test_failures_within_the_backoff_limit_get_a_new_pod(kube_api: KubeAPI, node: Node) -> None:
    kube_api.create(job("retry", "exit 1", backoffLimit=1))
    body = wait_condition(kube_api, "retry", "Failed")
    assert condition(body, "Failed")["reason"] == "BackoffLimitExceeded" and body["status"]["failed"] == 2
    assert len(pods_of(kube_api, "retry")) == 2


def test_deleting_the_job_sends_its_pod_sigterm(kube_api: KubeAPI, node: Node) -> None:
    script = 'trap "echo term > $OUT/term; exit 0" TERM; touch $OUT/up; while true; do sleep 0.05; done'
    kube_api.create(job("long", script))
    pod = kube_api.wait_for(lambda: next((p for p in pods_of(kube_api, "long")
                                          if (p.get("status") or {}).get("phase") == "Running"), None), timeout=10)
    out = data_dir(node, pod)
    kube_api.wait_for(lambda: (out / "up").exists(), timeout=10)
    kube_api.delete("batch/v1", "Job", NS, "long")  # the pod goes with it (owner references)
    kube_api.wait_for(lambda: (out / "term").exists(), timeout=10, message="SIGTERM reached the container")
    container = node.container(NS, pod["metadata"]["name"])
    assert container is not None
    assert container.process.wait(10) == 0


def test_expand_follows_kubernetes_rules() -> None:
    env = {"A": "1", "B": "two"}
    assert expand("$(A)-$(B)", env) == "1-two"
    assert expand("$(MISSING) stays", env) == "$(MISSING) stays"
    assert expand("$$(A) is escaped", env) == "$(A) is escaped"


def test_the_image_env_is_not_taken_for_a_mount_path(kube_api: KubeAPI, tmp_path: Path) -> None:
    """A venv that happens to live under a path the pod mounts (CI clones under /tmp; pods mount /tmp) stays on
    the image's PATH as it is; only what the pod spec sets is rewritten."""
    kube_api.ensure_namespace(NS)
    bin_dir = tmp_path / "image-bin"
    bin_dir.mkdir()
    tool = bin_dir / "hello-tool"
    tool.write_text('#!/bin/sh\necho "hello from the image" > "$OUT/hello.txt"\n')
    tool.chmod(0o755)
    mount = str(tmp_path)  # the pod mounts an emptyDir over the folder that holds the image's bin
    body = job("image-path", "hello-tool", volumeMounts=[{"name": "scratch", "mountPath": mount}],
               volumes=[{"name": "scratch", "emptyDir": {}}])
    with Node(kube_api, tmp_path / "node", image_env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, namespaces=(NS,),
              poll_seconds=0.05) as node:
        kube_api.create(body)
        wait_condition(kube_api, "image-path", "Complete")
        (pod,) = pods_of(kube_api, "image-path")
        assert (data_dir(node, pod) / "hello.txt").read_text() == "hello from the image\n"
