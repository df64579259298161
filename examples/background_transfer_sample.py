"""Microsoft's BackgroundTransfer sample (Windows-universal-samples, Samples/BackgroundTransfer/cs),
its download scenarios ported to bgtransfer: the shape a developer porting a Windows app copies.

    python examples/background_transfer_sample.py http://server/dir/ --out DIR [--state-dir DIR]

The server directory must hold ``sample.bin`` (any size) and ``video.bin`` (3 MB or more, served
with ranges); ``missing-*.bin`` must not exist (they stand for the sample server's failures).
Each scenario logs as the sample does and ends with one line, ``Scenario N (...): completed``;
the exit status is 0 when every scenario completed.

How the Windows idioms read here (docs/api.md, "Porting from Windows", has the whole list):
``async void`` handlers are ``async def`` callbacks the engine runs as tasks; ``using
(args.GetDeferral())`` is ``with args.get_deferral():``; ``AsTask(cts.Token)`` is a task you
cancel; ``BackgroundTransferError.GetStatus(ex.HResult)`` is ``exc.web_error_status``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from engine import (
    BackgroundDownloader,
    BackgroundDownloadRangesDownloadedEventArgs,
    BackgroundTransferBehavior,
    BackgroundTransferCompletionGroup,
    BackgroundTransferCompletionGroupTriggerDetails,
    BackgroundTransferFileRange,
    BackgroundTransferGroup,
    BackgroundTransferPriority,
    BackgroundTransferStatus,
    DownloadOperation,
    TransferError,
    WebErrorStatus,
)

S = BackgroundTransferStatus
BYTES_PER_MEGABYTE = 1_000_000


def log(message: str) -> None:
    print(message, flush=True)


def is_web_exception(title: str, exc: BaseException, download: DownloadOperation | None) -> bool:
    """The sample's IsExceptionHandled: a web error is logged and handled, others are not."""
    if not isinstance(exc, TransferError) or exc.web_error_status is None:
        return False
    who = f"{download.guid} - " if download is not None else ""
    log(f"Error: {who}{title}: {exc.web_error_status.name}")
    return True


def is_failed(download: DownloadOperation) -> bool:
    """CompletionGroupTask.IsFailed, unchanged: an error, a cancel, or a status other than 200."""
    if download.progress.status in (S.ERROR, S.CANCELED):
        return True
    response = download.get_response_information()
    return response is None or response.status_code != 200


async def cancel_active_downloads(downloads: list[DownloadOperation]) -> None:
    """Scenarios 5-7's CancelActiveDownloadsAsync: attach with an already-cancelled token."""
    tasks = [asyncio.ensure_future(download.attach_async()) for download in downloads]
    for task in tasks:
        task.cancel()  # canceledToken.Cancel() before anything ran: each download is canceled
    await asyncio.gather(*tasks, return_exceptions=True)
    if downloads:
        log(f"Canceled {len(downloads)} downloads.")


