"""The Helm chart's generated parts, and the plain manifests generated from the chart.

    python -m scripts.chart            # write: values.schema.json, README.md, the chart's CRD copy, manifests/
    python -m scripts.chart --check    # exit 1 and name every file that differs from what would be written

* ``charts/ganops/values.schema.json`` is derived from ``values.yaml``: types from the defaults, descriptions from
  the helm-docs ``# --`` comments, ``additionalProperties: false`` on every object with named keys, and the
  constraints in :data:`CONSTRAINTS`. ``serving.config`` takes its schema from the serving settings (pydantic).
* ``charts/ganops/README.md``: the values table (helm-docs style) from the same comments.
* ``charts/ganops/crds/ganops.io_gantrainingjobs.yaml`` is a byte copy of ``manifests/crd/…`` (``ganops crd``).
* ``manifests/operator``, ``manifests/serving``, ``manifests/monitoring`` are the chart rendered with
  :data:`MANIFEST_VALUES` into namespace ``ganops-system``, one file per concern, plus a ``kustomization.yaml``.
* ``charts/ganops/files/``: byte copies of the Grafana dashboards and the Prometheus rules of ``dashboards/``, so
  that the chart directory is self-contained: ``helm package``, a copied chart directory and GitOps tools that
  fetch only ``charts/ganops`` all carry them (symbolic links into ``dashboards/`` did not survive a copy).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "ganops"
MANIFESTS = ROOT / "manifests"
CRD_SOURCE = MANIFESTS / "crd" / "ganops.io_gantrainingjobs.yaml"
CRD_COPY = CHART / "crds" / "ganops.io_gantrainingjobs.yaml"
SCHEMA_FILE = CHART / "values.schema.json"
README_FILE = CHART / "README.md"
RELEASE = "ganops"
NAMESPACE = "ganops-system"
# The Kubernetes version the chart is rendered and validated for (kubernetes-validate's schemas).
KUBE_VERSION = "1.31.0"

# What `kubectl apply -f manifests/…` installs: the chart's defaults, its own namespace, monitors included.
MANIFEST_VALUES: dict[str, Any] = {"createNamespace": True, "monitoring": {"forceEnable": True}}

# Rendered template → manifests/ file. A template missing here fails generation (and so the drift test).
MANIFEST_FILES: dict[str, str] = {
    "namespace.yaml": "operator/rbac.yaml",
    "operator-serviceaccount.yaml": "operator/rbac.yaml",
    "operator-rbac.yaml": "operator/rbac.yaml",
    "operator-deployment.yaml": "operator/deployment.yaml",
    "operator-peering.yaml": "operator/peering.yaml",
    "networkpolicy.yaml": "operator/networkpolicy.yaml",
    "serving-configmap.yaml": "serving/serving.yaml",
    "serving-deployment.yaml": "serving/serving.yaml",
    "serving-service.yaml": "serving/serving.yaml",
    "monitoring.yaml": "monitoring/monitors.yaml",
    "dashboards.yaml": "monitoring/dashboards.yaml",
}
# Files under manifests/ that `make manifests` owns (examples/ and crd/ are not the chart's).
GENERATED_DIRS = ("operator", "serving", "monitoring")
# The chart's copies of what dashboards/ owns (the chart reads them with .Files).
DASHBOARDS = ROOT / "dashboards"
CHART_FILES = CHART / "files"


def chart_file_sources() -> dict[Path, Path]:
    """charts/ganops/files/<path> → dashboards/<path>: the dashboards' JSON models and the rules file."""
    sources = [*sorted((DASHBOARDS / "grafana").glob("*.json")), DASHBOARDS / "prometheus" / "rules.yaml"]
    return {CHART_FILES / source.relative_to(DASHBOARDS): source for source in sources}

