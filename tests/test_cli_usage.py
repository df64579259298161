"""What the command line takes: -o folders, mirror lists with bad lines, GUID prefixes,
and the list of what ended."""

from __future__ import annotations

import os
from pathlib import Path

from cli_run import bgt, listed
from servers import Nginx

from engine import BackgroundDownloader


def test_a_trailing_slash_on_output_always_means_a_folder(nginx: Nginx, tmp_path: Path) -> None:
    """-o newdir/ that does not exist: status 2 and nothing written (never a file named
    newdir); with --create-dirs the folder is made and the URL's name put in it."""
    url = nginx.url("small.bin")
    state = tmp_path / "s"
    done = bgt("get", url, "-o", "newdir/", cwd=tmp_path, state=state)
    assert done.returncode == 2
    assert "newdir: no such directory (--create-dirs makes it)" in done.stderr
    assert not (tmp_path / "newdir").exists()
    done = bgt("get", url, "-o", "newdir/", "--create-dirs", cwd=tmp_path, state=state)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "newdir" / "small.bin").read_bytes() == (
        nginx.www / "small.bin"
    ).read_bytes()


def test_a_missing_folder_of_an_output_file_needs_create_dirs(nginx: Nginx, tmp_path: Path) -> None:
    """-o a/b/f.bin whose folder is missing: status 2, or made with --create-dirs (as
    curl's); a trailing slash after a file is refused."""
    url = nginx.url("small.bin")
    state = tmp_path / "s"
    assert bgt("get", url, "-o", "a/b/f.bin", cwd=tmp_path, state=state).returncode == 2
    done = bgt("get", url, "-o", "a/b/f.bin", "--create-dirs", cwd=tmp_path, state=state)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "a" / "b" / "f.bin").is_file()
    done = bgt("get", url, "-o", "a/b/f.bin/", cwd=tmp_path, state=state)
    assert done.returncode == 2
    assert "f.bin: not a directory" in done.stderr


def test_mirror_reports_every_bad_line_and_mirrors_the_good_ones(
    nginx: Nginx, tmp_path: Path
) -> None:
    """A list with bad lines: each is reported with its number, every good line is
    mirrored, a duplicate name is a bad line (never a renamed file), and the status is 1."""
    small = nginx.url("small.bin")
    (tmp_path / "list.txt").write_text(
        f"{small} f.bin\n"
        "not a url\n"
        f"{small} g.bin\n"
        f"{small} h.bin md5=nothex\n"
        "# a comment\n"
        f"{small} F.bin\n"
        "mailto://x/y\n"
    )
    done = bgt("mirror", "-i", "list.txt", "-d", "out", cwd=tmp_path, state=tmp_path / "s")
    assert done.returncode == 1
    err = done.stderr
    assert "list.txt:2: 'not' is not a URL" in err
    assert "list.txt:4: " in err
    assert "list.txt:7: 'mailto://x/y': mailto is not http, https, ftp, ftps or sftp" in err
    assert "list.txt:6: the name 'F.bin' is already used by line 1" in err
    assert "4 bad lines in list.txt skipped" in err
    assert sorted(os.listdir(tmp_path / "out")) == ["f.bin", "g.bin"]


def test_a_list_of_only_bad_lines_downloads_nothing(tmp_path: Path) -> None:
    """Nothing good in the list: the bad lines told, status 1, no folder made."""
    (tmp_path / "list.txt").write_text("nope\n")
    done = bgt("mirror", "-i", "list.txt", "-d", "out", cwd=tmp_path, state=tmp_path / "s")
    assert done.returncode == 1
    assert "list.txt:1: 'nope' is not a URL" in done.stderr
    assert not (tmp_path / "out").exists()


def test_list_all_shows_what_ended_and_a_prefix_names_an_operation(
    nginx: Nginx, tmp_path: Path
) -> None:
    """list --all shows completed operations (list does not); a GUID prefix shorter
    than the one listed still names an operation."""
    state = tmp_path / "s"
    for name in ("a.bin", "b.bin"):
        done = bgt("get", nginx.url("small.bin"), "-o", name, cwd=tmp_path, state=state)
        assert done.returncode == 0, done.stderr
    assert listed(tmp_path, state) == []
    rows = listed(tmp_path, state, "--all")
    assert [(r[1], r[2], r[3], Path(r[4]).name) for r in rows] == [
        ("COMPLETED", "10.0 KiB", "100.0%", "a.bin"),
        ("COMPLETED", "10.0 KiB", "100.0%", "b.bin"),
    ]
    assert all(r[5] == nginx.url("small.bin") for r in rows)
    done = bgt("cancel", rows[0][0], cwd=tmp_path, state=state)
    assert done.returncode == 2  # an ended one is not there to cancel
    assert "no operation" in done.stderr


def test_a_guid_prefix_names_one_operation_or_is_refused(tmp_path: Path) -> None:
    """cancel takes any unique prefix of a GUID; a prefix two operations share is
    refused (status 2, both left), as git refuses an ambiguous commit."""
    state = tmp_path / "s"
    d = BackgroundDownloader(state_dir=state)
    ops = [d.create_download(f"http://127.0.0.1:9/{i}", tmp_path / f"{i}.bin") for i in range(17)]
    by_first: dict[str, list[str]] = {}
    for op in ops:  # 17 GUIDs, 16 hex digits: two share a first one
        by_first.setdefault(str(op.guid)[0], []).append(str(op.guid))
    shared = next(k for k, v in by_first.items() if len(v) > 1)
    done = bgt("cancel", shared, cwd=tmp_path, state=state)
    assert done.returncode == 2
    assert f"{shared} names {len(by_first[shared])} operations" in done.stderr
    assert len(listed(tmp_path, state)) == 17
    one = by_first[shared][0]
    prefix = next(
        one[:n]
        for n in range(1, 37)
        if not any(g.startswith(one[:n]) for g in by_first[shared][1:])
    )
    done = bgt("cancel", prefix, cwd=tmp_path, state=state)
    assert done.returncode == 0, done.stderr
    left = listed(tmp_path, state)
    assert len(left) == 16
    assert not any(one.startswith(r[0]) for r in left)