class Scenario1Download:
    """Downloads with progress; pause, resume and cancel all; discovery after a restart."""

    def __init__(self, base: str, out: Path, state_dir: Path | None) -> None:
        self.base, self.out, self.state_dir = base, out, state_dir
        self.active_downloads: list[DownloadOperation] = []
        self.tasks: list[asyncio.Task[None]] = []  # the CancellationTokenSource's reach
        self.completed = 0

    async def download_progress(self, download: DownloadOperation) -> None:
        """An ``async void`` progress handler: the engine runs it as a task."""
        current = download.progress  # a snapshot, as the sample copies it
        percent = 100
        if current.total_bytes_to_receive > 0:
            percent = current.bytes_received * 100 // current.total_bytes_to_receive
        log(f"Progress: {download.guid}, Status: {current.status.name}")
        log(
            f" - Transfered bytes: {current.bytes_received} of "
            f"{current.total_bytes_to_receive}, {percent}%"
        )
        if current.has_restarted:
            log(" - Download restarted")
        if current.has_response_changed:
            response = download.get_response_information()  # None for FTP and SFTP
            log(f" - Response updated; Header count: {len(response.headers) if response else 0}")

    async def handle_download(self, download: DownloadOperation, start: bool) -> None:
        try:
            log(f"Running: {download.guid}")
            self.active_downloads.append(download)
            if start:
                await download.start_async(self.download_progress)
            else:
                await download.attach_async(self.download_progress)
            response = download.get_response_information()
            status_code = str(response.status_code) if response is not None else ""
            log(f"Completed: {download.guid}, Status Code: {status_code}")
            self.completed += not is_failed(download)
        except asyncio.CancelledError:
            log(f"Canceled: {download.guid}")  # TaskCanceledException
        except TransferError as exc:
            if not is_web_exception("Execution error", exc, download):
                raise
        finally:
            self.active_downloads.remove(download)

    def start_download(self, name: str, priority: BackgroundTransferPriority) -> None:
        downloader = BackgroundDownloader(state_dir=self.state_dir)
        download = downloader.create_download(self.base + name, self.out / name)
        log(
            f"Downloading {self.base + name} to {name} with {priority.name} priority, "
            f"{download.guid}"
        )
        download.priority = priority
        self.tasks.append(asyncio.ensure_future(self.handle_download(download, True)))

    def pause_all(self) -> None:
        self.for_each_in(S.RUNNING, DownloadOperation.pause, "Paused")

    def resume_all(self) -> None:
        self.for_each_in(S.PAUSED_BY_APPLICATION, DownloadOperation.resume, "Resumed")

    def for_each_in(
        self, status: BackgroundTransferStatus, act: Callable[[DownloadOperation], None], did: str
    ) -> None:
        """PauseAll_Click / ResumeAll_Click: act on the downloads in ``status``, skip others."""
        log(f"Downloads: {len(self.active_downloads)}")
        for download in self.active_downloads:
            current = download.progress  # a snapshot: Progress changes while we look
            if current.status is status:
                act(download)
                log(f"{did}: {download.guid}")
            else:
                log(f"Skipped: {download.guid}, Status: {current.status.name}")

    def cancel_all(self) -> None:
        log(f"Canceling Downloads: {len(self.active_downloads)}")
        for task in self.tasks:
            task.cancel()  # cts.Cancel(): every download awaited through it is canceled

    async def discover_active_downloads(self) -> None:
        """On start: attach to what an earlier run of the app left, all at once."""
        downloads = await BackgroundDownloader(
            state_dir=self.state_dir
        ).get_current_downloads_async()
        log(f"Loading background downloads: {len(downloads)}")
        tasks = []
        for download in downloads:
            log(
                f"Discovered background download: {download.guid}, "
                f"Status: {download.progress.status.name}"
            )
            tasks.append(self.handle_download(download, False))
        await asyncio.gather(*tasks)

    async def run(self) -> bool:
        # An earlier run of the app created a download and ended before it finished.
        BackgroundDownloader(state_dir=self.state_dir).create_download(
            self.base + "sample.bin", self.out / "earlier.bin"
        )
        await self.discover_active_downloads()

        self.start_download("sample.bin", BackgroundTransferPriority.DEFAULT)
        self.start_download("video.bin", BackgroundTransferPriority.HIGH)
        await asyncio.sleep(0)
        self.pause_all()
        self.resume_all()
        await asyncio.gather(*self.tasks)
        self.tasks = []

        self.start_download("video.bin", BackgroundTransferPriority.DEFAULT)
        await asyncio.sleep(0)  # it started: awaiting start_async
        self.cancel_all()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        return self.completed == 3 and not self.active_downloads