_DNS1123 = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
_PULL = ["Always", "IfNotPresent", "Never"]
_DURATION = {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h))+$"}
_DIGEST = {"type": "string", "pattern": r"^(sha256:[a-f0-9]{64})?$"}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_SELECTOR = {
    "type": "object",
    "properties": {
        "matchLabels": _STRING_MAP,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["key", "operator"],
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}
_PEER = {
    "type": "object",
    "properties": {
        "ipBlock": {
            "type": "object",
            "properties": {"cidr": {"type": "string"}, "except": {"type": "array", "items": {"type": "string"}}},
            "required": ["cidr"],
            "additionalProperties": False,
        },
        "namespaceSelector": _SELECTOR,
        "podSelector": _SELECTOR,
    },
    "additionalProperties": False,
}
_PEERS = {"type": "array", "items": _PEER}
_PORTS = {"type": "array", "items": _PORT, "minItems": 1}
_QUANTITY = {"type": ["string", "number"]}
_RESOURCES = {
    "type": "object",
    "properties": {
        "requests": {"type": "object", "additionalProperties": _QUANTITY},
        "limits": {"type": "object", "additionalProperties": _QUANTITY},
    },
    "additionalProperties": False,
}
_ENV = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_.-]*$"},
            "value": {"type": "string"},
            "valueFrom": {"type": "object", "x-ganops-opaque": "core/v1 EnvVarSource"},
        },
        "required": ["name"],
        "additionalProperties": False,
    },
}
# Kubernetes structures the chart passes through verbatim: checked by kubernetes-validate once rendered.
_OPAQUE_ITEMS = {"type": "array", "items": {"type": "object", "x-ganops-opaque": "a Kubernetes object"}}
_AFFINITY = {
    "type": "object",
    "properties": {
        kind: {"type": "object", "x-ganops-opaque": f"core/v1 {kind[0].upper()}{kind[1:]}"}
        for kind in ("nodeAffinity", "podAffinity", "podAntiAffinity")
    },
    "additionalProperties": False,
}
_PROBE = {"type": "integer", "minimum": 0}

