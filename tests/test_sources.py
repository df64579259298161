"""Several sources of one file: bad ones dropped with a reason, never mixed, load spread."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from servers import FaultServer

from engine import BackgroundDownloader, InvalidRequestError, TransferConfig
from engine.errors import TransferError

SIZE = 8 << 20
QUICK = TransferConfig(backoff_base=0.05, backoff_max=0.2, min_split=1 << 20)


@pytest.fixture
def body() -> bytes:
    return os.urandom(SIZE)


@pytest.fixture
def servers(body: bytes) -> Iterator[Callable[..., FaultServer]]:
    """Fault servers of ``body`` with the same validators (copies of one file)."""
    made: list[FaultServer] = []

    def make(fault: str = "", **attrs: object) -> FaultServer:
        server = FaultServer(body, fault=fault)
        if made:
            server.last_modified = made[0].last_modified
        for name, value in attrs.items():
            setattr(server, name, value)
        made.append(server)
        return server

    try:
        yield make
    finally:
        for server in made:
            server.close()


def _get(tmp_path: Path, urls: list[str], **kw: object) -> tuple[bytes, dict[str, str]]:
    d = BackgroundDownloader(state_dir=tmp_path / "s", config=QUICK)
    op = d.create_download(urls[0], tmp_path / "out.bin", sources=urls[1:])
    if "checksum" in kw:
        op.expected_checksum = str(kw["checksum"])
    op.start().wait(60)
    return (tmp_path / "out.bin").read_bytes(), op.dropped_sources


@pytest.mark.parametrize("busy_first", [True, False])
def test_a_source_busy_for_ever_is_dropped_and_the_other_serves(
    servers: Callable[..., FaultServer], body: bytes, tmp_path: Path, busy_first: bool
) -> None:
    """One source answers 503 to everything: the file comes byte-exact from the
    other, whichever comes first (the busy one, if dropped by then, says why)."""
    busy, good = servers("503"), servers()
    urls = [busy.url, good.url] if busy_first else [good.url, busy.url]
    got, dropped = _get(tmp_path, urls)
    assert got == body
    assert good.bytes_sent >= SIZE
    assert busy.requests >= 1
    assert busy.bytes_sent == 0
    assert "503" in dropped.get(busy.url, "503"), dropped


@pytest.mark.parametrize("changing_first", [True, False])
def test_a_source_that_changes_is_dropped_never_mixed(
    servers: Callable[..., FaultServer], body: bytes, tmp_path: Path, changing_first: bool
) -> None:
    """A source whose content changes during the download (its body cut, then a new
    ETag) is dropped: the file is the first version whole, from the other source."""
    changing = servers("change", new_body=os.urandom(SIZE), fault_after=512 << 10)
    steady = servers()
    urls = [changing.url, steady.url] if changing_first else [steady.url, changing.url]
    got, dropped = _get(tmp_path, urls)
    assert got == body
    assert changing.etag == '"v2"'  # it did change
    if '"v2"' in changing.versions:  # it was asked again after the change: dropped
        why = dropped.get(changing.url, "")
        assert "ETag" in why or "changed" in why, dropped


def test_a_source_of_another_size_is_dropped(
    servers: Callable[..., FaultServer], body: bytes, tmp_path: Path
) -> None:
    """A source whose file has another size never writes a byte into this one."""
    good = servers()
    other = FaultServer(body[:-1])
    try:
        got, dropped = _get(tmp_path, [good.url, other.url])
    finally:
        other.close()
    assert got == body
    assert "size" in dropped[other.url]


def test_connections_go_where_the_bytes_come_fastest(
    servers: Callable[..., FaultServer], body: bytes, tmp_path: Path
) -> None:
    """A source far slower a connection serves the smaller part of the file."""
    slow, fast = servers(rate=1_000_000), servers()
    got, dropped = _get(tmp_path, [slow.url, fast.url])
    assert got == body
    assert dropped == {}
    assert fast.bytes_sent > slow.bytes_sent  # (the slow one sent some that a race dropped)


def test_every_source_failing_fails_the_download(
    servers: Callable[..., FaultServer], tmp_path: Path
) -> None:
    """Only when every source is dropped does the operation fail."""
    a, b = servers("404"), servers("503")
    with pytest.raises(TransferError):
        _get(tmp_path, [a.url, b.url])


def test_sources_are_checked_as_the_uri_is(tmp_path: Path) -> None:
    """A source that is not http(s), or one string for a list, is refused up front."""
    d = BackgroundDownloader(state_dir=tmp_path / "s")
    with pytest.raises(InvalidRequestError, match="http and https only"):
        d.create_download("http://a.test/f", tmp_path / "f", sources=["ftp://b.test/f"])
    with pytest.raises(InvalidRequestError, match="list of URLs"):
        d.create_download("http://a.test/f", tmp_path / "g", sources="http://b.test/f")
    op = d.create_download("http://a.test/f", tmp_path / "h", sources=["http://b.test/f"])
    again = BackgroundDownloader(state_dir=tmp_path / "s").get_current_downloads()
    assert [o.sources for o in again] == [op.sources] == [["http://a.test/f", "http://b.test/f"]]


def _bgt(*args: str, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args, "--state-dir", str(cwd / "s")],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_get_takes_several_urls_of_one_file(
    servers: Callable[..., FaultServer], body: bytes, tmp_path: Path
) -> None:
    """bgtransfer get URL URL2 -o FILE: a busy first URL, the file from the second."""
    busy, good = servers("503"), servers()
    done = _bgt("get", busy.url, good.url, "-o", "out.bin", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.bin").read_bytes() == body


def test_a_mirror_list_line_names_several_urls_tab_separated(
    servers: Callable[..., FaultServer], body: bytes, tmp_path: Path
) -> None:
    """``URL<TAB>URL2 NAME`` on a mirror list: one file, from either URL."""
    busy, good = servers("503"), servers()
    listing = f"{busy.url}\t{good.url} both.bin\n{good.url}\n"
    done = _bgt("mirror", "-i", "-", "-d", "out", cwd=tmp_path, stdin=listing)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "both.bin").read_bytes() == body
    assert (tmp_path / "out" / "file.bin").read_bytes() == body


def test_validators_must_agree_unless_the_checksum_is_known(
    servers: Callable[..., FaultServer], body: bytes, tmp_path: Path
) -> None:
    """Copies with another ETag are dropped; with the expected checksum given, the
    size decides and both serve (the checksum checks the whole file)."""
    import hashlib

    first, other = servers(), servers(etag='"elsewhere"')
    got, dropped = _get(tmp_path / "strict", [first.url, other.url])
    assert got == body
    assert "ETag" in dropped[other.url]
    sent = other.bytes_sent
    checksum = "sha256=" + hashlib.sha256(body).hexdigest()
    got, dropped = _get(tmp_path / "loose", [first.url, other.url], checksum=checksum)
    assert got == body
    assert dropped == {}
    assert other.bytes_sent > sent
