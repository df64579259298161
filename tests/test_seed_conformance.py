"""What a port of Microsoft's BackgroundTransfer sample relies on, as the reference documents it.

Each docstring quotes the Windows reference (learn.microsoft.com, Windows.Networking.
BackgroundTransfer) or the sample (Windows-universal-samples, Samples/BackgroundTransfer/cs)
that the test holds bgtransfer to.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from network import SwitchableNetwork
from polling import wait_for
from servers import FaultServer, Nginx

from engine import (
    BackgroundDownloader,
    BackgroundDownloadRangesDownloadedEventArgs,
    BackgroundTransferBehavior,
    BackgroundTransferCompletionGroup,
    BackgroundTransferCompletionGroupTriggerDetails,
    BackgroundTransferCostPolicy,
    BackgroundTransferGroup,
    BackgroundTransferPriority,
    BackgroundTransferStatus,
    DownloadOperation,
    HttpError,
    TransferConfig,
)

S = BackgroundTransferStatus
T = TypeVar("T")
Make = Callable[..., BackgroundDownloader]
Run = Callable[[Coroutine[Any, Any, T]], T]

MIB = 1 << 20
QUICK = TransferConfig(poll_interval=0.05, backoff_base=0.05, backoff_max=0.5, block_size=1 << 16)
"""The tests' quick polls and back-off (conftest's, which a module cannot import by name
when benchmarks/ has a conftest of its own)."""


@pytest.fixture(scope="module")
def files(nginx: Nginx) -> dict[str, bytes]:
    """Files of exact sizes under nginx's root."""
    made = {"seed-3m.bin": os.urandom(3 * MIB)}
    for name, data in made.items():
        (nginx.www / name).write_bytes(data)
    return made


@pytest.fixture
def paced() -> Iterator[Callable[..., FaultServer]]:
    """``paced(size, rate, fault="")``: a server of ``size`` random bytes sent at ``rate``
    bytes per second per connection (nginx's limit_rate lets the first megabytes out at
    once through loopback's socket buffers: no use for a pause mid-way)."""
    servers: list[FaultServer] = []

    def make(size: int, rate: int, fault: str = "") -> FaultServer:
        server = FaultServer(os.urandom(size), fault=fault)
        server.rate = rate
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def _when_completed(finished: list[str], name: str) -> Callable[[DownloadOperation], None]:
    """A progress callback that appends ``name`` once, when the operation completes."""

    def progress(op: DownloadOperation) -> None:
        if op.status is S.COMPLETED and name not in finished:
            finished.append(name)

    return progress


# -- 1. ResponseInformation.StatusCode ---------------------------------------------------


@pytest.mark.parametrize("name", ["small.bin", "seed-3m.bin"])
def test_a_completed_download_reports_200_and_keeps_the_wire_status(
    nginx: Nginx, files: dict[str, bytes], make_downloader: Make, tmp_path: Path, name: str
) -> None:
    """A completed download reports 200 (the sample's IsFailed); the 206 is in wire_status_code.

    Sample, CompletionGroupTask.IsFailed: "ResponseInformation response =
    download.GetResponseInformation(); if (response == null || response.StatusCode != 200)
    { return true; }".  Reference, ResponseInformation.StatusCode: "Gets the status code
    returned by the server."
    """
    op = make_downloader().create_download(nginx.url(name), tmp_path / name)
    op.start().wait(30)
    info = op.get_response_information()
    assert info is not None
    assert info.status_code == 200
    assert info.wire_status_code == 206  # every request asked for a range
    assert info.headers["Content-Range"].startswith("bytes ")


# -- 2. GetCurrentDownloadsAsync -----------------------------------------------------------


