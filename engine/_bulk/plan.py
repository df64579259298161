"""Which files of a list are complete already: the rule every bulk run skips by."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from engine._disk.checksum import file_digest, parse


def already_complete(path: str, checksum: str | None) -> bool:
    """A final name exists only once complete; with a checksum it must also match.
    Without one, only a file of this user's counts: in a shared folder another user
    could have put any bytes under the name.  A file that does not count is left as
    it is: the download replaces it only once it is complete (and verified)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    if checksum is None:
        return st.st_uid == os.geteuid()
    algo, digest = parse(checksum)
    return file_digest(Path(path), algo) == digest
