"""The default network monitor, on route tables and interface trees of the tests' own.

``LinuxNetworkMonitor`` reads ``/proc/net/route`` and ``/sys/class/net``; here it
reads files laid out the same way under a temporary directory, so each state (no
network, a default route, an interface up) can be made on any machine.
"""

from __future__ import annotations

from pathlib import Path

from engine._runtime.conditions import LinuxNetworkMonitor

_HEADER = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
_LAN_ONLY = "eth0\t0002A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n"
_DEFAULT = "eth0\t00000000\t0102A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"


def _world(tmp_path: Path, *, routes: str, eth0: str) -> tuple[Path, Path]:
    net = tmp_path / "net"
    for name, state in (("lo", "unknown"), ("eth0", eth0)):
        (net / name).mkdir(parents=True, exist_ok=True)
        (net / name / "operstate").write_text(state + "\n")
    route = tmp_path / "route"
    route.write_text(_HEADER + routes)
    return net, route


def test_no_route_and_no_interface_up_is_offline_but_loopback_is_reachable(
    tmp_path: Path,
) -> None:
    net, route = _world(tmp_path, routes=_LAN_ONLY, eth0="down")
    monitor = LinuxNetworkMonitor(net, route, fresh=0)
    assert not monitor.is_connected("example.org")
    assert monitor.is_connected("127.0.0.1")
    assert monitor.is_connected("localhost")


def test_a_default_route_or_an_interface_up_is_a_network(tmp_path: Path) -> None:
    net, route = _world(tmp_path, routes=_DEFAULT, eth0="down")
    assert LinuxNetworkMonitor(net, route, fresh=0).is_connected("example.org")
    net, route = _world(tmp_path, routes=_LAN_ONLY, eth0="up")
    assert LinuxNetworkMonitor(net, route, fresh=0).is_connected("example.org")


def test_one_look_answers_for_fresh_seconds_then_the_change_is_seen(tmp_path: Path) -> None:
    """A mirror asks for every file it starts: the files are read once per ``fresh``."""
    net, route = _world(tmp_path, routes=_LAN_ONLY, eth0="down")
    cached = LinuxNetworkMonitor(net, route, fresh=3600)
    uncached = LinuxNetworkMonitor(net, route, fresh=0)
    assert not cached.is_connected("example.org")
    assert not uncached.is_connected("example.org")
    (net / "eth0" / "operstate").write_text("up\n")  # the network comes back
    assert not cached.is_connected("example.org")  # within fresh: the earlier look stands
    assert uncached.is_connected("example.org")
