"""A ServiceAccount's identity on the control plane: a token from the TokenRequest API, as the kubelet projects one
into a pod, and a `KubeClient` plus a kubeconfig that log in with it.

    client = service_account_client(cp, "ganops-system", "ganops-operator")
    KopfProcess(client, [...])            # the operator, as its Deployment's pod would run it: RBAC applies
    client.list("v1", "Secret", "team-a") # 403 unless a Role grants it

The token is bound to nothing but the ServiceAccount (no pod), valid for `expiration_seconds` (a pytest session
is far shorter than the default two hours). Deleting the ServiceAccount invalidates it at once, as on a cluster.
"""

from __future__ import annotations

import base64
import json
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from ..kube.client import KubeClient

if TYPE_CHECKING:
    import kubernetes.client

    from .cluster import ControlPlane


class TokenClient(KubeClient):
    """`KubeClient` over TLS (the control plane's CA) with a bearer token instead of a client certificate."""

    def __init__(self, url: str, ca: Path, token: str, kubeconfig_path: Path, *, timeout: float = 15.0) -> None:
        self._url = url
        self._ca = ca
        self.token = token
        self._kubeconfig_path = kubeconfig_path
        self._timeout = timeout
        self._discovery = {}
        self._http = httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=str(ca)), timeout=timeout,
                                  headers={"Authorization": f"Bearer {token}"})

    @property
    def url(self) -> str:
        return self._url

    @property
    def http(self) -> httpx.Client:
        return self._http

    @property
    def kubeconfig_path(self) -> Path:
        return self._kubeconfig_path

    @property
    def username(self) -> str:
        """The token's subject, `system:serviceaccount:<namespace>:<name>` (read from its claims, unverified)."""
        claims = json.loads(base64.urlsafe_b64decode(self.token.split(".")[1] + "=="))
        return str(claims["sub"])

    def kubernetes_configuration(self) -> kubernetes.client.Configuration:
        import kubernetes.client

        configuration = kubernetes.client.Configuration(host=self._url)
        configuration.ssl_ca_cert = str(self._ca)
        configuration.api_key = {"authorization": f"Bearer {self.token}"}
        return configuration

    def close(self) -> None:
        self._http.close()


def token_kubeconfig(path: Path, server: str, ca: Path, token: str, *, user: str, namespace: str = "default") -> Path:
    """A kubeconfig that logs in with a bearer token (CA embedded), written as JSON (which is YAML)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "ganops-test", "cluster": {
            "server": server, "certificate-authority-data": base64.b64encode(ca.read_bytes()).decode()}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": f"{user}@ganops-test",
                      "context": {"cluster": "ganops-test", "user": user, "namespace": namespace}}],
        "current-context": f"{user}@ganops-test",
    }
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)
    return path


def request_token(cp: ControlPlane, namespace: str, service_account: str, *, expiration_seconds: int = 7200) -> str:
    """A token for the ServiceAccount from the TokenRequest API (`serviceaccounts/<name>/token`), signed by the
    API server with the control plane's service-account key."""
    answer = cp.client().request(
        "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
        json_body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                   "spec": {"expirationSeconds": expiration_seconds}})
    return str(answer["status"]["token"])


def service_account_client(cp: ControlPlane, namespace: str, service_account: str, *,
                           expiration_seconds: int = 7200) -> TokenClient:
    """A client (and its kubeconfig, for kopf and kubectl) acting as the ServiceAccount `namespace/name`."""
    assert cp.pki is not None, "the control plane is not started"
    token = request_token(cp, namespace, service_account, expiration_seconds=expiration_seconds)
    stem = f"sa-{namespace}-{service_account}"
    path = token_kubeconfig(cp.root / "kubeconfigs" / stem, cp.url, cp.pki.ca.cert, token, user=stem,
                            namespace=namespace)
    return TokenClient(cp.url, cp.pki.ca.cert, token, path)