def test_get_current_downloads_leaves_grouped_operations_to_their_group(
    nginx: Nginx, make_downloader: Make, tmp_path: Path
) -> None:
    """get_current_downloads() lists ungrouped operations only; a group's come from its own call.

    Reference, BackgroundDownloader.GetCurrentDownloadsAsync(): "Returns a collection of
    pending downloads that are not associated with a BackgroundTransferGroup."
    GetCurrentDownloadsForTransferGroupAsync: "Gets all downloads associated with the
    provided BackgroundTransferGroup."
    """
    state = tmp_path / "state"
    group = BackgroundTransferGroup.create_group("scenario7", state_dir=state)
    plain = make_downloader().create_download(nginx.url("small.bin"), tmp_path / "a")
    grouped = make_downloader(transfer_group=group).create_download(
        nginx.url("small.bin"), tmp_path / "b"
    )
    d = BackgroundDownloader(state_dir=state)
    assert d.get_current_downloads() == [plain]
    assert asyncio.run(d.get_current_downloads_async()) == [plain]
    assert d.get_current_downloads_for_transfer_group(group) == [grouped]
    assert {op.guid for op in d.get_current_downloads(include_groups=True)} == {
        plain.guid,
        grouped.guid,
    }


# -- 3. A cancelled token given to StartAsync/AttachAsync ----------------------------------


def test_a_start_cancelled_before_its_first_step_cancels_the_download(
    nginx: Nginx, make_downloader: Make, tmp_path: Path, run: Run[None]
) -> None:
    """Cancelling the task of start_async() before it ran a step cancels the download.

    Sample, Scenario5/6/7 CancelActiveDownloadsAsync: "canceledToken.Cancel(); ...
    tasks[i] = downloads[i].AttachAsync().AsTask(canceledToken.Token);" to "cancel them
    now so that we can start this scenario cleanly".
    """
    op = make_downloader().create_download(nginx.url("small.bin"), tmp_path / "s")

    async def go() -> None:
        task = asyncio.ensure_future(op.start_async())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(go())
    assert op.status is S.CANCELED
    assert not (tmp_path / "s").exists()


def test_an_attach_cancelled_before_its_first_step_cancels_the_found_download(
    paced: Callable[..., FaultServer], make_downloader: Make, tmp_path: Path, run: Run[None]
) -> None:
    """A found download attached with a cancelled task is canceled, its partial data gone.

    Sample, Scenario6 CancelActiveDownloadsAsync: "If previous sample instances/scenarios
    started transfers that haven't completed yet, cancel them now", through
    "downloads[i].AttachAsync().AsTask(canceledToken.Token)".
    """
    out = tmp_path / "found.bin"
    first = make_downloader().create_download(paced(2 * MIB, MIB).url, out)
    first.start()
    wait_for(lambda: first.progress.bytes_received > 0)
    first.pause()
    (found,) = make_downloader().get_current_downloads()

    async def go() -> None:
        tasks = [asyncio.ensure_future(found.attach_async())]
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)

    run(go())
    assert found.status is S.CANCELED
    assert make_downloader().get_current_downloads() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


# -- 4. async void handlers and using (args.GetDeferral()) ---------------------------------


def test_async_handlers_run_and_hold_the_ranges_event_like_a_deferral(
    fault_server: FaultServer, body: bytes, make_downloader: Make, tmp_path: Path, run: Run[None]
) -> None:
    """async def handlers are awaited; a ranges event waits for them and a with-deferral.

    Sample, Scenario5 OnRangesDownloaded (an async void handler): "using
    (args.GetDeferral()) { ... await Dispatcher.RunAsync(...) }".  Reference,
    BackgroundTransferRangesDownloadedEventArgs.GetDeferral: "Deferral allows apps to carry
    out asynchronous work within their RangesDownloaded handler without receiving a new
    RangesDownloaded event in the meantime."
    """
    fault_server.rate = 4 * MIB  # several ticks, several events
    op = make_downloader(max_connections_per_file=2).create_download(
        fault_server.url, tmp_path / "r"
    )
    busy = [0]
    overlaps: list[int] = []
    added: list[tuple[int, int]] = []
    progress_seen: list[int] = []

    async def on_ranges(
        o: DownloadOperation, args: BackgroundDownloadRangesDownloadedEventArgs
    ) -> None:
        with args.get_deferral():
            busy[0] += 1
            overlaps.append(busy[0])
            await asyncio.sleep(0.05)  # work across awaits: no new event meanwhile
            added.extend((r.offset, r.length) for r in args.added_ranges)
            busy[0] -= 1

    async def on_progress(o: DownloadOperation) -> None:
        await asyncio.sleep(0)
        progress_seen.append(o.progress.bytes_received)

    async def go() -> None:
        op.ranges_downloaded.subscribe(on_ranges)
        await op.start_async(on_progress)
        for _ in range(2000):  # the last events' handlers, still awaiting, end
            if sum(n for _, n in added) >= len(body) and not busy[0]:
                break
            await asyncio.sleep(0.01)

    run(go())
    assert (tmp_path / "r").read_bytes() == body
    assert progress_seen
    assert overlaps
    assert max(overlaps) == 1
    assert sum(n for _, n in added) == len(body)