# Constraints beyond "the type of the default", by dotted path; "*" matches one key.
CONSTRAINTS: dict[str, dict[str, Any]] = {
    "commonLabels": _STRING_MAP,
    "imagePullSecrets": {
        "type": "array",
        "items": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"],
                  "additionalProperties": False},
    },
    "*.image.registry": {"type": "string"},
    "*.image.repository": {"type": "string", "minLength": 1},
    "*.image.digest": _DIGEST,
    "operator.image.pullPolicy": {"enum": _PULL},
    "serving.image.pullPolicy": {"enum": _PULL},
    "trainer.image.pullPolicy": {"enum": ["", *_PULL]},
    "operator.replicas": {"minimum": 1, "maximum": 100},
    "operator.watchNamespaces": {"type": "array", "items": {"type": "string", "pattern": _DNS1123, "maxLength": 63},
                                 "uniqueItems": True},
    "operator.resyncSeconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
    "operator.workers": {"minimum": 1, "maximum": 256},
    "operator.postingLevel": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]},
    "operator.logFormat": {"enum": ["plain", "full", "json"]},
    "operator.metricsPort": _PORT,
    "operator.livenessPort": _PORT,
    "*.livenessProbe.*": _PROBE,
    "*.readinessProbe.*": _PROBE,
    "*.startupProbe.*": _PROBE,
    "*.extraEnv": _ENV,
    "*.resources": _RESOURCES,
    "*.serviceAccount.annotations": _STRING_MAP,
    "*.podAnnotations": _STRING_MAP,
    "*.podLabels": _STRING_MAP,
    "*.nodeSelector": _STRING_MAP,
    "*.tolerations": _OPAQUE_ITEMS,
    "*.affinity": _AFFINITY,
    "serving.topologySpreadConstraints": _OPAQUE_ITEMS,
    "serving.server.limitConcurrency": {"minimum": 1, "maximum": 100000},
    "serving.server.maxHeaderBytes": {"minimum": 1024, "maximum": 1048576},
    "serving.server.headerTimeoutSeconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 300},
    "serving.server.bodyTimeoutSeconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 600},
    "serving.server.keepAliveTimeoutSeconds": {"minimum": 1, "maximum": 300},
    "serving.trustedProxies": {"type": "array", "items": {"type": "string", "minLength": 1}, "uniqueItems": True},
    "trainer.checkpointUri": {"pattern": r"^(s3|file)://"},
    "trainer.terminationGraceSeconds": {"minimum": 1, "maximum": 86400},
    "trainer.metricsPort": _PORT,
    "trainer.rendezvousPort": _PORT,
    "trainer.spotNodeLabel": {"pattern": r"^([^=]+=.*)?$"},
    "trainer.spotToleration": {"pattern": r"^([^=:]+(=[^:]*)?(:(NoSchedule|PreferNoSchedule|NoExecute))?)?$"},
    "trainer.budgetWarningFraction": {"type": "number", "minimum": 0, "maximum": 1},
    "trainer.priceTable": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0}},
    "serving.model": {"pattern": r"^([^@]+(@[^@]+)?)?$"},
    "serving.canary.percent": {"type": "number", "minimum": 0, "maximum": 100},
    "serving.replicas": {"minimum": 1},
    "serving.port": _PORT,
    "serving.pollIntervalSeconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400},
    "serving.auditUri": {"pattern": r"^((s3|file)://.*)?$"},
    "serving.shutdownTimeoutSeconds": {"minimum": 0, "maximum": 3600},
    "serving.preStopSleepSeconds": {"minimum": 0, "maximum": 300},
    "serving.service.type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
    "serving.service.port": _PORT,
    "serving.service.annotations": _STRING_MAP,
    "serving.ingress.annotations": _STRING_MAP,
    "serving.ingress.hosts": {"minItems": 1},
    "serving.ingress.hosts[].paths[].pathType": {"enum": ["Prefix", "Exact", "ImplementationSpecific"]},
    "serving.ingress.tls": {
        "type": "array",
        "items": {"type": "object",
                  "properties": {"secretName": {"type": "string"},
                                 "hosts": {"type": "array", "items": {"type": "string"}}},
                  "additionalProperties": False},
    },
    "serving.autoscaling.minReplicas": {"minimum": 1},
    "serving.autoscaling.maxReplicas": {"minimum": 1},
    "serving.autoscaling.targetCPUUtilizationPercentage": {"minimum": 1, "maximum": 100},
    "serving.podDisruptionBudget.minAvailable": {"type": ["integer", "string"]},
    "monitoring.additionalLabels": _STRING_MAP,
    "monitoring.interval": _DURATION,
    "monitoring.scrapeTimeout": _DURATION,
    "monitoring.dashboards.label": {"minLength": 1},
    "monitoring.dashboards.folderAnnotation": {"minLength": 1},
    "networkPolicy.monitoringNamespaceSelector": _SELECTOR,
    "networkPolicy.servingClients": _PEERS,
    "networkPolicy.*.to": _PEERS,
    "networkPolicy.*.ports": _PORTS,
    "networkPolicy.objectStore.ports": {"type": "array", "items": _PORT},
    "networkPolicy.mlflow.ports": {"type": "array", "items": _PORT},
    "networkPolicy.*.podSelector": _SELECTOR,
    "operator.policy.allowedMlflowUris": {"type": "array", "items": {"type": "string", "pattern": r"^https?://[^@?#]+$"},
                                          "uniqueItems": True},
    "operator.policy.allowedCheckpointUris": {"type": "array", "items": {
        "type": "string", "pattern": r"^(s3|file)://[^?#]*$"}, "uniqueItems": True},
    "operator.policy.allowedImages": {"type": "array", "items": {"type": "string", "minLength": 1,
                                                                 "pattern": r"^[^,\s]+$"}, "uniqueItems": True},
    "operator.policy.allowedPriorityClasses": {"type": "array", "items": {"type": "string", "pattern": r"^[^,\s]+$"},
                                               "uniqueItems": True},
    "operator.policy.allowedNodeSelectors": {"type": "array", "items": {
        "type": "string", "pattern": r"^[^,=\s]+(=[^,\s]*)?$"}, "uniqueItems": True},
    "operator.policy.allowedTolerations": {"type": "array", "items": {
        "type": "string", "pattern": r"^(\*|[^,=:\s]+(=[^,:\s]*)?(:(NoSchedule|PreferNoSchedule|NoExecute))?)$"},
        "uniqueItems": True},
    "operator.policy.minGates": {"type": "object", "properties": {
        "maxFID": {"type": "number", "minimum": 0}, "minRecall": {"type": "number", "minimum": 0, "maximum": 1},
        "minModes": {"type": "integer", "minimum": 0}, "minHighQuality": {"type": "number", "minimum": 0, "maximum": 1},
        "maxSafetyBlockRate": {"type": "number", "minimum": 0, "maximum": 1}}, "additionalProperties": False},
    "networkPolicy.extraEgress": {
        "type": "array",
        "items": {"type": "object", "properties": {"to": _PEERS, "ports": {"type": "array", "items": {
            "type": "object", "properties": {"protocol": {"enum": ["TCP", "UDP", "SCTP"]}, "port": _PORT,
                                             "endPort": _PORT},
            "additionalProperties": False}}}, "additionalProperties": False},
    },
    "podSecurityContext.runAsNonRoot": {"const": True},
    "podSecurityContext.runAsUser": {"minimum": 1},
    "podSecurityContext.seccompProfile.type": {"enum": ["RuntimeDefault", "Localhost"]},
    "containerSecurityContext.allowPrivilegeEscalation": {"const": False},
    "containerSecurityContext.runAsNonRoot": {"const": True},
    "containerSecurityContext.capabilities.drop": {"contains": {"const": "ALL"}},
    "containerSecurityContext.seccompProfile.type": {"enum": ["RuntimeDefault", "Localhost"]},
}

