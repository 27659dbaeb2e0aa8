"""A self-signed certificate for 127.0.0.1 and localhost, made with the openssl command."""

from __future__ import annotations

import subprocess
from pathlib import Path


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """(certificate, key) PEM files in ``tmp``, valid for a day."""
    cert, key = tmp / "tls.crt", tmp / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=schedd-test",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key