# -- 5. Priority within a SERIALIZED group --------------------------------------------------


def test_priority_orders_a_serialized_group(
    nginx: Nginx, paced: Callable[..., FaultServer], make_downloader: Make, tmp_path: Path
) -> None:
    """In a SERIALIZED group a HIGH member queued last runs next, a LOW one queued first runs last.

    Reference, BackgroundTransferPriority: "High: Ensures that the operation doesn't get
    placed at the very end of the queue, and is instead placed near the front." "Low:
    Ensures that the operation doesn't get placed at the very front of the queue, and is
    instead placed near the end."  DownloadOperation.Priority: "the transfer priority of
    this download operation when within a BackgroundTransferGroup".
    """
    group = BackgroundTransferGroup.create_group("serial", state_dir=tmp_path / "state")
    group.transfer_behavior = BackgroundTransferBehavior.SERIALIZED
    d = make_downloader(transfer_group=group, max_connections_per_file=1)
    finished: list[str] = []

    blocker = d.create_download(paced(1 * MIB, 512 << 10).url, tmp_path / "blocker")
    blocker.start(_when_completed(finished, "blocker"))
    wait_for(lambda: blocker.progress.bytes_received > 0)
    ops = {}
    for name, priority in [
        ("low", BackgroundTransferPriority.LOW),
        ("default1", BackgroundTransferPriority.DEFAULT),
        ("default2", BackgroundTransferPriority.DEFAULT),
        ("high", BackgroundTransferPriority.HIGH),
    ]:
        op = ops[name] = d.create_download(nginx.url("small.bin"), tmp_path / name)
        op.priority = priority
        op.start(_when_completed(finished, name))
    assert blocker.status is S.RUNNING  # everyone queued behind it
    for op in [blocker, *ops.values()]:
        op.wait(60)
    wait_for(lambda: len(finished) == 5)
    assert finished == ["blocker", "high", "default1", "default2", "low"]


# -- 6. BytesReceived -----------------------------------------------------------------------


def test_bytes_received_moves_with_the_data_not_a_block_at_a_time(
    paced: Callable[..., FaultServer], make_downloader: Make, tmp_path: Path
) -> None:
    """Progress reports bytes as they arrive: between whole blocks of the bitmap, never backwards.

    Reference, BackgroundDownloadProgress.BytesReceived: "The total number of data bytes
    received. This value does not include bytes received as response headers."
    """
    config = dataclasses.replace(QUICK, block_size=MIB, first_request=64 << 10)
    d = make_downloader(config=config, block_size=MIB, max_connections_per_file=1)
    op = d.create_download(paced(3 * MIB, 4 * MIB).url, tmp_path / "p")
    seen: list[int] = []
    op.start(lambda o: seen.append(o.progress.bytes_received)).wait(60)
    wait_for(lambda: bool(seen) and seen[-1] == 3 * MIB)
    between = [b for b in seen if 0 < b < 3 * MIB]
    assert any(b % MIB for b in between), seen  # not only whole 1 MiB blocks
    assert seen == sorted(seen)


# -- 7. Pause keeps what arrived; HasRestarted ----------------------------------------------


def _paused_at(op: DownloadOperation, received: int) -> tuple[DownloadOperation, list[bool]]:
    """Start ``op``, pause it once ``received`` bytes arrived; the has_restarted it reported."""
    restarted: list[bool] = []
    op.start(lambda o: restarted.append(o.progress.has_restarted))
    wait_for(lambda: op.progress.bytes_received >= received)
    op.pause()
    return op, restarted