# Keys of the serving settings a values file may set under serving.config (the rest come from other values).
SERVING_CONFIG_KEYS = ("ema", "log_level", "access_log", "torch_threads", "device", "batching", "limits", "safety",
                       "jpeg_quality", "cors_origins")


# ------------------------------------------------------------------------------------------------ values.schema
def value_comments(text: str) -> dict[str, str]:
    """helm-docs descriptions: the `# --` comment block (and its `#` continuation lines) above each key."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# -- ") or stripped == "# --":
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if pending is not None:
                pending.append(stripped[1:].strip())
            continue
        m = re.match(r"^(\s*)([A-Za-z0-9_]+):", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group(2)))
        if pending is not None:
            out[".".join(key for _, key in stack)] = " ".join(pending)
            pending = None
    return out


def _matches(pattern: str, path: str) -> bool:
    want, got = pattern.split("."), path.split(".")
    return len(want) == len(got) and all(w in ("*", g) for w, g in zip(want, got, strict=True))


def _constraint(path: str) -> dict[str, Any] | None:
    exact = CONSTRAINTS.get(path)
    if exact is not None:
        return exact
    for pattern, schema in CONSTRAINTS.items():
        if "*" in pattern and _matches(pattern, path):
            return schema
    return None


def _infer(value: Any, path: str, docs: dict[str, str]) -> dict[str, Any]:
    given = _constraint(path)
    if given is not None and ("properties" in given or "additionalProperties" in given or "items" in given):
        schema = copy.deepcopy(given)  # a complete schema for this key
    elif isinstance(value, dict):
        if not value:
            raise ValueError(f"values.yaml: {path} is an empty map: give it a schema in CONSTRAINTS")
        schema = {
            "type": "object",
            "properties": {key: _infer(sub, f"{path}.{key}" if path else key, docs) for key, sub in value.items()},
            "additionalProperties": False,
        }
    elif isinstance(value, list):
        if not value:
            raise ValueError(f"values.yaml: {path} is an empty list: give it a schema in CONSTRAINTS")
        schema = {"type": "array", "items": _infer(value[0], f"{path}[]", docs)}
    elif isinstance(value, bool):
        schema = {"type": "boolean"}
    elif isinstance(value, int):
        schema = {"type": "integer"}
    elif isinstance(value, float):
        schema = {"type": "number"}
    elif isinstance(value, str):
        schema = {"type": "string"}
    else:
        raise ValueError(f"values.yaml: {path} has a value of unsupported type {type(value).__name__}")
    if given is not None and schema is not given:
        for key, sub in given.items():
            schema[key] = copy.deepcopy(sub)
    if "enum" in schema or "const" in schema:
        schema.pop("type", None)
    if path in docs:
        schema["description"] = docs[path]
    return schema


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline_refs(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        return {key: _inline_refs(sub, defs) for key, sub in node.items() if key != "title"}
    if isinstance(node, list):
        return [_inline_refs(sub, defs) for sub in node]
    return node


def serving_config_schema() -> dict[str, Any]:
    """The part of the serving settings a values file may set, as JSON schema (extra keys forbidden)."""
    from ganops.serving.settings import ServingSettings

    full = ServingSettings.model_json_schema()
    props = {key: _inline_refs(full["properties"][key], full.get("$defs", {})) for key in SERVING_CONFIG_KEYS}
    # Secrets never go into a ConfigMap: the watermark key comes from serving.watermarkKey (a Secret).
    props["safety"]["properties"].pop("watermark_key", None)
    props["safety"]["properties"].pop("watermark_key_file", None)
    return {"type": "object", "properties": props, "additionalProperties": False}


def values_schema() -> dict[str, Any]:
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    docs = value_comments(text)
    config = values["serving"].pop("config")
    schema = _infer(values, "", docs)
    serving_config = serving_config_schema()
    serving_config["description"] = docs["serving.config"]
    assert config == {}, "serving.config's default must stay empty"
    schema["properties"]["serving"]["properties"]["config"] = serving_config
    return {"$schema": "http://json-schema.org/draft-07/schema#", "title": "ganops chart values", **schema}


def schema_text() -> str:
    return json.dumps(values_schema(), indent=2, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------------------------------------------ README
_README_HEAD = """# ganops Helm chart

