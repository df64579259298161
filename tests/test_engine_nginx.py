"""The segmented engine against real nginx: byte-exact files, one request for small ones."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from servers import Nginx, sha256

from engine._disk.core import control_path, part_path
from engine._download.segmented import SegmentedDownload
from engine.config import TransferConfig
from engine.errors import HttpError, TransportError
from engine.web_error import WebErrorStatus

Run = Callable[[Any], Any]


def test_big_file_over_eight_connections_is_byte_exact(
    nginx: Nginx, tmp_path: Path, run: Run
) -> None:
    """48 MiB over 8 ranged connections ends byte-exact, with no partial files left."""
    out = tmp_path / "big.bin"
    cfg = TransferConfig(connections=8, first_request=1 << 20, chunk_size=4 << 20)
    job = SegmentedDownload(nginx.url("big.bin"), out, config=cfg)
    run(job.run())
    assert sha256(out) == sha256(nginx.www / "big.bin")
    assert not part_path(out).exists()
    assert not control_path(out).exists()
    ranged = [line for line in nginx.requests() if " 206 " in line]
    assert len(ranged) >= 8


def test_small_file_costs_one_request(nginx: Nginx, tmp_path: Path, run: Run) -> None:
    """A file smaller than the first request is fetched by that single request."""
    before = len(nginx.requests())
    out = tmp_path / "small.bin"
    run(SegmentedDownload(nginx.url("small.bin"), out).run())
    assert out.read_bytes() == (nginx.www / "small.bin").read_bytes()
    assert len(nginx.requests()) == before + 1


def test_empty_file(nginx: Nginx, tmp_path: Path, run: Run) -> None:
    """A zero-byte file downloads to an empty result file."""
    out = tmp_path / "empty.bin"
    run(SegmentedDownload(nginx.url("empty.bin"), out).run())
    assert out.read_bytes() == b""


def test_not_found_is_http_error_and_leaves_nothing(nginx: Nginx, tmp_path: Path, run: Run) -> None:
    """404 raises HttpError(NOT_FOUND); neither the result nor partial files exist."""
    out = tmp_path / "missing.bin"
    with pytest.raises(HttpError) as info:
        run(SegmentedDownload(nginx.url("missing.bin"), out).run())
    assert info.value.web_error_status is WebErrorStatus.NOT_FOUND
    assert info.value.status_code == 404
    assert not out.exists()
    assert not part_path(out).exists()


def test_refused_connection_is_cannot_connect(tmp_path: Path, run: Run) -> None:
    """Nothing listening: after the retries, TransportError(CANNOT_CONNECT)."""
    from servers import free_port

    cfg = TransferConfig(retries=1, backoff_base=0.01)
    url = f"http://127.0.0.1:{free_port()}/x"
    with pytest.raises(TransportError) as info:
        run(SegmentedDownload(url, tmp_path / "x", config=cfg).run())
    assert info.value.web_error_status is WebErrorStatus.CANNOT_CONNECT
    assert not (tmp_path / "x").exists()
