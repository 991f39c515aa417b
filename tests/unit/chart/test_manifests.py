"""Generated files stay generated: manifests/ from the chart, the chart's CRD from `ganops crd`, the values schema
from values.yaml. `make manifests` regenerates all three; these tests fail when any of them drifts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from scripts import chart

from ganops.api.crd import crd_yaml


def test_nothing_generated_has_drifted() -> None:
    stale = [str(path.relative_to(chart.ROOT)) for path in chart.stale_files()]
    assert stale == [], "run `make manifests` and commit the result"


def test_the_crd_is_the_one_ganops_crd_writes_in_both_places() -> None:
    generated = crd_yaml()
    assert chart.CRD_SOURCE.read_text() == generated
    assert chart.CRD_COPY.read_bytes() == chart.CRD_SOURCE.read_bytes()


def test_drift_is_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Edit a generated manifest, leave a stray file, change the CRD: each is reported."""
    manifests = tmp_path / "manifests"
    shutil.copytree(chart.MANIFESTS, manifests)
    crd_copy = tmp_path / "crd-copy.yaml"
    crd_copy.write_text(chart.CRD_COPY.read_text())
    schema = tmp_path / "values.schema.json"
    schema.write_text(chart.SCHEMA_FILE.read_text())
    monkeypatch.setattr(chart, "SCHEMA_FILE", schema)
    monkeypatch.setattr(chart, "MANIFESTS", manifests)
    monkeypatch.setattr(chart, "CRD_COPY", crd_copy)
    monkeypatch.setattr(chart, "CRD_SOURCE", manifests / "crd" / "ganops.io_gantrainingjobs.yaml")
    assert chart.stale_files() == []
    deployment = manifests / "operator" / "deployment.yaml"
    deployment.write_text(deployment.read_text().replace("replicas: 1", "replicas: 3"))
    (manifests / "serving" / "extra.yaml").write_text("kind: ConfigMap\n")
    crd_copy.write_text(crd_copy.read_text() + "# edited\n")
    assert sorted(p.name for p in chart.stale_files()) == ["crd-copy.yaml", "deployment.yaml", "extra.yaml"]
    written = chart.write()
    assert {p.name for p in written} >= {"crd-copy.yaml", "deployment.yaml", "extra.yaml"}
    assert chart.stale_files() == []


def test_plain_manifests_install_everything_kubectl_needs() -> None:
    docs = {}
    for path in sorted(chart.MANIFESTS.glob("*/*.yaml")):
        if path.parent.name in chart.GENERATED_DIRS:
            docs[path.relative_to(chart.MANIFESTS).as_posix()] = [d for d in yaml.safe_load_all(path.read_text()) if d]
    kinds = {f: sorted({d["kind"] for d in ds}) for f, ds in docs.items()}
    assert kinds["operator/rbac.yaml"] == ["ClusterRole", "ClusterRoleBinding", "Namespace", "ServiceAccount"]
    assert kinds["operator/deployment.yaml"] == ["Deployment", "Service"]
    assert kinds["operator/peering.yaml"] == ["ClusterKopfPeering", "CustomResourceDefinition"]
    assert kinds["serving/serving.yaml"] == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler",
                                             "PodDisruptionBudget", "Service", "ServiceAccount"]
    assert kinds["monitoring/monitors.yaml"] == ["PodMonitor", "PrometheusRule", "ServiceMonitor"]
    namespaced = [d for ds in docs.values() for d in ds if "namespace" in d["metadata"]]
    assert {d["metadata"]["namespace"] for d in namespaced} == {chart.NAMESPACE}
    assert all(d["metadata"].get("labels", {}).get("app.kubernetes.io/managed-by") != "Helm"
               for ds in docs.values() for d in ds)
    kustomization = yaml.safe_load((chart.MANIFESTS / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (chart.MANIFESTS / resource).is_file(), resource


def test_chart_file_copies_drift_is_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """charts/ganops/files/ are generated copies of dashboards/: an edited copy, a copy of a dashboard that no longer
    exists and a link instead of a copy are each reported, and `make manifests` rewrites them without ever writing
    through a link into dashboards/."""
    files = tmp_path / "files"
    shutil.copytree(chart.CHART_FILES, files)
    monkeypatch.setattr(chart, "CHART_FILES", files)

    def stale() -> set[str]:
        return {p.name for p in chart.stale_files() if files in p.parents}

    assert stale() == set()
    rules = files / "prometheus" / "rules.yaml"
    rules.write_text(rules.read_text() + "# edited\n")
    (files / "grafana" / "retired.json").write_text("{}")
    linked = files / "grafana" / "executive.json"
    source = chart.DASHBOARDS / "grafana" / "executive.json"
    before = source.read_bytes()
    linked.unlink()
    linked.symlink_to(source)
    assert stale() == {"rules.yaml", "retired.json", "executive.json"}
    chart.write()
    assert stale() == set()
    assert not linked.is_symlink() and linked.read_bytes() == source.read_bytes() == before