<!-- Generated by `make manifests` (scripts/chart.py) from Chart.yaml and the `# --` comments of values.yaml. -->

{description}

Chart version {version}, app version {app_version}, Kubernetes {kube_version}. Installation, the first job, the
dashboards, upgrades and removal: [docs/install.md](../../docs/install.md).

```sh
helm install ganops charts/ganops --namespace ganops-system --create-namespace
```

The CRDs are in `crds/` (Helm installs them once and never upgrades or deletes them: see docs/install.md).
Values files for the common set-ups are in `ci/`.

## Values

| Key | Type | Default | Description |
|-----|------|---------|-------------|
"""


def _schema_at(schema: dict[str, Any], path: str) -> dict[str, Any]:
    node = schema
    for key in path.split("."):
        node = node["properties"][key]
    return node


def _type_name(node: dict[str, Any]) -> str:
    if "enum" in node:
        return " \\| ".join(json.dumps(v) for v in node["enum"])
    if "const" in node:
        return json.dumps(node["const"])
    kind = node.get("type", "object")
    return " or ".join(kind) if isinstance(kind, list) else str(kind)


def readme_text() -> str:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    text = (CHART / "values.yaml").read_text()
    values, docs, schema = yaml.safe_load(text), value_comments(text), values_schema()
    rows = []
    for path, description in docs.items():
        node: Any = values
        for key in path.split("."):
            node = node[key]
        default = json.dumps(node, separators=(",", ":")).replace("|", "\\|")
        rows.append(f"| `{path}` | {_type_name(_schema_at(schema, path))} | `{default}` | "
                    f"{description.replace('|', chr(92) + '|')} |")
    head = _README_HEAD.format(description=" ".join(meta["description"].split()), version=meta["version"],
                               app_version=meta["appVersion"], kube_version=meta["kubeVersion"])
    return head + "\n".join(rows) + "\n"


# --------------------------------------------------------------------------------------------------- rendering
def render(values: dict[str, Any] | None = None, *, api_versions: list[str] | None = None,
           name: str = RELEASE, namespace: str = NAMESPACE) -> dict[str, str]:
    """Render the chart with Helm's engine (helm-python-sdk). `api_versions` play the cluster's discovery
    (`.Capabilities.APIVersions`); the Kubernetes version is :data:`KUBE_VERSION`.

    The public ``Chart.render`` exposes neither option; the C library's render call accepts both, so this calls
    it the way ``Chart.render`` does, adding them.
    """
    import helm_python
    from helm_python import _native

    opts: dict[str, Any] = {"name": name, "namespace": namespace, "kube_version": f"v{KUBE_VERSION}",
                            "is_install": True}
    if api_versions:
        opts["api_versions"] = api_versions
    with helm_python.Chart.load(CHART) as chart:
        chart.validate_schema(values or {})
        raw = _native.call_string("helm_render", chart._raw(), json.dumps(values or {}), json.dumps(opts))
    rendered: dict[str, str] = json.loads(raw)
    return rendered


def documents(rendered: dict[str, str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(template file name, object) for every object rendered, NOTES.txt excluded."""
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.load_all(rendered[path], Loader=_LOADER):
            if doc:
                yield path.rsplit("/", 1)[-1], doc


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: the dashboards are big strings

_HEADER = ("# Generated from charts/ganops by `make manifests` (release {release}, namespace {namespace}, "
           "values: {values}).\n# Do not edit: change the chart and regenerate; tests/unit/chart/test_manifests.py "
           "fails on drift.\n")


def _chunks(text: str) -> list[str]:
    """The non-empty YAML documents of a rendered template, trailing spaces removed, in order."""
    body = "\n".join(line.rstrip() for line in text.splitlines()).strip("\n")
    chunks = [chunk.strip("\n") for chunk in re.split(r"^---\s*$", body, flags=re.M)]
    # Plain manifests are applied with kubectl, not Helm: say so in the managed-by label.
    return [chunk.replace("app.kubernetes.io/managed-by: Helm", "app.kubernetes.io/managed-by: kubectl")
            for chunk in chunks if yaml.safe_load(chunk)]


