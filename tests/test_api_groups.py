"""Priorities, transfer groups (PARALLEL, SERIALIZED, make_current) and completion groups."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from polling import wait_for
from servers import FaultServer, Nginx

from engine import (
    BackgroundDownloader,
    BackgroundTransferBehavior,
    BackgroundTransferCompletionGroup,
    BackgroundTransferGroup,
    BackgroundTransferPriority,
    BackgroundTransferStatus,
    DownloadOperation,
    InvalidStateError,
)
from engine._download.request import multi_for_loop as _multi_for_loop
from engine._net.connections import Slots
from engine._ops.scheduler import Scheduler
from engine._runtime.loop import engine_loop

S = BackgroundTransferStatus
Make = Callable[..., BackgroundDownloader]


class Job:
    def __init__(self, name: str, rank: int, seq: int, group: str | None = None) -> None:
        self.name, self.sort_key, self.serial_group = name, (rank, seq), group


def test_scheduler_admits_by_priority_then_queue_order() -> None:
    """With one place, HIGH goes first, then DEFAULT, then LOW; ties in queue order."""

    async def go() -> list[str]:
        sched = Scheduler(max_active=1)
        order: list[str] = []
        blocker = Job("blocker", 0, 0)
        await sched.admit(blocker)
        jobs = [Job("low", 2, 1), Job("default2", 1, 3), Job("high", 0, 4), Job("default1", 1, 2)]

        async def one(job: Job) -> None:
            await sched.admit(job)
            order.append(job.name)
            await asyncio.sleep(0)
            sched.release(job)

        tasks = [asyncio.ensure_future(one(j)) for j in jobs]
        await asyncio.sleep(0)
        sched.release(blocker)
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(go()) == ["high", "default1", "default2", "low"]


def test_scheduler_runs_one_member_of_a_serialized_group() -> None:
    """Members of a SERIALIZED group go one at a time, in queue order; others run beside."""

    async def go() -> list[list[str]]:
        sched = Scheduler(max_active=8)
        snapshots: list[list[str]] = []
        first = Job("g0", 1, 0, "g")
        await sched.admit(first)
        jobs = [Job("g2", 1, 2, "g"), Job("g1", 1, 1, "g"), Job("free", 1, 3)]
        admitted: list[str] = []
        asyncio.get_running_loop().call_later(0.02, sched.release, first)

        async def one(job: Job) -> None:
            await sched.admit(job)
            admitted.append(job.name)
            snapshots.append(list(admitted))
            await asyncio.sleep(0.01)
            admitted.remove(job.name)
            sched.release(job)

        await asyncio.gather(*(one(j) for j in jobs))
        return snapshots

    snaps = asyncio.run(go())
    assert snaps[0] == ["free"]  # not in the group: runs beside g0
    assert [s[-1] for s in snaps[1:]] == ["g1", "g2"]
    assert all(not {"g1", "g2"} <= set(s) for s in snaps)


def serial_downloader(make: Make, tmp_path: Path, name: str) -> BackgroundDownloader:
    """A downloader whose operations join the SERIALIZED group ``name``."""
    group = BackgroundTransferGroup.create_group(name, state_dir=tmp_path / "state")
    group.transfer_behavior = BackgroundTransferBehavior.SERIALIZED
    return make(transfer_group=group)


def test_serialized_group_downloads_one_at_a_time(
    fault_server: FaultServer, make_downloader: Make, tmp_path: Path
) -> None:
    """Real downloads in a SERIALIZED group: the second stays IDLE while the first runs."""
    fault_server.rate = 16 << 20
    d = serial_downloader(make_downloader, tmp_path, "serial")
    first = d.create_download(fault_server.url, tmp_path / "1")
    second = d.create_download(fault_server.url, tmp_path / "2")
    assert first.transfer_group == BackgroundTransferGroup.create_group(
        "serial", state_dir=tmp_path / "state"
    )
    first.start()
    second.start()
    statuses = []
    while first.status is not S.COMPLETED:
        statuses.append((first.status, second.status))
        time.sleep(0.01)
    assert all(s2 is S.IDLE for _, s2 in statuses)
    second.wait(30)
    again = BackgroundTransferGroup.create_group("serial", state_dir=tmp_path / "state")
    assert again.transfer_behavior is BackgroundTransferBehavior.SERIALIZED


def test_make_current_in_transfer_group_moves_it_first(
    fault_server: FaultServer, make_downloader: Make, tmp_path: Path
) -> None:
    """make_current_in_transfer_group: that operation and those after it go first."""
    fault_server.rate = 32 << 20
    d = serial_downloader(make_downloader, tmp_path, "q")
    group = d.transfer_group
    assert group is not None
    ops = [d.create_download(fault_server.url, tmp_path / f"{i}") for i in range(4)]
    finished: list[int] = []

    def done_in_order(i: int) -> Callable[[DownloadOperation], None]:
        def progress(o: DownloadOperation) -> None:
            if o.status is S.COMPLETED:
                finished.append(i)

        return progress

    for i, op in enumerate(ops):
        op.start(done_in_order(i))
    while ops[0].status is not S.RUNNING:
        time.sleep(0.005)
    ops[2].make_current_in_transfer_group()  # 0 runs on; 2 and 3 go before 1
    for op in ops:
        op.wait(60)
    deadline = time.monotonic() + 5
    while len(finished) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert finished == [0, 2, 3, 1]
    assert len(d.get_current_downloads_for_transfer_group(group)) == 0


def test_parallel_group_runs_together(
    fault_server: FaultServer, make_downloader: Make, tmp_path: Path
) -> None:
    """PARALLEL (the default) members run at the same time."""
    fault_server.rate = 8 << 20
    group = BackgroundTransferGroup.create_group("par", state_dir=tmp_path / "state")
    assert group.transfer_behavior is BackgroundTransferBehavior.PARALLEL
    d = make_downloader(transfer_group=group)
    ops = [d.create_download(fault_server.url, tmp_path / f"{i}") for i in range(3)]
    for op in ops:
        op.start()
    deadline = time.monotonic() + 10
    while not all(op.status is S.RUNNING for op in ops):
        assert time.monotonic() < deadline
        time.sleep(0.005)
    listed = d.get_current_downloads_for_transfer_group(group)
    assert {o.guid for o in listed} == {o.guid for o in ops}
    listed_async = asyncio.run(d.get_current_downloads_for_transfer_group_async(group))
    assert listed_async == listed  # the same objects: one per operation in a process
    for op in ops:
        op.wait(60)


def test_priority_change_takes_effect(nginx: Nginx, make_downloader: Make, tmp_path: Path) -> None:
    """Setting priority on a queued operation reorders it (observed through the scheduler)."""
    d = make_downloader(priority=BackgroundTransferPriority.LOW)
    op = d.create_download(nginx.url("small.bin"), tmp_path / "p")
    assert op.sort_key[0] == BackgroundTransferPriority.LOW.rank
    op.priority = BackgroundTransferPriority.HIGH
    assert op.sort_key[0] == BackgroundTransferPriority.HIGH.rank
    op.start().wait(30)


async def _engine_slots() -> Slots:
    return _multi_for_loop()[2]


def test_a_high_priority_download_gets_the_hosts_next_free_connection(
    nginx: Nginx, make_downloader: Make, tmp_path: Path
) -> None:
    """Requests to a host beyond its cap wait by priority, not in the order they came:
    with one request allowed, a HIGH download asked for after a waiting LOW one is
    served first, and the LOW one next (before the running download's next request).

    With one request at a time to the host, nginx's log (written as each request
    ends) is the order the slot was handed out in."""
    slots = engine_loop().submit(_engine_slots()).result()
    saved = slots.per_host
    tag = uuid.uuid4().hex  # the session's nginx logs every test's requests
    low = make_downloader(priority=BackgroundTransferPriority.LOW, max_connections_per_file=1)
    high = make_downloader(priority=BackgroundTransferPriority.HIGH)
    running = low.create_download(nginx.url("slow/big.bin"), tmp_path / "running")
    slots.per_host = 1
    try:
        running.start()  # 2 MB/s: its first request (4 MiB) holds the slot for 2 s
        wait_for(lambda: running.progress.bytes_received > 0)
        queued = low.create_download(nginx.url(f"small.bin?low-{tag}"), tmp_path / "queued")
        queued.start()
        wait_for(lambda: slots.waiting == 1)
        urgent = high.create_download(nginx.url(f"small.bin?high-{tag}"), tmp_path / "urgent")
        urgent.start()
        wait_for(lambda: slots.waiting == 2)
        assert running.status is S.RUNNING
        queued.wait(60)
        urgent.wait(60)
        served = [line for line in nginx.requests() if tag in line]
        assert len(served) == 2
        assert f"high-{tag}" in served[0]
        assert f"low-{tag}" in served[1]
        assert running.status is S.RUNNING  # its next request waited behind both
    finally:
        slots.per_host = saved
        if running.status is S.RUNNING:
            running.cancel()


def test_completion_group_fires_once_when_all_ended(
    nginx: Nginx, make_downloader: Make, tmp_path: Path
) -> None:
    """completed resolves with every member once all ended, failures included."""
    group = BackgroundTransferCompletionGroup()
    d = make_downloader(completion_group=group)
    ok = d.create_download(nginx.url("small.bin"), tmp_path / "ok")
    bad = d.create_download(nginx.url("missing.bin"), tmp_path / "bad")
    group.enable()
    with pytest.raises(InvalidStateError):
        group.enable()
    with pytest.raises(InvalidStateError):
        d.create_download(nginx.url("small.bin"), tmp_path / "late")
    called: list[list[DownloadOperation]] = []
    group.on_completed(called.append)

    async def go() -> list[DownloadOperation]:
        ok.start()
        bad.start()
        return await group.completed

    members = asyncio.run(go())
    assert {m.guid for m in members} == {ok.guid, bad.guid}
    assert ok.status is S.COMPLETED
    assert bad.status is S.ERROR
    assert len(called) == 1
