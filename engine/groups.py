"""Transfer groups (named, persisted, PARALLEL or SERIALIZED) and completion groups
(fire once when every member has ended), as the API presents them.

Below ``operation.py`` (which names an operation's transfer group) and re-exported by
``engine.downloader`` and ``engine``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from engine._ops.reporting import run_handler
from engine._runtime.loop import engine_loop
from engine._state.store import Store
from engine.errors import InvalidRequestError, InvalidStateError
from engine.values import BackgroundTransferBehavior, BackgroundTransferStatus

if TYPE_CHECKING:  # for the types only: operation.py imports this module
    from engine.operation import DownloadOperation


class BackgroundTransferGroup:
    """A named group (persisted): PARALLEL members run together, SERIALIZED one at a time."""

    def __init__(self, name: str, store: Store) -> None:
        self.name = name
        self._store = store

    @property
    def store(self) -> Store:
        """The state database that keeps the group's behaviour."""
        return self._store

    @classmethod
    def create_group(
        cls, name: str, *, state_dir: os.PathLike[str] | str | None = None
    ) -> BackgroundTransferGroup:
        """The group called ``name`` (the existing one when it was created before)."""
        if not name:
            raise InvalidRequestError("a transfer group needs a name")
        store = Store.at(state_dir)
        store.group_behavior(name, None)
        return cls(name, store)

    @property
    def transfer_behavior(self) -> BackgroundTransferBehavior:
        return BackgroundTransferBehavior(self._store.group_behavior(self.name, None))

    @transfer_behavior.setter
    def transfer_behavior(self, value: BackgroundTransferBehavior) -> None:
        self._store.group_behavior(self.name, value.value)

    def adopted_by(self, store: Store) -> BackgroundTransferGroup:
        """This group in another state directory (a downloader's own), with this
        group's behaviour: a SERIALIZED group made without ``state_dir`` stays
        SERIALIZED for a downloader that has one, instead of running PARALLEL there."""
        store.group_behavior(self.name, self.transfer_behavior.value)
        return BackgroundTransferGroup(self.name, store)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BackgroundTransferGroup) and (self.name, self._store) == (
            other.name,
            other._store,
        )

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"BackgroundTransferGroup({self.name!r})"


class BackgroundTransferCompletionGroup:
    """Fires once when every operation created with it has ended (any way)."""

    def __init__(self) -> None:
        self._members: list[DownloadOperation] = []
        self._enabled = False
        self._fired = False
        self._lock = threading.Lock()
        self._future: concurrent.futures.Future[list[DownloadOperation]] = (
            concurrent.futures.Future()
        )

    def add_member(self, op: DownloadOperation) -> None:
        """An operation created with this group (before ``enable``)."""
        with self._lock:
            if self._enabled:
                raise InvalidStateError("the completion group is enabled: no new members")
            self._members.append(op)

    def enable(self) -> None:
        """Call once, after creating every member."""
        with self._lock:
            if self._enabled:
                raise InvalidStateError("the completion group is already enabled")
            self._enabled = True
        self.member_ended()

    def member_ended(self) -> None:
        """A member ended (or the group was enabled): fire when every member has ended."""
        ended = (
            BackgroundTransferStatus.COMPLETED,
            BackgroundTransferStatus.CANCELED,
            BackgroundTransferStatus.ERROR,
        )
        with self._lock:
            if not self._enabled or self._fired:
                return
            if not all(op.status in ended for op in self._members):
                return
            self._fired = True
        self._future.set_result(list(self._members))

    @property
    def is_enabled(self) -> bool:
        """Whether ``enable()`` was called (Windows' ``IsEnabled``)."""
        return self._enabled

    @property
    def trigger(self) -> BackgroundTransferCompletionGroupTrigger:
        """Windows hands this to ``BackgroundTaskBuilder.SetTrigger``; here
        ``trigger.register(task)`` runs ``task(details)`` when the group fires."""
        return BackgroundTransferCompletionGroupTrigger(self)

    @property
    def completed(self) -> asyncio.Future[list[DownloadOperation]]:
        """Awaitable: the member operations, once all have ended."""
        return asyncio.wrap_future(self._future)

    def on_completed(self, callback: Callable[[list[DownloadOperation]], None]) -> None:
        self._future.add_done_callback(lambda fut: callback(fut.result()))


@dataclasses.dataclass(frozen=True)
class BackgroundTransferCompletionGroupTriggerDetails:
    """What a completion group's task receives: every member, ended one way or another."""

    downloads: list[DownloadOperation]


class BackgroundTransferCompletionGroupTrigger:
    """The trigger of a completion group.  Windows starts a registered background task
    with it, even in a new process; Python has no such host, so the task runs in the
    process that holds the group, once, on the engine loop (an ``async def`` task is
    awaited there).  Registered after the group fired, it runs at once."""

    def __init__(self, group: BackgroundTransferCompletionGroup) -> None:
        self._group = group

    def register(
        self,
        task: Callable[[BackgroundTransferCompletionGroupTriggerDetails], Awaitable[None] | None],
    ) -> None:
        """Run ``task(details)`` when every member has ended (the group is enabled)."""

        def fired(fut: concurrent.futures.Future[list[DownloadOperation]]) -> None:
            details = BackgroundTransferCompletionGroupTriggerDetails(fut.result())
            engine_loop().loop.call_soon_threadsafe(lambda: run_handler(task(details)))

        self._group._future.add_done_callback(fired)
