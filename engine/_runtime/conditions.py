"""What the engine knows of the world around a download: network, its cost, free disk.

``NetworkMonitor`` is the small pluggable interface the issue asks for: the engine
polls it (every ``TransferConfig.poll_interval`` seconds while an operation waits),
so an implementation needs no threads or callbacks.  ``LinuxNetworkMonitor`` is the
default; tests and apps with better knowledge (NetworkManager, a mobile OS) pass
their own to ``BackgroundDownloader(network_monitor=...)``.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class NetworkMonitor(Protocol):
    def is_connected(self, host: str) -> bool:
        """Whether ``host`` could be reached at all (a usable network exists)."""

    def is_metered(self, host: str) -> bool:
        """Whether reaching ``host`` costs money (a metered connection)."""


@functools.lru_cache(maxsize=256)
def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    import ipaddress  # here only (cached a host): 1 ms of every command's start-up

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class LinuxNetworkMonitor:
    """Connected when a non-loopback interface is up or a default route exists.

    Loopback hosts are always reachable.  Whether a network is metered is not
    something the kernel knows: this default reports False unless the environment
    variable ``BGTRANSFER_METERED=1`` says otherwise (a session may set it when it
    tethers); pass a monitor of your own for anything better.
    """

    def __init__(
        self,
        sys_net: Path = Path("/sys/class/net"),
        route: Path = Path("/proc/net/route"),
        fresh: float = 0.25,
    ):
        self._sys_net = sys_net
        self._route = route
        self._fresh = fresh
        self._seen: tuple[float, bool] | None = None

    def is_connected(self, host: str) -> bool:
        """A look at the routes and interfaces answers for ``fresh`` seconds (a tenth
        of the default poll interval): a mirror starts hundreds of files a second, and
        each look reads /proc and /sys."""
        if is_loopback(host):
            return True
        now = time.monotonic()
        seen = self._seen
        if seen is None or now - seen[0] > self._fresh:
            seen = self._seen = (now, self._has_default_route() or self._has_interface_up())
        return seen[1]

    def is_metered(self, host: str) -> bool:
        return not is_loopback(host) and os.environ.get("BGTRANSFER_METERED") == "1"

    def _has_default_route(self) -> bool:
        try:
            lines = self._route.read_text().splitlines()[1:]
        except OSError:
            return False
        return any(len(f := line.split()) > 2 and f[1] == "00000000" for line in lines)

    def _has_interface_up(self) -> bool:
        try:
            names = [p for p in self._sys_net.iterdir() if p.name != "lo"]
        except OSError:
            return True  # no sysfs: assume a network rather than wait forever
        for path in names:
            try:
                if (path / "operstate").read_text().strip() in ("up", "unknown"):
                    return True
            except OSError:
                continue
        return False


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on the file system holding ``path``;
    None when it states no capacity at all (/proc, /sys, some FUSE file systems): it
    cannot run low, and a write there says for itself whether it works."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    st = os.statvfs(probe)
    if st.f_blocks == 0:
        return None
    return st.f_bavail * st.f_frsize
