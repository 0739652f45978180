"""HTTPS on the admin service: a real ``pacsai listener`` with a certificate from our own CA."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest

from pacsai_process import PacsaiProcess, free_port, wait_until

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl tool")


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 signed by it."""
    ca_key, ca_crt = folder / "ca.key", folder / "ca.crt"
    key, csr, crt = folder / "server.key", folder / "server.csr", folder / "server.crt"
    ext = folder / "server.ext"

    def openssl(*args: str | Path) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca_crt,
            "-days", "2", "-subj", "/CN=pacsai test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
            "-subj", "/CN=127.0.0.1")
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial",
            "-out", crt, "-days", "2", "-extfile", ext)
    return ca_crt, crt, key


def test_admin_serves_https_with_configured_certificate(tmp_path: Path) -> None:
    ca, cert, key = make_certificates(tmp_path)
    port = free_port()
    proc = PacsaiProcess(tmp_path / "data", command="listener", config={
        "PACSAI_ADMIN__PORT": str(port),
        "PACSAI_ADMIN__TOKEN": "https-test-token",
        "PACSAI_ADMIN__CERT_FILE": str(cert),
        "PACSAI_ADMIN__KEY_FILE": str(key),
    })
    url = f"https://127.0.0.1:{port}"
    trusted = ssl.create_default_context(cafile=str(ca))

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/healthz", verify=trusted, timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    with proc:
        wait_until(healthy, timeout=30)
        response = httpx.get(f"{url}/healthz", verify=trusted, timeout=5)
        assert response.json() == {"status": "ok"}
        assert response.http_version == "HTTP/1.1" and response.url.scheme == "https"
        # Token-protected endpoints work over TLS as well.
        api = httpx.get(f"{url}/api/queues", verify=trusted, timeout=10,
                        headers={"Authorization": "Bearer https-test-token"})
        assert api.status_code == 200, api.text

        # Without our CA the certificate is not trusted ...
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{url}/healthz", timeout=5)
        # ... and plain HTTP on the same port gets no answer.
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert "https://127.0.0.1:%d/" % port in proc.log()
