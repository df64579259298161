"""Another local user's planted side files, links and state never become ours: each
case plants as a real second user (made here; skipped without root)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from attacker import Attacker, attacker
from servers import FaultServer

from engine import BackgroundDownloader, InvalidRequestError, StorageError
from engine._disk.core import RangeFile, control_path, part_path

Make = Callable[..., BackgroundDownloader]
__all__ = ["attacker"]  # the fixture, imported for pytest


@pytest.fixture
def some_url(fault_server: FaultServer) -> str:
    return fault_server.url


def _plant(attacker: Attacker, name: str, data: bytes = b"") -> None:
    """The attacker makes ``name`` in the shared folder, 0666."""
    attacker.run(
        f"import os; fd = os.open({name!r}, os.O_CREAT | os.O_WRONLY, 0o666); "
        f"os.fchmod(fd, 0o666); os.write(fd, {data!r}); os.close(fd)"
    )


@pytest.mark.parametrize("side", [".bgtctl.new", ".bgtpart"])
def test_a_planted_side_file_fails_the_download_and_is_never_written(
    attacker: Attacker, fault_server: FaultServer, make_downloader: Make, side: str
) -> None:
    """A side-file name another user made first fails the download clearly, unwritten."""
    out = attacker.shared / "big.bin"
    _plant(attacker, out.name + side, b"mine")
    op = make_downloader().create_download(fault_server.url, out)
    with pytest.raises(StorageError, match="not trusted"):
        op.start().wait(60)
    planted = attacker.shared / (out.name + side)
    assert planted.read_bytes() == b"mine"
    assert planted.stat().st_uid == attacker.uid
    assert not out.exists()


def test_a_planted_complete_download_is_never_taken_for_ours(
    attacker: Attacker, fault_server: FaultServer, make_downloader: Make, body: bytes
) -> None:
    """Another user's control file claiming every block (hashes of zeros) is refused."""
    out = attacker.shared / "big.bin"
    forged = attacker.shared / "forged"
    forged.mkdir()
    with RangeFile(forged / "big.bin", len(body), 1 << 16) as rf:  # zeros, every bit set
        for off in range(0, len(body), 1 << 20):
            rf.write(off, bytes(min(1 << 20, len(body) - off)))
        rf.flush()
    os.chmod(forged, 0o755)
    for side in (part_path, control_path):
        os.chmod(side(forged / "big.bin"), 0o644)
        attacker.run(
            f"import shutil; shutil.copyfile({str(side(forged / 'big.bin'))!r}, {str(side(out))!r})"
        )
    op = make_downloader().create_download(fault_server.url, out)
    with pytest.raises(StorageError, match="not trusted"):
        op.start().wait(60)
    assert not out.exists()


def test_a_result_folder_behind_another_users_link_is_refused(
    attacker: Attacker, fault_server: FaultServer, make_downloader: Make, tmp_path: Path
) -> None:
    """A link another user made on the way to the result's folder is never followed."""
    victim = tmp_path / "victim"
    victim.mkdir()
    attacker.run(f"import os; os.symlink({str(victim)!r}, 'out')")
    with pytest.raises(InvalidRequestError, match="symbolic link owned by"):
        make_downloader().create_download(fault_server.url, attacker.shared / "out" / "f")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "mirror",
            "-i",
            "-",
            "-d",
            str(attacker.shared / "out"),
            "--state-dir",
            str(tmp_path / "state"),
            "-q",
        ],
        input=f"{fault_server.url} f\n",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert "symbolic link owned by" in done.stderr
    assert list(victim.iterdir()) == []


def test_a_racing_planter_never_owns_the_finished_file(
    attacker: Attacker, fault_server: FaultServer, make_downloader: Make, body: bytes
) -> None:
    """Another user re-creating the partial file in a loop never gets root's result."""
    out = attacker.shared / "big.bin"
    stop = attacker.shared / "stop"
    code = (
        "import os\n"
        f"while not os.path.exists({str(stop)!r}):\n"
        "    try:\n"
        f"        fd = os.open({str(part_path(out))!r}, os.O_CREAT | os.O_WRONLY, 0o666)\n"
        "        os.fchmod(fd, 0o666); os.close(fd)\n"
        "    except OSError:\n"
        "        pass\n"
    )
    racer = attacker.popen(code)
    refused: list[str] = []
    try:
        for _ in range(6):
            op = make_downloader().create_download(fault_server.url, out)
            try:
                op.start().wait(60)
            except StorageError as exc:
                refused.append(str(exc))
                continue
            assert out.stat().st_uid == os.geteuid()
            assert out.read_bytes() == body
            out.unlink()
    finally:
        stop.touch()
        racer.wait(30)
    assert all("not trusted" in why for why in refused), refused


def _state_refused(state: Path, match: str) -> None:
    with pytest.raises(StorageError, match=match):
        BackgroundDownloader(state_dir=state)


def test_a_state_directory_others_may_write_is_refused(tmp_path: Path) -> None:
    """A state directory writable by others (0777) is refused with the chmod to run."""
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    _state_refused(state, "writable by others")
    state.chmod(0o700)
    BackgroundDownloader(state_dir=state)


def test_a_symlinked_state_database_is_refused(tmp_path: Path) -> None:
    """The state database is never a symbolic link (to a file anyone could have made)."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere.sqlite3"
    elsewhere.touch()
    (state / "operations.sqlite3").symlink_to(elsewhere)
    _state_refused(state, "symbolic link")


def test_another_users_state_directory_or_database_is_refused(
    attacker: Attacker, tmp_path: Path, some_url: str
) -> None:
    """A state directory, or a database in it, that another user owns is never used:
    its operations would run with our rights."""
    theirs = attacker.shared / "state"
    attacker.run("import os; os.mkdir('state', 0o700)")
    _state_refused(theirs, "owned by bgtattacker")
    ours = tmp_path / "state"
    BackgroundDownloader(state_dir=ours).create_download(some_url, tmp_path / "x")
    planted = attacker.shared / "planted.sqlite3"
    (ours / "operations.sqlite3").rename(planted)  # as if another user had made it
    os.chown(planted, attacker.uid, attacker.gid)
    os.rename(planted, ours / "operations.sqlite3")
    done = subprocess.run(
        [sys.executable, "-m", "engine", "resume", "--all", "--state-dir", str(ours)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stderr
    assert "not trusted" in done.stderr
    assert not (tmp_path / "x").exists()
