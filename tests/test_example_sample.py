"""The ported BackgroundTransfer sample in examples/ runs every scenario to its end on nginx."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from servers import Nginx

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "background_transfer_sample.py"
SCENARIOS = [
    "Scenario 1 (download)",
    "Scenario 4 (completion groups)",
    "Scenario 5 (random access)",
    "Scenario 6 (recoverable errors)",
    "Scenario 7 (download reordering)",
]


def test_the_ported_sample_completes_every_scenario(nginx: Nginx, tmp_path: Path) -> None:
    """examples/background_transfer_sample.py: each scenario says it completed, exit status 0."""
    folder = nginx.www / "bt"
    folder.mkdir(exist_ok=True)
    (folder / "sample.bin").write_bytes(os.urandom(300_000))
    (folder / "video.bin").write_bytes(os.urandom(6_000_000))
    done = subprocess.run(
        [
            sys.executable,
            str(EXAMPLE),
            nginx.url("bt/"),
            "--out",
            str(tmp_path / "out"),
            "--state-dir",
            str(tmp_path / "state"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    for title in SCENARIOS:
        assert f"{title}: completed" in lines
    assert "URL has expired." in lines
    assert "8 downloads succeeded. 2 downloads failed." in lines
    video = (folder / "video.bin").read_bytes()
    for name in ["video.bin", "recovered.bin", *(f"{i}.video.bin" for i in range(5))]:
        assert (tmp_path / "out" / name).read_bytes() == video
