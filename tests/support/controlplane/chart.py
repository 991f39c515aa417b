"""The Helm chart (charts/ganops) installed with the real `helm` into the real API server.

    release = helm_install(cp, "ganops", "ganops-system", {"serving": {"enabled": False}})
    release.objects                      # what helm created, as the API server stored it
    release.operator_service_account     # the chart's operator ServiceAccount (for identity.service_account_client)

The release namespace is created beforehand with `pod-security.kubernetes.io/enforce=restricted` (as
`manifests/` and a cluster admin would label it): the API server's PodSecurity admission then judges every pod the
chart's Deployments produce, and refuses any below `restricted`. Nothing runs the chart's images here: the pods are
admitted, then wait for a node (`PENDING_NODE_SELECTOR` matches no node), and the tests run the operator from this
checkout with the chart's ServiceAccount token instead (a kubeconfig built by `identity.py`).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from .cluster import ControlPlane

CHART = Path(__file__).resolve().parents[3] / "charts" / "ganops"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}
# The chart's pods are created (and admitted) but never scheduled: no node carries this label, so the test node does
# not try to run the operator and serving images as local processes.
PENDING_NODE_SELECTOR = {"ganops.io/test-pool": "chart-images-not-run-here"}


class HelmError(AssertionError):
    """helm failed (its output is the message)."""


@dataclass
class Release:
    """An installed release: its name and namespace, the values given, helm's output and the objects it created."""

    name: str
    namespace: str
    values: dict[str, Any]
    warnings: str  # helm install's stderr: where it passes the API server's warnings on (PodSecurity's among them)
    manifest: list[dict[str, Any]] = field(default_factory=list)

    @property
    def fullname(self) -> str:
        """The chart's `ganops.fullname`: the release name when it contains "ganops", else `<release>-ganops`."""
        override = self.values.get("fullnameOverride")
        if override:
            return str(override)
        return self.name if "ganops" in self.name else f"{self.name}-ganops"

    @property
    def operator_service_account(self) -> str:
        named = ((self.values.get("operator") or {}).get("serviceAccount") or {}).get("name")
        return str(named or f"{self.fullname}-operator")

    def kinds(self) -> list[tuple[str, str, str | None]]:
        """(kind, name, namespace) of every object in the release's manifest."""
        return [(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in self.manifest]


def helm(cp: ControlPlane, *args: str, timeout: float = 120.0,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    """The real helm with the admin kubeconfig; its cache and config in the control plane's directory."""
    home = cp.root / "helm"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "HELM_CACHE_HOME": str(home / "cache"),
           "HELM_CONFIG_HOME": str(home / "config"), "HELM_DATA_HOME": str(home / "data")}
    command = [cp.binaries["helm"], f"--kubeconfig={cp.admin_kubeconfig}", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, env=env)
    if check and result.returncode != 0:
        raise HelmError(f"helm {' '.join(args)} exited {result.returncode}:\n{result.stderr}{result.stdout}")
    return result


def values_for_tests(**overrides: Any) -> dict[str, Any]:
    """Values for a test install: the chart's pods wait for a node that never comes (see the module doc)."""
    values: dict[str, Any] = {
        "operator": {"nodeSelector": PENDING_NODE_SELECTOR},
        "serving": {"nodeSelector": PENDING_NODE_SELECTOR},
    }
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return values


def helm_install(cp: ControlPlane, name: str, namespace: str, values: Mapping[str, Any], *,
                 chart: Path = CHART, namespace_labels: Mapping[str, str] = RESTRICTED) -> Release:
    """`helm install <name> <chart> -n <namespace> -f values.yaml` into a namespace created first with
    `namespace_labels` (PodSecurity restricted). Returns once helm has created everything (not `--wait`: the
    chart's pods are not meant to run here)."""
    cp.ensure_namespace(namespace, namespace_labels)
    values_file = cp.root / f"helm-values-{name}.yaml"
    values_file.write_text(yaml.safe_dump(dict(values)))
    installed = helm(cp, "install", name, str(chart), "--namespace", namespace, "--values", str(values_file),
                     "--output", "json")
    answer = json.loads(installed.stdout)
    assert answer["info"]["status"] == "deployed", answer["info"]
    return Release(name, namespace, dict(values), installed.stderr,
                   [doc for doc in yaml.safe_load_all(answer.get("manifest", "")) if doc])


def helm_uninstall(cp: ControlPlane, release: Release) -> None:
    helm(cp, "uninstall", release.name, "--namespace", release.namespace, "--wait=false", check=False)