class Scenario4CompletionGroups:
    """Ten downloads in a completion group; its task counts failures and retries them."""

    def __init__(self, base: str, out: Path, state_dir: Path | None) -> None:
        self.base, self.out, self.state_dir = base, out, state_dir
        self.rounds: list[tuple[int, int]] = []
        self.done = asyncio.get_running_loop().create_future()

    def create_background_downloader(self) -> BackgroundDownloader:
        completion_group = BackgroundTransferCompletionGroup()
        completion_group.trigger.register(self.completion_group_task)  # builder.SetTrigger
        return BackgroundDownloader(state_dir=self.state_dir, completion_group=completion_group)

    async def completion_group_task(
        self, details: BackgroundTransferCompletionGroupTriggerDetails
    ) -> None:
        """CompletionGroupTask.Run: runs once every member has ended, well or not."""
        failed = [download for download in details.downloads if is_failed(download)]
        succeeded = len(details.downloads) - len(failed)
        log(f"{succeeded} downloads succeeded. {len(failed)} downloads failed.")
        self.rounds.append((succeeded, len(failed)))
        if failed and len(self.rounds) == 1:
            self.retry_downloads(failed)
        else:
            self.done.get_loop().call_soon_threadsafe(self.done.set_result, None)

    def retry_downloads(self, downloads: list[DownloadOperation]) -> None:
        downloader = self.create_background_downloader()
        for retried in downloads:
            name = retried.result_file.stem + "_retried" + retried.result_file.suffix
            download = downloader.create_download(retried.requested_uri, self.out / name)
            download.start()  # not awaited: a future task instance handles the outcome
        assert downloader.completion_group is not None
        downloader.completion_group.enable()

    async def run(self) -> bool:
        downloader = self.create_background_downloader()
        for i in range(10):
            name = f"missing-{i}.bin" if i in (3, 7) else "sample.bin"
            download = downloader.create_download(self.base + name, self.out / f"picture{i}.png")
            download.start()
        assert downloader.completion_group is not None
        downloader.completion_group.enable()
        log("Completion group enabled.")
        await asyncio.wait_for(self.done, 120)
        return self.rounds == [(8, 2), (0, 2)]


class Scenario5RandomAccess:
    """Read a download while it runs; RangesDownloaded with a deferral."""

    def __init__(self, base: str, out: Path, state_dir: Path | None) -> None:
        self.base, self.out, self.state_dir = base, out, state_dir
        self.received: list[BackgroundTransferFileRange] = []

    async def on_ranges_downloaded(
        self, sender: DownloadOperation, args: BackgroundDownloadRangesDownloadedEventArgs
    ) -> None:
        with args.get_deferral():  # using (args.GetDeferral())
            message = " Newly-downloaded ranges: " + format_ranges(args.added_ranges)
            if args.was_download_restarted:
                message += " (download was restarted)"
                self.received.clear()
            await asyncio.sleep(0)  # the UI update the sample awaits
            self.received.extend(args.added_ranges)
            log(message)

    async def run(self) -> bool:
        downloader = BackgroundDownloader(state_dir=self.state_dir)
        await cancel_active_downloads(await downloader.get_current_downloads_async())
        download = downloader.create_download(self.base + "video.bin", self.out / "video.bin")
        download.is_random_access_required = True
        download.ranges_downloaded.subscribe(self.on_ranges_downloaded)
        stream = download.get_result_random_access_stream_reference()
        download_task = asyncio.ensure_future(download.start_async())
        reads = 0
        while not download_task.done():
            offset = stream.tell()
            data = await stream.read_async(BYTES_PER_MEGABYTE)  # a task a seek may cancel
            reads += 1
            log(f"Reading from offset {offset:,}, completed with {len(data):,} bytes")
            if reads == 1:
                stream.seek(2 * BYTES_PER_MEGABYTE)  # the seek slider, at 2 MB
            elif not data:
                stream.seek(0)  # EOF: wrap around while the download completes
        await download_task
        stream.close()
        log("Download completed successfully")
        size = download.progress.total_bytes_to_receive
        for _ in range(1000):  # the last RangesDownloaded event may still be on its way
            if sum(r.length for r in self.received) == size:
                break
            await asyncio.sleep(0.01)
        return sum(r.length for r in self.received) == size and reads > 0


def format_ranges(ranges: list[BackgroundTransferFileRange]) -> str:
    text = ", ".join(f"{r.offset}-{r.offset + r.length - 1}" for r in ranges)
    return text or "None"


