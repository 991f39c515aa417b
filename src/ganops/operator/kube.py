"""A small, generic Kubernetes REST client for the operator's writes, on the `kubernetes` package's ApiClient
(its configuration: in-cluster service account or KUBECONFIG, token refresh, TLS). Bodies are plain dicts and
answers are not deserialised into models: the operator only needs a few fields of them.
"""

from __future__ import annotations

import json
from typing import Any

from ganops.contracts import API_VERSION, KIND, PLURAL

MERGE_PATCH = "application/merge-patch+json"

_PLURALS: dict[tuple[str, str], str] = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Service"): "services",
    ("v1", "Pod"): "pods",
    ("v1", "Event"): "events",
    ("batch/v1", "Job"): "jobs",
    (API_VERSION, KIND): PLURAL,
}


class KubeError(Exception):
    """A non-2xx answer (status 0: the request did not get an answer)."""

    def __init__(self, status: int, reason: str, message: str, what: str) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        super().__init__(f"{what}: {status} {reason}: {message}".strip())

    @property
    def transient(self) -> bool:
        return self.status in (0, 408, 429) or self.status >= 500

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def not_found(self) -> bool:
        return self.status == 404


def path(api_version: str, plural: str, namespace: str | None, name: str | None = None,
         subresource: str | None = None) -> str:
    base = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
    if namespace is not None:
        base += f"/namespaces/{namespace}"
    base += f"/{plural}"
    if name is not None:
        base += f"/{name}"
        if subresource is not None:
            base += f"/{subresource}"
    return base


def plural_of(api_version: str, kind: str) -> str:
    try:
        return _PLURALS[(api_version, kind)]
    except KeyError:
        raise ValueError(f"no plural known for {api_version} {kind}") from None


def load_api_client(workers: int = 8) -> Any:
    """An ApiClient from the in-cluster service account, else from KUBECONFIG (~/.kube/config)."""
    import os

    import kubernetes

    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        # KUBECONFIG as it is now (the package reads its default location once, at import time).
        single = os.environ.get("KUBECONFIG", "")
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=single if single and os.pathsep not in single else None,
            client_configuration=configuration,
        )
    configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, workers * 2)
    return kubernetes.client.ApiClient(configuration)


class Kube:
    """Create / patch / delete any object by apiVersion, plural, namespace and name. Thread-safe."""

    def __init__(self, api_client: Any, timeout: tuple[float, float] = (5.0, 30.0)) -> None:
        self.api_client = api_client
        self.timeout = timeout

    def close(self) -> None:
        self.api_client.close()

    def request(self, method: str, resource_path: str, *, body: Any = None, query: dict[str, str] | None = None,
                content_type: str = "application/json") -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        what = f"{method} {resource_path}"
        try:
            serialized = self.api_client.param_serialize(
                method=method, resource_path=resource_path, query_params=list((query or {}).items()),
                header_params=headers, body=body, auth_settings=["BearerToken"],
            )
            http_method, url, header_params, body_out, _post = serialized
            response = self.api_client.call_api(http_method, url, header_params=header_params, body=body_out,
                                                _request_timeout=self.timeout)
            response.read()
        except KubeError:
            raise
        except Exception as exc:  # connection refused, timeouts, TLS: no answer at all
            status = int(getattr(exc, "status", 0) or 0)
            raise KubeError(status, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "", what) from exc
        data = response.data or b""
        try:
            payload = json.loads(data) if data else None
        except ValueError:
            payload = {"message": data.decode(errors="replace")[:500]}
        if not 200 <= response.status < 300:
            info = payload if isinstance(payload, dict) else {}
            raise KubeError(response.status, str(info.get("reason") or response.reason or ""),
                            str(info.get("message") or ""), what)
        return payload

    # -------------------------------------------------------------------------------------------- verbs
    def create(self, obj: dict[str, Any], namespace: str) -> dict[str, Any]:
        plural = plural_of(obj["apiVersion"], obj["kind"])
        result: dict[str, Any] = self.request("POST", path(obj["apiVersion"], plural, namespace), body=obj)
        return result

    def post_event(self, involved: dict[str, Any], type_: str, reason: str, message: str, *, time: str,
                   component: str = "ganops-operator") -> None:
        """A core v1 Event about ``involved`` (apiVersion, kind, name, namespace, uid), posted now (not queued)."""
        self.create({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{involved['name']}.", "namespace": involved["namespace"]},
            "involvedObject": involved,
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": component},
            "reportingComponent": component,
            "firstTimestamp": time,
            "lastTimestamp": time,
            "count": 1,
        }, involved["namespace"])

    def patch(self, api_version: str, plural: str, namespace: str, name: str, patch: dict[str, Any], *,
              subresource: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.request("PATCH", path(api_version, plural, namespace, name, subresource),
                                              body=patch, content_type=MERGE_PATCH)
        return result

    def delete(self, api_version: str, plural: str, namespace: str, name: str, *, uid: str | None = None,
               propagation: str | None = None, grace_seconds: int | None = None) -> None:
        options: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if uid:
            options["preconditions"] = {"uid": uid}
        if propagation:
            options["propagationPolicy"] = propagation
        if grace_seconds is not None:
            options["gracePeriodSeconds"] = grace_seconds
        self.request("DELETE", path(api_version, plural, namespace, name), body=options)
