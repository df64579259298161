"""Every fault the test server injects, over 1 and 8 connections: a byte-exact file, or
ERROR with the matching WebErrorStatus and nothing under the final name."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from outcomes import OUTCOMES
from servers import FaultServer

from engine import (
    BackgroundDownloader,
    BackgroundTransferStatus,
    TransferConfig,
    TransferError,
    WebErrorStatus,
)
from engine._disk.core import control_path, part_path

S = BackgroundTransferStatus
W = WebErrorStatus
CONFIG = TransferConfig(
    poll_interval=0.05,
    backoff_base=0.05,
    backoff_max=1.0,
    response_timeout=1.0,  # a stall is noticed after a second
    first_request=1 << 20,
    chunk_size=1 << 20,
    min_split=256 << 10,
    max_redirects=5,
    block_size=1 << 16,
)

# fault -> None for "byte-exact", else the WebErrorStatus the operation must end with
FAULTS: dict[str, WebErrorStatus | None] = {
    "reset": None,
    "stall": None,
    "503-once": None,
    "429-once": None,
    "truncate": None,
    "no-ranges": None,
    "change": None,
    "trickle": None,
    "wrong-range": W.ERROR_HTTP_INVALID_SERVER_RESPONSE,
    "redirect-loop": W.REDIRECT_FAILED,
    "garbage": W.ERROR_HTTP_INVALID_SERVER_RESPONSE,
    "404": W.NOT_FOUND,
}


@pytest.mark.parametrize("connections", [1, 8])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault(fault: str, connections: int, tmp_path: Path) -> None:
    """One cell of the matrix."""
    rng = random.Random(f"{fault}-{connections}")
    body = rng.randbytes(3 * (1 << 20) + 12345)
    server = FaultServer(body)
    if fault == "trickle":
        server.rate = 1 << 20
    else:
        server.fault = fault
        server.faults_left = 2
        server.fault_after = rng.randrange(1, len(body) // 2)  # reset/truncate/stall point
        server.stall_seconds = 2.5
        server.new_body = rng.randbytes(len(body))
    out = tmp_path / "out.bin"
    d = BackgroundDownloader(
        state_dir=tmp_path / "state",
        config=CONFIG,
        max_connections_per_file=connections,
        block_size=CONFIG.block_size,
    )
    op = d.create_download(server.url, out)
    want = FAULTS[fault]
    try:
        try:
            op.start().wait(60)
            outcome, detail = "byte-exact", f"{server.requests} requests"
        except TransferError as exc:
            outcome, detail = (
                "ERROR",
                f"{exc.web_error_status.name if exc.web_error_status else None}",
            )
    finally:
        server.close()
    OUTCOMES.append((fault, connections, outcome, detail))
    if want is None:
        assert outcome == "byte-exact", detail
        expected = server.new_body if fault == "change" else body
        assert out.read_bytes() == expected
        if fault == "change":
            assert op.progress.has_response_changed
    else:
        assert op.status is S.ERROR
        assert op.current_web_error_status is want, detail
        assert not out.exists()
    assert not control_path(out).exists() or op.status is S.ERROR
    assert not part_path(out).exists() or op.status is S.ERROR