def manifest_texts() -> dict[str, str]:
    """manifests/<dir>/<file> → text, from the chart rendered with MANIFEST_VALUES."""
    rendered = render(MANIFEST_VALUES)
    parts: dict[str, list[str]] = {}
    for path in sorted(rendered):
        template = path.rsplit("/", 1)[-1]
        if template == "NOTES.txt":
            continue
        if template not in MANIFEST_FILES:
            raise KeyError(f"template {template} has no manifests/ file: add it to MANIFEST_FILES")
        parts.setdefault(MANIFEST_FILES[template], []).extend(_chunks(rendered[path]))
    # Peering is for more than one replica: its CRDs (Helm installs them from crds/) and the chart's peering object
    # as rendered for two replicas.
    two = render({**MANIFEST_VALUES, "operator": {"replicas": 2}})
    peering_object = _chunks(next(text for path, text in two.items() if path.endswith("/operator-peering.yaml")))
    parts["operator/peering.yaml"] = [(CHART / "crds" / "kopf.dev_peerings.yaml").read_text().strip("\n"),
                                      *peering_object]
    header = _HEADER.format(release=RELEASE, namespace=NAMESPACE, values=json.dumps(MANIFEST_VALUES))
    out = {target: header + "---\n" + "\n---\n".join(chunks) + "\n"
           for target, chunks in sorted(parts.items()) if chunks}
    out["operator/peering.yaml"] = out["operator/peering.yaml"].replace(
        header, header + "# Only for operator.replicas > 1 (set GANOPS_OPERATOR_REPLICAS and the Deployment's "
        "replicas too).\n", 1)
    core = ["crd/ganops.io_gantrainingjobs.yaml"] + [
        name for name in sorted(out) if name not in ("operator/peering.yaml", "monitoring/monitors.yaml")
    ]
    out["kustomization.yaml"] = (
        header + "# monitoring/monitors.yaml (ServiceMonitors, PodMonitor, PrometheusRule) needs the "
        "prometheus-operator CRDs:\n"
        "# add it to resources where they exist. operator/peering.yaml is for more than one operator replica.\n"
        + yaml.safe_dump({"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                          "resources": core}, sort_keys=False)
    )
    return out


# ------------------------------------------------------------------------------------------------ write / check
def expected_files() -> dict[Path, str]:
    files = {SCHEMA_FILE: schema_text(), README_FILE: readme_text(), CRD_COPY: CRD_SOURCE.read_text()}
    files.update({target: source.read_text() for target, source in chart_file_sources().items()})
    files.update({MANIFESTS / name: text for name, text in manifest_texts().items()})
    return files


def _linked(path: Path, stop: Path) -> bool:
    """Whether `path` or a folder between it and `stop` is a symbolic link (a copy must be a file of its own)."""
    return any(p.is_symlink() for p in [path, *path.parents] if p == stop or stop in p.parents)


def _leftovers(expected: dict[Path, str]) -> list[Path]:
    """Files in generated folders that generation would not write (a removed dashboard, a stray manifest)."""
    paths = [p for directory in GENERATED_DIRS for p in sorted((MANIFESTS / directory).glob("*"))]
    if CHART_FILES.is_dir() and not CHART_FILES.is_symlink():
        paths += [p for p in sorted(CHART_FILES.rglob("*")) if p.is_file() or p.is_symlink()]
    return [p for p in paths if p not in expected]


def stale_files() -> list[Path]:
    """Generated files missing or different from what generation would write (or links where a copy belongs), and
    leftovers in generated folders."""
    expected = expected_files()
    stale = [path for path, text in expected.items()
             if _linked(path, CHART_FILES) or not path.is_file() or path.read_text() != text]
    return stale + _leftovers(expected)


def write() -> list[Path]:
    """Write what is stale. The manifests are rendered from the chart, its copied files/ included, so a pass that
    changed something is followed by one more (rendered from the chart as it now stands)."""
    written = _write_once()
    if written:
        written += [path for path in _write_once() if path not in written]
    return written


def _write_once() -> list[Path]:
    written = []
    expected = expected_files()
    for path, text in expected.items():
        for link in [p for p in [*reversed(path.parents), path] if CHART_FILES in [p, *p.parents] and p.is_symlink()]:
            link.unlink()  # never write through a link into dashboards/
        if not path.is_file() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            written.append(path)
    for path in _leftovers(expected):
        path.unlink()
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="report drift instead of writing")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for path in stale:
            print(f"stale: {path.relative_to(ROOT)}")
        return 1 if stale else 0
    for path in write():
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
