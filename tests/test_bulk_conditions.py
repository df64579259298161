"""A bulk job's small files wait, as full operations do, for a network, for one that
is not metered (under UNRESTRICTED_ONLY) and for free space above the reserve; they
never fail for it, and go on by themselves once it is there.  Against nginx."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mounts import tmpfs
from network import SwitchableNetwork
from polling import wait_for
from servers import Nginx

from engine import (
    BackgroundDownloader,
    BackgroundTransferCostPolicy,
    BackgroundTransferStatus,
    BulkEntry,
)
from engine.bulk import BulkDownload, BulkResult

S = BackgroundTransferStatus
Make = Callable[..., BackgroundDownloader]
MIB = 1 << 20


Served = Callable[[str, int, int], None]


@pytest.fixture
def served(nginx: Nginx) -> Served:
    """Makes ``count`` files of ``size`` random bytes in nginx's folder ``folder``."""

    def make(folder: str, count: int, size: int) -> None:
        where = nginx.www / folder
        where.mkdir()
        for i in range(count):
            (where / f"f{i:02d}.bin").write_bytes(os.urandom(size))

    return make


def _requests(nginx: Nginx, folder: str) -> int:
    return (nginx.root / "access.log").read_text().count(f"GET /{folder}/")


class _Running:
    """A job of the ``files`` served from ``folder`` into ``out``, its ``run`` in a
    thread of its own; ``watched``: the full operations it made."""

    def __init__(
        self, d: BackgroundDownloader, nginx: Nginx, folder: str, out: Path, parallel: int
    ) -> None:
        out.mkdir()
        self.files = {p.name: p.read_bytes() for p in (nginx.www / folder).iterdir()}
        self.out = out
        self._log = (nginx, folder)
        entries = [BulkEntry(nginx.url(f"{folder}/{n}"), out / n) for n in self.files]
        self.watched: list[object] = []
        job = d.create_downloads(entries, parallel=parallel, watch=self.watched.append)
        self.job: BulkDownload = job
        self.result: list[BulkResult] = []
        self.thread = threading.Thread(target=lambda: self.result.append(job.run()))
        self.thread.start()

    def requests(self) -> int:
        """GETs of the job's files nginx logged."""
        return _requests(*self._log)

    def byte_exact(self) -> bool:
        return all((self.out / n).read_bytes() == data for n, data in self.files.items())

    def statuses(self) -> set[S]:
        return {f.status for f in self.job.files()}

    def end(self) -> BulkResult:
        self.thread.join(60)
        assert self.result, "the job did not end"
        return self.result[0]


Start = Callable[[BackgroundDownloader, str, Path, int], _Running]


@pytest.fixture
def start(nginx: Nginx) -> Iterator[Start]:
    """Starts a job (``_Running``); each is waited for at the end of the test."""
    started: list[_Running] = []

    def begin(d: BackgroundDownloader, folder: str, out: Path, parallel: int) -> _Running:
        started.append(_Running(d, nginx, folder, out, parallel))
        return started[-1]

    yield begin
    for run in started:
        run.thread.join(60)


def test_small_files_wait_for_a_network_then_go_on(
    served: Served, tmp_path: Path, make_downloader: Make, network: SwitchableNetwork, start: Start
) -> None:
    """No network: every small file waits in PAUSED_NO_NETWORK, nothing is requested and
    nothing fails; the network back, they complete byte-exact on the lean path."""
    served("offline", 12, 5000)
    network.connected = False
    run = start(make_downloader(), "offline", tmp_path / "out", 4)
    wait_for(lambda: run.statuses() == {S.PAUSED_NO_NETWORK})
    asked = network.asked
    wait_for(lambda: network.asked > asked)  # it looked again, and still waits
    assert run.statuses() == {S.PAUSED_NO_NETWORK}
    assert run.requests() == 0
    assert os.listdir(run.out) == []
    network.connected = True
    result = run.end()
    assert (result.failed, result.downloaded) == ([], len(run.files))
    assert run.watched == []  # no full operation: every file took the lean path
    assert run.byte_exact()


def test_small_files_wait_for_a_network_that_is_not_metered(
    served: Served, tmp_path: Path, make_downloader: Make, network: SwitchableNetwork, start: Start
) -> None:
    """UNRESTRICTED_ONLY on a metered network: small files wait in PAUSED_COSTED_NETWORK
    (still on the lean path); the network unmetered, they complete."""
    served("metered", 6, 3000)
    network.metered = True
    d = make_downloader(cost_policy=BackgroundTransferCostPolicy.UNRESTRICTED_ONLY)
    run = start(d, "metered", tmp_path / "out", 8)
    wait_for(lambda: run.statuses() == {S.PAUSED_COSTED_NETWORK})
    assert run.requests() == 0
    network.metered = False
    result = run.end()
    assert (result.failed, result.downloaded, run.watched) == ([], len(run.files), [])
    assert run.byte_exact()


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs mounted for the test (the suite runs as root, as CI does)."""
    with tmpfs(tmp_path / "disk", "16m") as mnt:
        yield mnt


def _free(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def test_small_files_wait_under_the_free_space_reserve(
    served: Served, disk: Path, make_downloader: Make, start: Start
) -> None:
    """Free space under the reserve: small files wait in PAUSED_SYSTEM_POLICY, none
    requested; space freed, they go on by themselves."""
    served("lowspace", 8, 100_000)
    ballast = disk / "ballast"
    ballast.write_bytes(b"\0" * 13 * MIB)  # 3 MiB free, 4 kept
    d = make_downloader()
    d.free_space_reserve = 4 * MIB
    run = start(d, "lowspace", disk / "out", 4)
    wait_for(lambda: run.statuses() == {S.PAUSED_SYSTEM_POLICY})
    assert run.requests() == 0
    ballast.unlink()
    result = run.end()
    assert (result.failed, result.downloaded) == ([], len(run.files))
    assert run.byte_exact()


def test_small_files_written_fast_never_eat_into_the_reserve(
    served: Served, disk: Path, make_downloader: Make, start: Start
) -> None:
    """Files written faster than the free space is looked at still stop at the reserve
    (each body counted against the last look): those past it wait with their bodies,
    and complete once the reserve is lowered."""
    served("filling", 12, MIB)
    d = make_downloader()
    d.free_space_reserve = 9 * MIB  # 16 MiB: room for about 7 of the 12 above it
    run = start(d, "filling", disk / "out", 12)
    files = run.files
    wait_for(lambda: S.PAUSED_SYSTEM_POLICY in run.statuses() and S.RUNNING not in run.statuses())
    done = {f.result_file.name for f in run.job.files() if f.status is S.COMPLETED}
    assert 0 < len(done) < len(files)
    assert _free(disk) >= 9 * MIB
    assert sorted(os.listdir(run.out)) == sorted(done)  # nothing partial beside them
    d.free_space_reserve = 0
    result = run.end()
    assert (result.failed, result.downloaded) == ([], len(files))
    assert run.requests() == len(files)  # the waiting bodies were kept
    assert run.byte_exact()
