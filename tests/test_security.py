"""Secure defaults, each against a real server: TLS, redirects, credentials, encodings, paths."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from servers import FaultServer, Nginx, sha256

from engine import (
    BackgroundDownloader,
    BackgroundTransferStatus,
    Credential,
    TransferConfig,
    TransferError,
    WebErrorStatus,
)
from engine._disk.core import part_path

S = BackgroundTransferStatus
Make = Callable[..., BackgroundDownloader]
FAST = TransferConfig(poll_interval=0.05, backoff_base=0.05, backoff_max=0.2, retries=1)


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def fails_with(op: object, kind: type[BaseException] = TransferError) -> BaseException:
    with pytest.raises(kind) as info:
        op.start().wait(60)  # type: ignore[attr-defined]
    return info.value


def test_self_signed_server_is_refused(
    tls_nginx: Nginx, make_downloader: Make, tmp_path: Path
) -> None:
    """TLS is verified: a certificate the system does not trust ends in ERROR, no file."""
    op = make_downloader(config=FAST).create_download(
        tls_nginx.tls_url("small.bin"), tmp_path / "x"
    )
    fails_with(op)
    assert op.status is S.ERROR
    status = op.current_web_error_status
    assert status is not None
    assert status.name.startswith("CERTIFICATE") or status is WebErrorStatus.CANNOT_CONNECT
    assert not (tmp_path / "x").exists()


def test_https_ranges_take_connections_of_their_own(
    tls_nginx: Nginx, make_downloader: Make, ca_file: str, tmp_path: Path
) -> None:
    """With the CA passed: the first request over HTTP/2, the ranged ones on separate
    connections (streams of one connection came no faster than one); byte-exact, and
    nginx serves no byte twice."""
    config = TransferConfig(ca_file=ca_file, first_request=1 << 20, min_split=1 << 20)
    op = make_downloader(config=config, max_connections_per_file=4).create_download(
        tls_nginx.tls_url("big.bin"), tmp_path / "b"
    )
    op.start().wait(60)
    assert sha256(tmp_path / "b") == sha256(tls_nginx.www / "big.bin")
    served = [line for line in tls_nginx.protocols() if "/big.bin" in line]
    assert " HTTP/2.0" in served[0]
    ranged = served[1:]
    assert len(ranged) >= 3
    assert all(" HTTP/1.1" in line and " 206 " in line for line in ranged)
    connections = {next(f for f in line.split() if f.startswith("c")) for line in ranged}
    assert len(connections) >= 2
    log = [line for line in tls_nginx.requests() if "/big.bin" in line]
    sent = sum(int(line.split('"')[2].split()[1]) for line in log)
    assert sent <= 1.02 * (tls_nginx.www / "big.bin").stat().st_size


def test_https_to_http_redirect_is_refused(
    tls_nginx: Nginx, make_downloader: Make, ca_file: str, tmp_path: Path
) -> None:
    """An https URL redirected to plain http: ERROR HTTPS_TO_HTTP_ON_REDIRECTION."""
    config = TransferConfig(ca_file=ca_file, retries=1, backoff_base=0.05)
    op = make_downloader(config=config).create_download(
        tls_nginx.tls_url("to-http/x"), tmp_path / "d"
    )
    fails_with(op)
    assert op.current_web_error_status is WebErrorStatus.HTTPS_TO_HTTP_ON_REDIRECTION
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("target", ["ftp://127.0.0.1/x", "file:///etc/passwd", "dict://127.0.0.1/"])
def test_redirects_go_to_http_and_https_only(
    fault_server: FaultServer, make_downloader: Make, tmp_path: Path, target: str
) -> None:
    """A Location to another scheme is not followed."""
    fault_server.fault, fault_server.location = "redirect", target
    op = make_downloader(config=FAST).create_download(fault_server.url, tmp_path / "r")
    fails_with(op)
    assert op.current_web_error_status is WebErrorStatus.REDIRECT_FAILED
    assert not (tmp_path / "r").exists()


def test_redirect_loops_stop_at_the_limit(
    fault_server: FaultServer, make_downloader: Make, tmp_path: Path
) -> None:
    """A redirect loop ends after max_redirects with REDIRECT_FAILED."""
    fault_server.fault = "redirect-loop"
    config = TransferConfig(max_redirects=5, retries=0)
    op = make_downloader(config=config).create_download(fault_server.url, tmp_path / "l")
    fails_with(op)
    assert op.current_web_error_status is WebErrorStatus.REDIRECT_FAILED
    assert fault_server.requests <= 6


def test_credentials_do_not_follow_a_redirect_to_another_host(
    body: bytes, make_downloader: Make, tmp_path: Path
) -> None:
    """The server credential answers 127.0.0.1's challenge; localhost never sees it."""
    first, second = FaultServer(body), FaultServer(body)
    try:
        first.auth = "user:secret"
        first.fault = "redirect"
        first.location = f"http://localhost:{second.server_address[1]}/file.bin"
        second.record_headers = []
        d = make_downloader(server_credential=Credential("user", "secret"))
        d.create_download(first.url, tmp_path / "c").start().wait(30)
        assert (tmp_path / "c").read_bytes() == body
        assert any(a is not None for a in first.auth_seen)  # the challenge was answered
        assert second.record_headers
        assert all("Authorization" not in h for h in second.record_headers)
    finally:
        first.close()
        second.close()


def test_bodies_are_never_decoded(
    fault_server: FaultServer, body: bytes, make_downloader: Make, nginx: Nginx, tmp_path: Path
) -> None:
    """No Accept-Encoding is sent, and a Content-Encoding is stored as sent, not decoded:
    a compression bomb cannot fill the disk."""
    fault_server.fault = "gzip"
    fault_server.record_headers = []
    d = make_downloader()
    d.create_download(fault_server.url, tmp_path / "g").start().wait(30)
    assert (tmp_path / "g").read_bytes() == body  # not gzip data: decoding would have failed
    assert all("Accept-Encoding" not in h for h in fault_server.record_headers)
    d.create_download(nginx.url("gz/big.bin"), tmp_path / "n").start().wait(30)
    assert sha256(tmp_path / "n") == sha256(nginx.www / "big.bin")
    gz = [line for line in nginx.protocols() if "/gz/big.bin" in line]
    assert gz
    assert all(line.endswith(" -") for line in gz)  # no Accept-Encoding header at all


@pytest.mark.parametrize("name", ["small.bin", "big.bin"], ids=["plain", "rangefile"])
def test_a_planted_symlink_is_not_followed(
    nginx: Nginx, make_downloader: Make, tmp_path: Path, name: str
) -> None:
    """A symlink planted at the partial file's name is removed, never written through."""
    out = tmp_path / "f"
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    part_path(out).symlink_to(victim)
    make_downloader().create_download(nginx.url(name), out).start().wait(30)
    assert victim.read_bytes() == b"keep"
    assert sha256(out) == sha256(nginx.www / name)
    assert not part_path(out).exists()


def test_a_symlink_at_the_result_name_is_replaced_not_written_through(
    nginx: Nginx, make_downloader: Make, tmp_path: Path
) -> None:
    """The final rename replaces a symlink at the result name; its target is untouched."""
    out = tmp_path / "f"
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    out.symlink_to(victim)
    make_downloader().create_download(nginx.url("small.bin"), out).start().wait(30)
    assert not out.is_symlink()
    assert out.read_bytes() == (nginx.www / "small.bin").read_bytes()
    assert victim.read_bytes() == b"keep"
