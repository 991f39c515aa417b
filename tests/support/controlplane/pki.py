"""The control plane's certificates and keys, generated on the spot with `cryptography` (no network, no openssl).

One CA signs the API server's serving certificate and every client certificate: the admin (`system:masters`),
the controller manager, the scheduler and each test node (`system:node:<name>` in `system:nodes`, so the Node
authorizer and the NodeRestriction admission plugin judge what the node does, as for a real kubelet). A separate
key pair signs and verifies service-account tokens. A second CA, the front proxy's, signs the client certificate
the API server's aggregation layer presents (`--requestheader-client-ca-file`), as kubeadm sets it up. ECDSA P-256
throughout: a key takes well under a millisecond.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVICE_IP = "10.0.0.1"  # the `kubernetes` Service's ClusterIP: the first address of --service-cluster-ip-range
SERVICE_CIDR = "10.0.0.0/24"
API_DNS_NAMES = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                 "kubernetes.default.svc.cluster.local")


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its key, as files."""

    cert: Path
    key: Path

    def pem(self) -> tuple[bytes, bytes]:
        return self.cert.read_bytes(), self.key.read_bytes()


class Pki:
    """A CA in `root` and the certificates it signs (all files: the binaries read paths); with
    `service_account_keys`, also the key pair that signs service-account tokens."""

    def __init__(self, root: Path, *, name: str = "ganops-test-ca", service_account_keys: bool = True) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        self._ca_key = _key()
        self._ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.ca = self._write("ca", self._self_signed(), self._ca_key)
        if service_account_keys:
            sa_key = _key()
            self.service_account_key = root / "sa.key"
            self.service_account_key.write_bytes(_key_pem(sa_key))
            self.service_account_pub = root / "sa.pub"
            self.service_account_pub.write_bytes(sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    def _self_signed(self) -> x509.Certificate:
        name = self._ca_name
        self._ca_name = name
        ca = (self._builder(name, self._ca_key.public_key())
              .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                           content_commitment=False, key_encipherment=False,
                                           data_encipherment=False, key_agreement=False, encipher_only=False,
                                           decipher_only=False), critical=True)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._ca_key.public_key()), critical=False)
              .sign(self._ca_key, hashes.SHA256()))
        return ca

    def _builder(self, subject: x509.Name, public_key: Any) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(subject)
                .issuer_name(self._ca_name)
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(self._now).not_valid_after(self._now + dt.timedelta(days=2)))

    def _write(self, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> KeyPair:
        pair = KeyPair(self.root / f"{stem}.crt", self.root / f"{stem}.key")
        pair.cert.write_bytes(_cert_pem(cert))
        pair.key.write_bytes(_key_pem(key))
        pair.key.chmod(0o600)
        return pair

    def _issue(self, stem: str, subject: x509.Name, usage: x509.ObjectIdentifier,
               sans: list[x509.GeneralName] | None = None) -> KeyPair:
        key = _key()
        builder = (self._builder(subject, key.public_key())
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                                content_commitment=False, data_encipherment=False,
                                                key_agreement=False, key_cert_sign=False, crl_sign=False,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_key.public_key()),
                                  critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return self._write(stem, builder.sign(self._ca_key, hashes.SHA256()), key)

    def serving(self, stem: str, common_name: str, ips: list[str], dns: tuple[str, ...] = ()) -> KeyPair:
        sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        sans += [x509.DNSName(name) for name in dns]
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        return self._issue(stem, subject, ExtendedKeyUsageOID.SERVER_AUTH, sans)

    def client(self, stem: str, user: str, groups: tuple[str, ...] = ()) -> KeyPair:
        """A client certificate: the API server takes CN as the user name and each O as a group."""
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, group) for group in groups]
        subject = x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, user)])
        return self._issue(stem, subject, ExtendedKeyUsageOID.CLIENT_AUTH)


def kubeconfig(path: Path, server: str, ca: Path, client: KeyPair, *, user: str, namespace: str = "default") -> Path:
    """A self-contained kubeconfig (certificates embedded), written as JSON (which is YAML)."""
    cert, key = client.pem()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "ganops-test", "cluster": {
            "server": server, "certificate-authority-data": base64.b64encode(ca.read_bytes()).decode()}}],
        "users": [{"name": user, "user": {"client-certificate-data": base64.b64encode(cert).decode(),
                                          "client-key-data": base64.b64encode(key).decode()}}],
        "contexts": [{"name": f"{user}@ganops-test",
                      "context": {"cluster": "ganops-test", "user": user, "namespace": namespace}}],
        "current-context": f"{user}@ganops-test",
    }
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)
    return path
