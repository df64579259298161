"""1000 operations at once through one downloader: all byte-exact, caps kept, memory bounded."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

from servers import Nginx

from engine import BackgroundDownloader

Make = Callable[..., BackgroundDownloader]
HOST_CAP = 64  # _transport.new_multi's per-host cap


def _established_to(port: int) -> int:
    """Client-side TCP connections to ``port`` on loopback (from /proc/net/tcp)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state = fields[2], fields[3]
        if state == "01" and int(remote.split(":")[1], 16) == port:
            count += 1
    return count


def _rss_anon() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def test_a_thousand_operations_at_once(nginx: Nginx, make_downloader: Make, tmp_path: Path) -> None:
    """1000 downloads started together complete byte-exact within the connection caps."""
    folder = nginx.www / "load"
    folder.mkdir(exist_ok=True)
    sums = {}
    for i in range(1000):
        data = os.urandom(1000 + (i * 7919) % 200_000) if i % 100 else os.urandom(6 << 20)
        (folder / f"{i}.bin").write_bytes(data)
        sums[i] = hashlib.sha256(data).hexdigest()
    out = tmp_path / "out"
    out.mkdir()
    d = make_downloader()
    ops = [d.create_download(nginx.url(f"load/{i}.bin"), out / f"{i}.bin") for i in range(1000)]
    before = _rss_anon()
    peak = {"conns": 0, "rss": before}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.01):
            peak["conns"] = max(peak["conns"], _established_to(nginx.port))
            peak["rss"] = max(peak["rss"], _rss_anon())

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for op in ops:
            op.start()
        for op in ops:
            op.wait(120)
    finally:
        stop.set()
        sampler.join()
    for i in range(1000):
        assert hashlib.sha256((out / f"{i}.bin").read_bytes()).hexdigest() == sums[i], i
    assert 0 < peak["conns"] <= HOST_CAP
    assert peak["rss"] - before < 150 << 20
    assert d.get_current_downloads() == []
