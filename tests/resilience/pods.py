"""Play the node for a Job the operator created: run its pod's container as a local process, with the command and
the environment of the rendered pod template (the job file comes from the `<job>-spec` ConfigMap, the Secret's
S3 credentials from the test), so what starts the trainer is what the operator rendered."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from tests.resilience.trainer_proc import BIN, TrainerProcess
from tests.support.kube import KubeAPI

JOB_FILE = "/etc/ganops/job.yaml"


def run_job_pod(kube: KubeAPI, namespace: str, job_name: str, scratch: Path,
                secret_env: Mapping[str, str]) -> TrainerProcess:
    job = kube.get("batch/v1", "Job", namespace, job_name)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    configmap = kube.get("v1", "ConfigMap", namespace, f"{job_name}-spec")
    scratch.mkdir(parents=True, exist_ok=True)
    job_file = scratch / "job.yaml"
    job_file.write_text(configmap["data"]["job.yaml"])
    command = [str(BIN / part) if i == 0 and part in ("ganops", "torchrun") else part.replace(JOB_FILE, str(job_file))
               for i, part in enumerate(container["command"])]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    env.update(GANOPS_WORK_DIR=str(scratch / "work"), HOME=str(scratch / "home"), XDG_CACHE_HOME=str(scratch / "cache"),
               GANOPS_METRICS_PORT="0", OMP_NUM_THREADS="1", **secret_env)
    return TrainerProcess(job_file, scratch / "work", env, command=command)
