"""Several sources, adaptive connections and rate limits carried through the service
process to its engine, by the command line and by ``service=True``."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from polling import wait_for
from servers import FaultServer
from service_env import ServiceEnv, svc_fixture  # noqa: F401 (a fixture)

from engine import BackgroundDownloader, BackgroundTransferStatus

SIZE = 6 << 20


@pytest.fixture
def pair() -> Iterator[tuple[FaultServer, FaultServer, bytes]]:
    """Two copies of one file: the first answers 503 to everything, the second serves."""
    body = os.urandom(SIZE)
    busy, good = FaultServer(body, fault="503"), FaultServer(body)
    good.last_modified = busy.last_modified
    try:
        yield busy, good, body
    finally:
        busy.close()
        good.close()


def _stored(svc: ServiceEnv, guid: str) -> sqlite3.Row:
    """The operation's row in the service's state database."""
    db = sqlite3.connect(svc.state_dir / "operations.sqlite3")
    db.row_factory = sqlite3.Row
    try:
        row: sqlite3.Row = db.execute("SELECT * FROM operations WHERE guid = ?", (guid,)).fetchone()
        return row
    finally:
        db.close()


def test_get_background_takes_several_urls_and_the_service_drops_the_busy_one(
    svc: ServiceEnv, pair: tuple[FaultServer, FaultServer, bytes], tmp_path: Path
) -> None:
    """get --background BUSY GOOD: the service downloads from GOOD byte-exact, with
    adaptive connections (no -c) and the rate limit it was given stored."""
    busy, good, body = pair
    out = tmp_path / "out.bin"
    got = svc.cli("get", "--background", busy.url, good.url, "-o", str(out), "--limit-rate", "64M")
    assert got.returncode == 0, got.stderr
    guid = got.stdout.strip()
    row = _stored(svc, guid)
    assert row["max_connections"] == 0  # "auto", as the engine stores it
    assert row["max_rate"] == 64 << 20
    assert busy.url in row["sources"] or good.url in row["sources"]
    waited = svc.cli("wait", guid)
    assert waited.returncode == 0, waited.stderr
    assert out.read_bytes() == body
    assert busy.requests >= 1
    assert busy.bytes_sent == 0


def test_service_downloader_carries_sources_auto_and_the_limit(
    svc: ServiceEnv, pair: tuple[FaultServer, FaultServer, bytes], tmp_path: Path
) -> None:
    """create_download(busy, sources=[good]) with service=True completes byte-exact in
    the service, with adaptive connections; max_bytes_per_second set through it reads
    back and is stored with the operation."""
    busy, good, body = pair
    d = BackgroundDownloader(state_dir=svc.state_dir, service=True)
    op = d.create_download(busy.url, tmp_path / "a.bin", sources=[good.url])
    op.max_bytes_per_second = 100 << 20
    assert op.max_bytes_per_second == 100 << 20
    row = _stored(svc, str(op.guid))
    assert (row["max_connections"], row["max_rate"]) == (0, 100 << 20)
    op.start().wait(60)
    assert op.status is BackgroundTransferStatus.COMPLETED
    assert (tmp_path / "a.bin").read_bytes() == body
    assert busy.bytes_sent == 0


def test_resume_limit_rate_through_the_service_is_stored(
    svc: ServiceEnv, pair: tuple[FaultServer, FaultServer, bytes], tmp_path: Path
) -> None:
    """resume GUID --limit-rate 2M while the service runs sets the limit there, on
    the operation the service holds (it reads back through the API)."""
    busy, good, body = pair
    d = BackgroundDownloader(state_dir=svc.state_dir, service=True)
    op = d.create_download(busy.url, tmp_path / "b.bin", sources=[good.url])
    resumed = subprocess.Popen(
        [sys.executable, "-m", "engine", "resume", str(op.guid), "--limit-rate", "2M"],
        env=svc.env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:  # 6 MiB at 2 MiB/s: seconds in which the row is there to read
        wait_for(lambda: (_stored(svc, str(op.guid)) or {"max_rate": 0})["max_rate"] == 2 << 20)
        _, err = resumed.communicate(timeout=60)
    finally:
        resumed.kill()
    assert resumed.returncode == 0, err
    assert (tmp_path / "b.bin").read_bytes() == body
