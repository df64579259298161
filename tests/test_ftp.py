"""FTP through pyftpdlib and SFTP through OpenSSH's sshd: ranged connections, resume, errors."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from polling import wait_for
from servers import FtpServer, SshServer
from sftp_server import PASSWORD, USER, PasswordSftpServer

from engine import (
    BackgroundDownloader,
    BackgroundTransferStatus,
    Credential,
    HttpError,
    TransferConfig,
    TransferError,
    WebErrorStatus,
)
from engine._disk.core import control_path
from engine._download.request import multi_for_loop as _multi_for_loop
from engine._net.connections import Slots
from engine._runtime.loop import engine_loop

S = BackgroundTransferStatus
Make = Callable[..., BackgroundDownloader]
MIB = 1 << 20


@pytest.fixture
def served(tmp_path: Path) -> Path:
    root = tmp_path / "ftp"
    root.mkdir()
    (root / "big.bin").write_bytes(os.urandom(10 * MIB + 4321))
    (root / "small.bin").write_bytes(os.urandom(5000))
    (root / "empty.bin").write_bytes(b"")
    return root


@pytest.fixture
def ftp(served: Path) -> Iterator[FtpServer]:
    server = FtpServer(served)
    try:
        yield server
    finally:
        server.close()


def test_ftp_over_several_connections(
    ftp: FtpServer, served: Path, make_downloader: Make, tmp_path: Path
) -> None:
    """A large file over 4 ranged FTP connections (REST), a small one, an empty one."""
    d = make_downloader(max_connections_per_file=4)
    for name in ("big.bin", "small.bin", "empty.bin"):
        d.create_download(ftp.url(name), tmp_path / name).start().wait(60)
        assert (tmp_path / name).read_bytes() == (served / name).read_bytes()
    assert any(r > 0 for r in ftp.rests)


def test_ftp_resume_after_pause_continues(
    served: Path, make_downloader: Make, tmp_path: Path
) -> None:
    """Paused mid-file, resumed: REST from the bitmap, byte-exact."""
    server = FtpServer(served, rate=MIB // 2)  # after pyftpdlib's first burst
    try:
        op = make_downloader(max_connections_per_file=2).create_download(
            server.url("big.bin"), tmp_path / "r"
        )
        op.start()
        wait_for(control_path(tmp_path / "r").exists)
        op.pause()
        time.sleep(0.2)
        have = op.progress.bytes_received
        assert have < (served / "big.bin").stat().st_size
        before = list(server.rests)
        op.resume()
        op.wait(60)
        assert (tmp_path / "r").read_bytes() == (served / "big.bin").read_bytes()
        resumed = server.rests[len(before) :]
        assert resumed
        assert min(resumed) > 0  # nothing asked for from the start again
        assert have > 0
    finally:
        server.close()


def test_ftp_login_and_missing_file(
    ftp: FtpServer, served: Path, make_downloader: Make, tmp_path: Path
) -> None:
    """A user's credential logs in; a wrong one and a missing file end in typed errors."""
    good = make_downloader(server_credential=Credential("u", "p"))
    good.create_download(ftp.url("small.bin"), tmp_path / "ok").start().wait(30)
    assert (tmp_path / "ok").read_bytes() == (served / "small.bin").read_bytes()
    bad = make_downloader(
        server_credential=Credential("u", "wrong"), config=TransferConfig(retries=0)
    )
    op = bad.create_download(ftp.url("small.bin"), tmp_path / "no")
    with pytest.raises(TransferError):
        op.start().wait(30)
    assert op.current_web_error_status is WebErrorStatus.UNAUTHORIZED
    missing = make_downloader().create_download(ftp.url("nope.bin"), tmp_path / "m")
    with pytest.raises(TransferError):
        missing.start().wait(30)
    assert missing.current_web_error_status is WebErrorStatus.NOT_FOUND
    assert not (tmp_path / "m").exists()


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshServer]:
    try:
        server = SshServer(tmp_path / "sshd")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.close()


