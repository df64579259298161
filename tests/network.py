"""A network monitor the tests switch: the engine's pluggable interface, driven by hand."""

from __future__ import annotations

import threading


class SwitchableNetwork:
    """Implements engine.NetworkMonitor with flags a test flips."""

    def __init__(self, connected: bool = True, metered: bool = False) -> None:
        self._lock = threading.Lock()
        self.connected = connected
        self.metered = metered
        self.asked = 0

    def is_connected(self, host: str) -> bool:
        with self._lock:
            self.asked += 1
            return self.connected

    def is_metered(self, host: str) -> bool:
        return self.metered