def test_pausing_a_small_file_keeps_what_arrived(
    paced: Callable[..., FaultServer], make_downloader: Make, tmp_path: Path
) -> None:
    """A small file paused mid-way resumes from where it was: its bytes are fetched once.

    Reference, BackgroundDownloadProgress.HasRestarted: "When a download is interrupted
    and a new request is sent to the server to resume the download, HasRestarted is set
    to true if the server does not support resume and the download had to start over."
    (Here it supports resume: no start over.)
    """
    server = paced(2 * MIB, MIB)
    out = tmp_path / "small2m.bin"
    op, restarted = _paused_at(make_downloader().create_download(server.url, out), 600_000)

    def kept() -> int:
        return sum(r.length for r in op.get_downloaded_ranges())

    wait_for(lambda: kept() >= 600_000 - (16 << 10))
    op.resume()
    op.wait(60)
    assert out.read_bytes() == server.body
    resumed_from = int((server.ranges_seen[-1] or "bytes=0-").split("=")[1].split("-")[0])
    assert resumed_from >= 600_000 - (16 << 10)
    assert server.bytes_sent < len(server.body) + (256 << 10)
    assert True not in restarted


def test_a_server_without_ranges_restarts_a_paused_small_file_and_says_so(
    paced: Callable[..., FaultServer], make_downloader: Make, tmp_path: Path
) -> None:
    """From a server that ignores Range a resumed small file starts over: has_restarted once.

    Reference, BackgroundDownloadProgress.HasRestarted: "HasRestarted is set to true if
    the server does not support resume and the download had to start over.  HasRestarted
    is set to true only in the first progress notification sent after the restart."
    """
    server = paced(2 * MIB, MIB, fault="no-ranges")
    out = tmp_path / "norange.bin"
    op, restarted = _paused_at(make_downloader().create_download(server.url, out), 300_000)
    before = len(restarted)
    op.resume()
    op.wait(60)
    assert out.read_bytes() == server.body
    wait_for(lambda: restarted[-1] is False and len(restarted) > before)
    assert restarted[before:].count(True) == 1


# -- 8. GetResponseInformation after an HTTP error ------------------------------------------


def test_the_response_of_an_http_error_is_reported(
    nginx: Nginx, make_downloader: Make, tmp_path: Path
) -> None:
    """After a 404, get_response_information() is that response, so an IsFailed check sees 404.

    Reference, IBackgroundTransferOperation.GetResponseInformation: "Gets the response
    information.  Returns: Contains the data returned by a server response."  Sample,
    CompletionGroupTask.IsFailed: "response == null || response.StatusCode != 200".
    """
    op = make_downloader().create_download(nginx.url("no-such-file.bin"), tmp_path / "x")
    with pytest.raises(HttpError):
        op.start().wait(30)
    info = op.get_response_information()
    assert info is not None
    assert (info.status_code, info.wire_status_code) == (404, 404)
    assert info.actual_uri == nginx.url("no-such-file.bin")
    assert not info.is_resumable


# -- 9. HasResponseChanged ------------------------------------------------------------------


def test_has_response_changed_marks_each_new_response(
    paced: Callable[..., FaultServer], make_downloader: Make, tmp_path: Path
) -> None:
    """has_response_changed is true after the first response and a resume's, false between.

    Reference, BackgroundDownloadProgress.HasResponseChanged: "Whenever new response
    information is available due to a new request being invoked, this field is set to
    true. The application can then choose to read the new response information and
    update its state, if needed."
    """
    op = make_downloader().create_download(paced(2 * MIB, 2 * MIB).url, tmp_path / "c")
    seen: list[tuple[S, bool, bool]] = []

    def progress(o: DownloadOperation) -> None:
        p = o.progress
        seen.append((p.status, p.has_response_changed, o.get_response_information() is not None))

    op.start(progress)
    wait_for(lambda: any(changed for _, changed, _ in seen))  # the first response, told
    op.pause()
    paused_at = len(seen)
    op.resume()
    op.wait(60)
    wait_for(lambda: bool(seen) and seen[-1][0] is S.COMPLETED)
    changed = [c for _, c, _ in seen]
    assert True in changed[paused_at:]  # the resumed request's response
    assert False in changed  # not in every report: once per new response
    assert all(has_info for _, c, has_info in seen if c)


# -- 10. Completion group, groups across state directories, cost policy ---------------------