def test_sftp_download_and_resume(
    sshd: SshServer, served: Path, make_downloader: Make, tmp_path: Path
) -> None:
    """SFTP with a key, the host key checked: 4 ranged connections; a pause, then resume."""
    config = TransferConfig(
        ssh_private_key=str(sshd.client_key), ssh_known_hosts=str(sshd.known_hosts)
    )
    source = served / "large.bin"
    with source.open("wb") as fh:
        for i in range(128):
            fh.write(os.urandom(16) * (MIB // 16) if i % 2 else os.urandom(MIB))
    d = make_downloader(config=config, max_connections_per_file=4, block_size=1 << 16)
    op = d.create_download(sshd.url(source), tmp_path / "s")
    op.start()
    wait_for(control_path(tmp_path / "s").exists)
    op.pause()
    time.sleep(0.2)
    assert op.progress.bytes_received < source.stat().st_size  # paused mid-file
    op.resume()
    op.wait(60)
    assert (tmp_path / "s").read_bytes() == source.read_bytes()
    d.create_download(sshd.url(served / "empty.bin"), tmp_path / "e").start().wait(30)
    assert (tmp_path / "e").read_bytes() == b""


def test_sftp_refuses_an_unknown_host_key(
    sshd: SshServer, served: Path, make_downloader: Make, tmp_path: Path
) -> None:
    """A host key not in known_hosts, or no known_hosts at all: refused, nothing written."""
    other = tmp_path / "other_known_hosts"
    other.write_text(
        f"[127.0.0.1]:{sshd.port} ssh-ed25519 "
        "AAAAC3NzaC1lZDI1NTE5AAAAIEo7h6Y5XaLNFqoBC8BOW4kP0m5vTBkV0N8a8n8r8r8r\n"
    )
    slots = engine_loop().submit(_engine_slots()).result()
    before = slots.busy.get("127.0.0.1", 0)
    for known in (str(other), str(tmp_path / "missing")):
        config = TransferConfig(
            ssh_private_key=str(sshd.client_key), ssh_known_hosts=known, retries=0
        )
        op = make_downloader(config=config).create_download(
            sshd.url(served / "small.bin"), tmp_path / "x"
        )
        with pytest.raises(TransferError):
            op.start().wait(30)
        assert op.status is S.ERROR
        assert not (tmp_path / "x").exists()
        op.cancel()
    # the refused set-up gave its connection slot back (else the host would run out)
    wait_for(lambda: slots.busy.get("127.0.0.1", 0) <= before)


async def _engine_slots() -> Slots:
    return _multi_for_loop()[2]


def test_http_error_type_is_not_used_for_ftp(
    ftp: FtpServer, make_downloader: Make, tmp_path: Path
) -> None:
    """An FTP failure is a TransportError-family error, not an HttpError."""
    op = make_downloader().create_download(ftp.url("nope.bin"), tmp_path / "x")
    with pytest.raises(TransferError) as info:
        op.start().wait(30)
    assert not isinstance(info.value, HttpError)


def test_sftp_password_login(served: Path, make_downloader: Make, tmp_path: Path) -> None:
    """SFTP with the credential's password (no key): ranged connections, each logged
    in, byte-exact; a wrong password is a typed error after a refused login, with
    nothing written."""
    server = PasswordSftpServer(served, tmp_path / "sftp")
    try:
        config = TransferConfig(ssh_known_hosts=str(server.known_hosts), retries=0)
        good = make_downloader(
            server_credential=Credential(USER, PASSWORD),
            config=config,
            max_connections_per_file=4,
            block_size=1 << 20,
        )
        for name in ("big.bin", "small.bin"):
            good.create_download(server.url(served / name), tmp_path / name).start().wait(60)
            assert (tmp_path / name).read_bytes() == (served / name).read_bytes()
        assert server.refused == 0
        assert server.logins >= 2  # the first request's connection and the others
        bad = make_downloader(server_credential=Credential(USER, "wrong"), config=config)
        op = bad.create_download(server.url(served / "small.bin"), tmp_path / "no")
        with pytest.raises(TransferError):
            op.start().wait(30)
        assert op.status is S.ERROR
        assert server.refused >= 1
        assert not (tmp_path / "no").exists()
    finally:
        server.close()
