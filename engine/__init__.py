"""bgtransfer: background downloads with the Windows DownloadOperation API, in Python.

Everything docs/api.md lists is importable from here, and ``run`` (drive many
operations from a coroutine on the engine's own loop); the submodules with a leading
underscore are private.
"""

from engine._runtime.conditions import LinuxNetworkMonitor, NetworkMonitor
from engine._runtime.loop import run
from engine.bulk import BulkDownload, BulkEntry, BulkFile, BulkResult
from engine.config import Durability, TransferConfig
from engine.downloader import (
    BackgroundDownloader,
    BackgroundTransferCompletionGroup,
    BackgroundTransferCompletionGroupTrigger,
    BackgroundTransferCompletionGroupTriggerDetails,
    BackgroundTransferGroup,
    serve_through,
)
from engine.errors import (
    ControlFileError,
    HttpError,
    IntegrityError,
    InvalidRequestError,
    InvalidStateError,
    ResultFileInUseError,
    StorageError,
    TransferCanceled,
    TransferError,
    TransferTimeoutError,
    TransportError,
)
from engine.operation import DownloadOperation
from engine.values import (
    BackgroundDownloadProgress,
    BackgroundDownloadRangesDownloadedEventArgs,
    BackgroundTransferBehavior,
    BackgroundTransferCostPolicy,
    BackgroundTransferFileRange,
    BackgroundTransferPriority,
    BackgroundTransferStatus,
    Credential,
    Deferral,
    ResponseInformation,
)
from engine.web_error import WebErrorStatus


def _service_downloader() -> type[BackgroundDownloader]:
    """The class of ``BackgroundDownloader(service=True)``: imported only when asked."""
    from engine.service.api import ServiceDownloader

    return ServiceDownloader


serve_through(_service_downloader)

__all__ = [
    "BackgroundDownloadProgress",
    "BackgroundDownloadRangesDownloadedEventArgs",
    "BackgroundDownloader",
    "BackgroundTransferBehavior",
    "BackgroundTransferCompletionGroup",
    "BackgroundTransferCompletionGroupTrigger",
    "BackgroundTransferCompletionGroupTriggerDetails",
    "BackgroundTransferCostPolicy",
    "BackgroundTransferFileRange",
    "BackgroundTransferGroup",
    "BackgroundTransferPriority",
    "BackgroundTransferStatus",
    "BulkDownload",
    "BulkEntry",
    "BulkFile",
    "BulkResult",
    "ControlFileError",
    "Credential",
    "Deferral",
    "DownloadOperation",
    "Durability",
    "HttpError",
    "IntegrityError",
    "InvalidRequestError",
    "InvalidStateError",
    "LinuxNetworkMonitor",
    "NetworkMonitor",
    "ResponseInformation",
    "ResultFileInUseError",
    "StorageError",
    "TransferCanceled",
    "TransferConfig",
    "TransferError",
    "TransferTimeoutError",
    "TransportError",
    "WebErrorStatus",
    "run",
]