def test_completion_group_is_enabled_and_its_trigger_gets_every_download(
    nginx: Nginx, make_downloader: Make, tmp_path: Path
) -> None:
    """is_enabled follows enable(); a trigger's task gets every member, a failed one too.

    Reference, BackgroundTransferCompletionGroup.IsEnabled: "Gets a value that indicates
    if Enable method on a BackgroundTransferCompletionGroup has already been called."
    BackgroundTransferCompletionGroupTriggerDetails.Downloads: "Gets the list of
    DownloadOperation objects associated with the BackgroundTransferCompletionGroup."
    """
    group = BackgroundTransferCompletionGroup()
    d = make_downloader(completion_group=group)
    assert d.completion_group is group
    good = d.create_download(nginx.url("small.bin"), tmp_path / "good")
    bad = d.create_download(nginx.url("missing.bin"), tmp_path / "bad")
    got: list[BackgroundTransferCompletionGroupTriggerDetails] = []

    async def task(details: BackgroundTransferCompletionGroupTriggerDetails) -> None:
        await asyncio.sleep(0)
        got.append(details)

    group.trigger.register(task)
    assert not group.is_enabled
    good.start()
    bad.start()
    group.enable()
    assert group.is_enabled
    wait_for(lambda: bool(got))
    failed = [
        op
        for op in got[0].downloads
        if op.status in (S.ERROR, S.CANCELED)
        or (info := op.get_response_information()) is None
        or info.status_code != 200
    ]
    assert {op.guid for op in got[0].downloads} == {good.guid, bad.guid}
    assert failed == [bad]


def test_a_serialized_group_made_without_state_dir_stays_serialized_in_a_downloaders(
    nginx: Nginx,
    paced: Callable[..., FaultServer],
    make_downloader: Make,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A SERIALIZED group made without state_dir stays SERIALIZED in a downloader's state dir.

    Sample, Scenario7: "reorderGroup = BackgroundTransferGroup.CreateGroup(...);
    reorderGroup.TransferBehavior = BackgroundTransferBehavior.Serialized; ...
    downloader.TransferGroup = reorderGroup;".
    """
    monkeypatch.setenv("BGTRANSFER_STATE_DIR", str(tmp_path / "default-state"))
    group = BackgroundTransferGroup.create_group("reorder")
    group.transfer_behavior = BackgroundTransferBehavior.SERIALIZED
    d = make_downloader(transfer_group=group, max_connections_per_file=1)
    assert d.transfer_group is not None
    assert d.transfer_group.transfer_behavior is BackgroundTransferBehavior.SERIALIZED
    finished: list[str] = []
    slow = d.create_download(paced(256 << 10, 512 << 10).url, tmp_path / "slow")
    quick = d.create_download(nginx.url("small.bin"), tmp_path / "quick")
    slow.start(_when_completed(finished, "slow"))
    quick.start(_when_completed(finished, "quick"))
    slow.wait(60)
    quick.wait(60)
    wait_for(lambda: len(finished) >= 2)
    assert finished[:2] == ["slow", "quick"]


def test_a_cost_policy_change_releases_a_costed_pause_at_once(
    nginx: Nginx, make_downloader: Make, tmp_path: Path, network: SwitchableNetwork
) -> None:
    """Allowing metered networks resumes a PAUSED_COSTED_NETWORK download at once, not at a poll.

    Reference, BackgroundTransferCostPolicy.UnrestrictedOnly: "Do not allow transfers on
    metered networks."  BackgroundTransferStatus.PausedCostedNetwork: "The transfer is
    paused due to cost policy (for example, transitioned to a costed 3G network)."
    """
    network.metered = True
    slow_polls = dataclasses.replace(QUICK, poll_interval=3600.0)
    d = make_downloader(
        config=slow_polls, cost_policy=BackgroundTransferCostPolicy.UNRESTRICTED_ONLY
    )
    op = d.create_download(nginx.url("small.bin"), tmp_path / "m")
    op.start()
    wait_for(lambda: op.status is S.PAUSED_COSTED_NETWORK)
    op.cost_policy = BackgroundTransferCostPolicy.ALWAYS
    op.wait(30)  # an hour's poll would fail this
    assert (tmp_path / "m").read_bytes() == (nginx.www / "small.bin").read_bytes()