class Scenario6RecoverableErrors:
    """An expired URL pauses the download; the app gives it a new URL and resumes it."""

    def __init__(self, base: str, out: Path, state_dir: Path | None) -> None:
        self.base, self.out, self.state_dir = base, out, state_dir
        self.download: DownloadOperation | None = None
        self.expired_seen = False

    async def on_download_progress(self, download: DownloadOperation) -> None:
        current = download.progress
        if current.has_restarted:
            log("Download has restarted.")
        if current.status is S.PAUSED_RECOVERABLE_WEB_ERROR_STATUS and not self.expired_seen:
            assert download.current_web_error_status is WebErrorStatus.NOT_FOUND
            log("URL has expired.")
            self.expired_seen = True
            log("Updating URL and resuming the download.")
            download.requested_uri = self.base + "video.bin"
            download.resume()

    async def run(self) -> bool:
        downloader = BackgroundDownloader(state_dir=self.state_dir)
        await cancel_active_downloads(await downloader.get_current_downloads_async())
        download = downloader.create_download(
            self.base + "missing-expired.bin", self.out / "recovered.bin"
        )
        download.is_random_access_required = True
        # The sample declares 403 recoverable for its expiring URLs; the stand-in here is 404.
        download.recoverable_web_error_statuses.add(WebErrorStatus.NOT_FOUND)
        try:
            await download.start_async(self.on_download_progress)
            log("Download completed successfully")
        except TransferError as exc:
            is_web_exception("Execution error", exc, download)
            return False
        return self.expired_seen


class Scenario7DownloadReordering:
    """A SERIALIZED group of five downloads; one is made current and runs next."""

    num_downloads = 5

    def __init__(self, base: str, out: Path, state_dir: Path | None) -> None:
        self.base, self.out, self.state_dir = base, out, state_dir
        self.reorder_group = BackgroundTransferGroup.create_group(
            "{7421B969-18D4-4532-B6BD-22BDABF71C08}", state_dir=state_dir
        )
        self.reorder_group.transfer_behavior = BackgroundTransferBehavior.SERIALIZED
        self.finished: list[int] = []

    async def download(self, i: int, download: DownloadOperation) -> None:
        try:
            await download.start_async()
            self.finished.append(i)
            log(f"Downloading {download.result_file.name} completed.")
        except TransferError as exc:
            if download.progress.status is not S.CANCELED:
                is_web_exception("Execution error", exc, download)

    async def run(self) -> bool:
        downloader = BackgroundDownloader(state_dir=self.state_dir)
        found = await downloader.get_current_downloads_for_transfer_group_async(self.reorder_group)
        await cancel_active_downloads(found)
        downloader = BackgroundDownloader(
            state_dir=self.state_dir, transfer_group=self.reorder_group
        )
        downloads = [
            downloader.create_download(self.base + "video.bin", self.out / f"{i}.video.bin")
            for i in range(self.num_downloads)
        ]
        tasks = [asyncio.ensure_future(self.download(i, d)) for i, d in enumerate(downloads)]
        await asyncio.sleep(0)
        downloads[-1].make_current_in_transfer_group()  # MakeCurrent_Click on the last row
        log(f"Made current: {downloads[-1].result_file.name}")
        await asyncio.gather(*tasks)
        log(f"Completion order: {self.finished}")
        return sorted(self.finished) == list(range(self.num_downloads))


class Scenario(Protocol):
    async def run(self) -> bool: ...


SCENARIOS: list[tuple[str, Callable[[str, Path, Path | None], Scenario]]] = [
    ("Scenario 1 (download)", Scenario1Download),
    ("Scenario 4 (completion groups)", Scenario4CompletionGroups),
    ("Scenario 5 (random access)", Scenario5RandomAccess),
    ("Scenario 6 (recoverable errors)", Scenario6RecoverableErrors),
    ("Scenario 7 (download reordering)", Scenario7DownloadReordering),
]


async def main(base: str, out: Path, state_dir: Path | None) -> int:
    failures = 0
    for title, make in SCENARIOS:
        log(f"== {title}")
        ok = await make(base, out, state_dir).run()
        log(f"{title}: {'completed' if ok else 'FAILED'}")
        failures += not ok
    return 1 if failures else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="the server directory's URL (ends with /)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the results")
    parser.add_argument("--state-dir", type=Path, default=None, help="bgtransfer's state")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    base = args.base if args.base.endswith("/") else args.base + "/"
    sys.exit(asyncio.run(main(base, args.out, args.state_dir)))
