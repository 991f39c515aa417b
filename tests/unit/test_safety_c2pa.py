"""Optional C2PA signing of PNG output (skipped when c2pa-python is not installed)."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ganops.images import encode_png
from ganops.serving.safety import Watermarker
from ganops.serving.safety.content_credentials import c2pa_available, load_content_credentials, read_manifest


def test_unconfigured_signing_is_skipped_cleanly() -> None:
    assert load_content_credentials(None, None) is None
    assert load_content_credentials("/nonexistent/cert.pem", None) is None


def make_test_chain(tmp_path: Path) -> tuple[Path, Path]:
    """A throwaway CA and an ES256 leaf certificate fit for C2PA signing (PEM files)."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> Any:
        return x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ganops tests")]
        )

    def builder(subject: str, issuer: Any, key: ec.EllipticCurvePrivateKey) -> Any:
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=7))
        )

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        builder("ganops test CA", name("ganops test CA"), ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        builder("ganops test signer", ca.subject, leaf_key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "chain.pem", tmp_path / "key.pem"
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.mark.skipif(not c2pa_available(), reason="c2pa-python is not installed (optional dependency)")
def test_signed_png_carries_credentials_and_keeps_pixels_and_watermark(tmp_path: Path) -> None:
    cert_path, key_path = make_test_chain(tmp_path)
    credentials = load_content_credentials(str(cert_path), str(key_path))
    assert credentials is not None

    marker = Watermarker(b"ganops-test-watermark-key-0001", model_id="digits:3")
    pixels = marker.embed(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    png = encode_png(pixels)
    signed = credentials.sign_png(png, title="sample-0.png", model="digits", version="3")
    assert signed != png and signed[:8] == png[:8]

    store = read_manifest(signed)
    assert store is not None
    assert store["validation_state"] in {"Valid", "Trusted"}  # Valid: signature fine, test CA not in a trust list
    manifest = store["manifests"][store["active_manifest"]]
    labels = {a["label"] for a in manifest["assertions"]}
    assert "org.ganops.model" in labels and any(label.startswith("c2pa.actions") for label in labels)
    model = next(a for a in manifest["assertions"] if a["label"] == "org.ganops.model")
    assert model["data"] == {"model": "digits", "version": "3"}

    decoded = np.asarray(Image.open(io.BytesIO(signed)))
    assert np.array_equal(decoded, pixels)
    assert marker.verify(decoded).present
    assert read_manifest(png) is None  # unsigned
