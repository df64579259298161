"""The status machine: every pair of the table, and every status the engine produces."""

from __future__ import annotations

import errno
import resource
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from network import SwitchableNetwork
from polling import wait_for
from servers import FaultServer, Nginx, free_port, sha256

from engine import (
    BackgroundDownloader,
    BackgroundTransferCostPolicy,
    BackgroundTransferStatus,
    InvalidStateError,
    StorageError,
    TransportError,
    WebErrorStatus,
)
from engine._disk.core import control_path
from engine._ops.states import TERMINAL, TRANSITIONS, Event, next_status
from engine._state.store import Store

S = BackgroundTransferStatus
Make = Callable[..., BackgroundDownloader]


@pytest.mark.parametrize("status", list(S))
@pytest.mark.parametrize("event", list(Event))
def test_every_pair_of_the_table(status: S, event: Event) -> None:
    """Legal pairs move where the table says; illegal ones raise InvalidStateError."""
    legal = TRANSITIONS[status]
    if event in legal:
        assert next_status(status, event) is legal[event]
    else:
        with pytest.raises(InvalidStateError, match=status.name):
            next_status(status, event)


def test_terminal_statuses_have_no_way_out() -> None:
    """COMPLETED and CANCELED are final; every status appears in the table."""
    assert set(TRANSITIONS) == set(S)
    for status in TERMINAL:
        assert TRANSITIONS[status] == {}
    reachable = {s for moves in TRANSITIONS.values() for s in moves.values()} | {S.IDLE}
    assert reachable == set(S)


def test_an_illegal_call_does_not_touch_the_database(
    nginx: Nginx, make_downloader: Make, tmp_path: Path
) -> None:
    """The persisted status is unchanged after a refused call."""
    op = make_downloader().create_download(nginx.url("small.bin"), tmp_path / "s")
    store = Store.at(tmp_path / "state")
    before = store.get(str(op.guid))
    with pytest.raises(InvalidStateError):
        op.resume()
    after = store.get(str(op.guid))
    assert before is not None
    assert after is not None
    assert after.status == before.status == S.IDLE.value


def test_every_transition_is_persisted_before_it_is_reported(
    fault_server: FaultServer, make_downloader: Make, tmp_path: Path
) -> None:
    """What a progress callback sees is already in the state database."""
    fault_server.rate = 8 << 20
    op = make_downloader().create_download(fault_server.url, tmp_path / "f")
    store = Store.at(tmp_path / "state")
    mismatches: list[tuple[S, int]] = []
    calls = [0]

    def check(o: object) -> None:
        calls[0] += 1
        rec = store.get(str(op.guid))
        seen = op.status
        if rec is None:  # a finished operation's row is gone
            if seen not in TERMINAL:
                mismatches.append((seen, -1))
        elif rec.status != seen.value and seen is not S.RUNNING:
            mismatches.append((seen, rec.status))

    op.start(check)
    wait_for(lambda: op.progress.bytes_received > 0)
    op.pause()
    op.resume()
    op.wait(30)
    time.sleep(0.2)  # the last callbacks
    assert calls[0] > 3
    assert not mismatches
    assert store.get(str(op.guid)) is None


def test_no_network_pauses_and_resumes_by_itself(
    nginx: Nginx, make_downloader: Make, network: SwitchableNetwork, tmp_path: Path
) -> None:
    """Offline: PAUSED_NO_NETWORK; the network returns: it goes on and completes."""
    network.connected = False
    op = make_downloader().create_download(nginx.url("big.bin"), tmp_path / "n")
    op.start()
    wait_for(lambda: op.status is S.PAUSED_NO_NETWORK)
    time.sleep(0.2)
    assert op.status is S.PAUSED_NO_NETWORK
    network.connected = True
    op.wait(60)
    assert sha256(tmp_path / "n") == sha256(nginx.www / "big.bin")


def test_network_lost_mid_download_pauses_then_goes_on(
    fault_server: FaultServer,
    body: bytes,
    make_downloader: Make,
    network: SwitchableNetwork,
    tmp_path: Path,
) -> None:
    """The network goes while bytes flow: the running download stops in
    PAUSED_NO_NETWORK (the runner's watch), keeps what it has, and finishes
    byte-exact once the network is back."""
    fault_server.rate = 1 << 20
    op = make_downloader().create_download(fault_server.url, tmp_path / "m")
    op.start()
    wait_for(lambda: op.progress.bytes_received > 0)
    network.connected = False
    wait_for(lambda: op.status is S.PAUSED_NO_NETWORK)
    kept = op.progress.bytes_received
    assert 0 < kept < len(body)
    fault_server.rate = 0
    network.connected = True
    op.wait(60)
    assert op.status is S.COMPLETED
    assert (tmp_path / "m").read_bytes() == body


