"""What a cluster admin tripped over installing the chart as a new user would (issue 15), each rendered and checked:
serving's S3 credentials, the serving-client NetworkPolicy peer, a chart that survives packaging and copying, the
MLflow URI of the defaults and of docs/install.md."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml
from scripts import chart

from tests.support.controlplane.cluster import ControlPlaneUnavailable, find_binaries
from tests.unit.chart.chart_support import CHART, objects, one, render

INSTALL = chart.ROOT / "docs" / "install.md"


def _container(obj: dict[str, Any]) -> dict[str, Any]:
    (container,) = obj["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env") or []}


# ------------------------------------------------------------------------------------------------ serving's S3


def test_serving_gets_s3_credentials_by_default_and_the_docs_say_which() -> None:
    """Serving reads the promoted s3:// checkpoints: the defaults name a Secret for it (optional, for IRSA), and
    docs/install.md and the NOTES tell the admin to create it."""
    serving = _container(one(objects(), "Deployment", "serving"))
    refs = [ref["secretRef"] for ref in serving.get("envFrom") or []]
    assert {"name": "ganops-serving-s3", "optional": True} in refs
    docs = INSTALL.read_text()
    assert "create secret generic ganops-serving-s3" in docs
    notes = render()["ganops/templates/NOTES.txt"]
    assert "create secret generic ganops-serving-s3" in notes
    # Unset, serving gets no S3 Secret reference at all (file:// checkpoints, or credentials from the node).
    off = _container(one(objects({"serving": {"s3SecretName": ""}}), "Deployment", "serving"))
    assert all("ganops-serving-s3" not in str(ref) for ref in off.get("envFrom") or [])


def test_every_secret_the_defaults_name_is_in_the_install_guide() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    names = {values["operator"]["s3SecretName"], values["operator"]["mlflowSecretName"],
             values["trainer"]["s3SecretName"], values["trainer"]["mlflowSecretName"],
             values["serving"]["s3SecretName"], values["serving"]["apiKeys"]["secretName"]} - {""}
    docs = INSTALL.read_text()
    missing = sorted(n for n in names if f"create secret generic {n}" not in docs)
    assert missing == [], f"docs/install.md does not say how to create {missing}"


# ------------------------------------------------------------------------------------------------ NetworkPolicy


def _selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A label selector (matchLabels and matchExpressions In/NotIn/Exists/DoesNotExist) against labels."""
    if selector is None:
        return True
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, vals = expr["key"], expr["operator"], expr.get("values") or []
        ok = {"In": labels.get(key) in vals, "NotIn": labels.get(key) not in vals, "Exists": key in labels,
              "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def admitted(policy: dict[str, Any], namespace: str, namespace_labels: dict[str, str],
             pod_labels: dict[str, str], port: int) -> bool:
    """Whether an ingress rule of `policy` admits a pod, as the NetworkPolicy API defines peers: a peer without a
    namespaceSelector means the policy's own namespace; an empty selector matches everything."""
    for rule in policy["spec"].get("ingress") or []:
        if rule.get("ports") and all(p.get("port") != port for p in rule["ports"]):
            continue
        for peer in rule.get("from") or []:
            if "ipBlock" in peer:
                continue
            ns_selector = peer.get("namespaceSelector")
            in_namespace = namespace == policy["metadata"]["namespace"] if ns_selector is None else \
                _selects(ns_selector, namespace_labels)
            if in_namespace and _selects(peer.get("podSelector"), pod_labels):
                return True
    return False


@pytest.mark.parametrize(("namespace", "labels", "expected"), [
    ("team-a", {"ganops.io/serving-client": "true"}, True),  # the docs: any labelled pod
    ("ganops-system", {"ganops.io/serving-client": "true"}, True),
    ("team-a", {}, False),
    ("ingress-nginx", {}, True),
])
def test_labelled_serving_clients_are_admitted_from_any_namespace(namespace: str, labels: dict[str, str],
                                                                  expected: bool) -> None:
    policy = one(objects(), "NetworkPolicy", "serving")
    port = _container(one(objects(), "Deployment", "serving"))["ports"][0]["containerPort"]
    ns_labels = {"kubernetes.io/metadata.name": namespace}
    assert admitted(policy, namespace, ns_labels, labels, port) is expected


# ------------------------------------------------------------------------------------------------ packaging


def _rendered_objects(chart_dir: Path | str) -> list[Any]:
    values = {"monitoring": {"forceEnable": True}}
    with helm_python.Chart.load(chart_dir) as loaded:
        rendered = loaded.render(values, name="ganops", namespace="ganops-system")
    return [doc for _, doc in chart.documents(rendered)]


