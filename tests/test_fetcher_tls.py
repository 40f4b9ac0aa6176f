"""HTTPS with the address pinned: the socket goes to the checked IP, while SNI and the certificate
check use the name from the URL. Needs the ``openssl`` command (skipped without it)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from _hostile_server import HostileServer
from ie_env.fetcher import Fetcher, FetchConfig, Reason


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not available")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-keyout", str(key), "-out", str(cert), "-subj", "/CN=images.test",
                        "-addext", "subjectAltName=DNS:images.test"], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"openssl could not make a certificate: {r.stderr[-200:]!r}")
    srv = HostileServer("127.0.0.1", tls=(str(cert), str(key)))
    yield srv, str(cert)
    srv.stop()


def _fetcher(tmp_path, srv, cert, allow, resolver):
    cfg = FetchConfig(allow_private=allow, ca_bundle=cert, deadline_s=5.0, max_retries=0,
                      leak_hamming=-1)
    return Fetcher(str(tmp_path / "s"), cfg, resolver=resolver)


def test_https_connects_to_the_checked_ip_with_the_name_for_sni_and_certificate(tls_server, tmp_path):
    srv, cert = tls_server
    calls = []

    def resolver(host, port):
        calls.append(host)
        return ["127.0.0.1"]

    with _fetcher(tmp_path, srv, cert, [f"images.test:{srv.port}"], resolver) as f:
        res = f.fetch(f"https://images.test:{srv.port}/img/5.jpg")
        again = f.fetch(f"https://images.test:{srv.port}/img/6.jpg")
    assert res.ok and again.ok, (res.to_dict(), again.to_dict())
    assert calls == ["images.test", "images.test"]  # one lookup per request, never by urllib3
    assert "images.test" in srv.sni
    assert {r["host"] for r in srv.log} == {f"images.test:{srv.port}"}


def test_certificate_must_match_the_url_name(tls_server, tmp_path):
    srv, cert = tls_server
    with _fetcher(tmp_path, srv, cert, [f"other.test:{srv.port}", f"127.0.0.1:{srv.port}"],
                  lambda h, p: ["127.0.0.1"]) as f:
        wrong_name = f.fetch(f"https://other.test:{srv.port}/img/7.jpg")
        by_ip = f.fetch(f"https://127.0.0.1:{srv.port}/img/8.jpg")
    assert wrong_name.reason == Reason.TLS_ERROR, wrong_name.to_dict()
    assert by_ip.reason == Reason.TLS_ERROR, by_ip.to_dict()
    assert not any(r["path"].startswith(("/img/7", "/img/8")) for r in srv.log)