def test_unreachable_host_without_network_waits_instead_of_failing(
    make_downloader: Make, network: SwitchableNetwork, tmp_path: Path
) -> None:
    """A connection refused while the monitor says offline is PAUSED_NO_NETWORK, not ERROR."""
    port = free_port()
    op = make_downloader().create_download(f"http://127.0.0.1:{port}/file.bin", tmp_path / "u")
    network.connected = True
    op.start()
    time.sleep(0.05)
    network.connected = False  # the network went away: the refusal is its doing
    wait_for(lambda: op.status in (S.PAUSED_NO_NETWORK, S.ERROR))
    assert op.current_web_error_status is None
    op.cancel()
    assert op.progress.status is S.CANCELED


def test_unreachable_host_with_network_is_an_error(make_downloader: Make, tmp_path: Path) -> None:
    """Connection refused with the network up: retried, then ERROR CANNOT_CONNECT."""
    op = make_downloader().create_download(f"http://127.0.0.1:{free_port()}/x", tmp_path / "u")
    with pytest.raises(TransportError):
        op.start().wait(30)
    assert op.status is S.ERROR
    assert op.current_web_error_status is WebErrorStatus.CANNOT_CONNECT


def test_costed_network_under_unrestricted_only(
    nginx: Nginx, make_downloader: Make, network: SwitchableNetwork, tmp_path: Path
) -> None:
    """UNRESTRICTED_ONLY waits in PAUSED_COSTED_NETWORK while metered; DEFAULT does not."""
    network.metered = True
    d = make_downloader(cost_policy=BackgroundTransferCostPolicy.UNRESTRICTED_ONLY)
    op = d.create_download(nginx.url("small.bin"), tmp_path / "c")
    op.start()
    wait_for(lambda: op.status is S.PAUSED_COSTED_NETWORK)
    free = make_downloader().create_download(nginx.url("small.bin"), tmp_path / "d")
    free.start().wait(30)  # DEFAULT allows a metered network
    network.metered = False
    op.wait(30)
    assert (tmp_path / "c").read_bytes() == (nginx.www / "small.bin").read_bytes()


def test_low_disk_pauses_in_system_policy(
    nginx: Nginx, make_downloader: Make, tmp_path: Path
) -> None:
    """Free space under the reserve: PAUSED_SYSTEM_POLICY, resumed when it is enough again."""
    d = make_downloader()
    d.free_space_reserve = 1 << 62
    op = d.create_download(nginx.url("small.bin"), tmp_path / "l")
    op.start()
    wait_for(lambda: op.status is S.PAUSED_SYSTEM_POLICY)
    d.free_space_reserve = 0
    op.wait(30)
    assert op.status is S.COMPLETED


def test_a_file_system_without_capacity_is_no_reason_to_wait(
    nginx: Nginx, make_downloader: Make
) -> None:
    """/proc states no capacity at all: it cannot run low, so no reserve holds a download
    there.  It fails at its first write (StorageError) instead of waiting for ever in
    PAUSED_SYSTEM_POLICY."""
    op = make_downloader().create_download(nginx.url("small.bin"), "/proc/bgtransfer-test.bin")
    with pytest.raises(StorageError):
        op.start().wait(30)
    assert op.status is S.ERROR


def test_storage_failure_is_error_and_resume_finishes(
    fault_server: FaultServer, body: bytes, make_downloader: Make, tmp_path: Path
) -> None:
    """A write the OS refuses (EFBIG past RLIMIT_FSIZE) is ERROR; resume() later completes."""
    out = tmp_path / "f"
    op = make_downloader().create_download(fault_server.url, out)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(body) // 2, hard))
    try:
        with pytest.raises(StorageError) as info:
            op.start().wait(30)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert info.value.errno == errno.EFBIG
    assert op.status is S.ERROR
    assert not out.exists()
    op.resume()
    op.wait(30)
    assert out.read_bytes() == body
    assert not control_path(out).exists()