def test_the_chart_directory_has_no_links() -> None:
    links = [str(p.relative_to(CHART)) for p in CHART.rglob("*") if p.is_symlink()]
    assert links == [], "a copied or fetched chart directory would lose what these point to"


def test_a_packaged_or_copied_chart_renders_the_same_objects(tmp_path: Path) -> None:
    """`helm package` (Helm's own packager, through helm-python-sdk), unpacked elsewhere, and a plain copy of the
    chart directory both render exactly the objects of the chart in the repository, dashboards included."""
    expected = _rendered_objects(CHART)
    dashboards = [o for o in expected if o["kind"] == "ConfigMap"
                  and o["metadata"]["labels"].get("app.kubernetes.io/component") == "dashboards"]
    assert len(dashboards) == len(list((chart.ROOT / "dashboards" / "grafana").glob("*.json"))) > 0
    archive = Path(helm_python.package(CHART, destination=tmp_path / "dist"))
    assert re.fullmatch(r"ganops-\d+\.\d+\.\d+\.tgz", archive.name)
    unpacked = tmp_path / "unpacked"
    with tarfile.open(archive) as tar:
        assert not any(m.issym() or m.islnk() for m in tar.getmembers())
        tar.extractall(unpacked, filter="data")
    copied = tmp_path / "copied" / "ganops"
    shutil.copytree(CHART, copied, symlinks=True)  # what `cp -a` or a GitOps checkout of the folder does
    assert _rendered_objects(unpacked / "ganops") == expected
    assert _rendered_objects(copied) == expected


def _helm() -> str:
    """The real helm CLI that `make controlplane` builds (tools/controlplane: helm v4 from its Go module)."""
    try:
        return find_binaries()["helm"]
    except ControlPlaneUnavailable as exc:
        if os.environ.get("GANOPS_CONTROLPLANE") == "required":
            pytest.fail(f"GANOPS_CONTROLPLANE=required, but helm is not built: {exc}")
        pytest.skip(reason=f"the helm CLI is not built: {exc}")


def _helm_template(helm: str, chart_path: Path) -> list[Any]:
    result = subprocess.run([helm, "template", "ganops", str(chart_path), "--namespace", "ganops-system",
                             "--set", "monitoring.forceEnable=true"],
                            capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    return sorted((doc for doc in yaml.safe_load_all(result.stdout) if doc),
                  key=lambda o: (o["kind"], o["metadata"]["name"]))


def test_helm_package_unpacked_elsewhere_renders_the_same_objects(tmp_path: Path) -> None:
    """The issue's words with the helm CLI itself: `helm package charts/ganops`, the archive unpacked in another
    directory, and a plain copy of the chart folder: `helm template` of each gives the objects of the chart in the
    repository (the dashboards' ConfigMaps included). helm package follows links, a copy keeps them dangling."""
    helm = _helm()
    packaged = subprocess.run([helm, "package", str(CHART), "--destination", str(tmp_path / "dist")],
                              capture_output=True, text=True, check=False, timeout=120)
    assert packaged.returncode == 0, packaged.stderr
    (archive,) = (tmp_path / "dist").glob("ganops-*.tgz")
    elsewhere = tmp_path / "elsewhere"
    with tarfile.open(archive) as tar:
        tar.extractall(elsewhere, filter="data")
    copied = tmp_path / "copied" / "ganops"
    shutil.copytree(CHART, copied, symlinks=True)  # `cp -a` or a GitOps checkout of the folder alone
    in_repo = _helm_template(helm, CHART)
    assert _helm_template(helm, elsewhere / "ganops") == in_repo
    assert _helm_template(helm, copied) == in_repo
    dashboards = [o for o in in_repo if o["kind"] == "ConfigMap"
                  and o["metadata"]["labels"].get("app.kubernetes.io/component") == "dashboards"]
    assert len(dashboards) == len(list((chart.ROOT / "dashboards" / "grafana").glob("*.json"))) > 0
    assert all(any(value.strip() for value in (o.get("data") or {}).values()) for o in dashboards)


# ------------------------------------------------------------------------------------------------ MLflow URI


def test_the_install_guide_uses_the_default_mlflow_uri() -> None:
    default = yaml.safe_load((CHART / "values.yaml").read_text())["mlflow"]["uri"]
    documented = re.findall(r"--set mlflow\.uri=(\S+)", INSTALL.read_text())
    assert documented == [default], (documented, default)
    operator = _env(_container(one(objects(), "Deployment", "operator")))
    serving = _env(_container(one(objects(), "Deployment", "serving")))
    assert operator["GANOPS_MLFLOW_URI"] == serving["MLFLOW_TRACKING_URI"] == default
