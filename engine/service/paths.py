"""Where a service's files live: socket, lock, log, journal, all under the state directory.

The socket goes in the state directory unless its path would pass the 107 bytes a
``sockaddr_un`` holds; then in ``$XDG_RUNTIME_DIR/bgtransfer/`` (made 0700), under
a name derived from the state directory so two state directories never share one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

from engine._state.store import default_state_dir

SUN_PATH_MAX = 107
"""Bytes of a socket path, without the terminating NUL (Linux's sun_path is 108)."""


@dataclasses.dataclass(frozen=True)
class ServicePaths:
    state_dir: Path

    @classmethod
    def of(cls, state_dir: os.PathLike[str] | str | None) -> ServicePaths:
        path = Path(state_dir) if state_dir is not None else default_state_dir()
        return cls(path.expanduser().absolute())

    @property
    def socket(self) -> Path:
        """The socket path, short enough to bind."""
        here = self.state_dir / "service.sock"
        if len(os.fsencode(here)) <= SUN_PATH_MAX:
            return here
        runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/bgtransfer-{os.getuid()}"
        tag = hashlib.sha256(os.fsencode(self.state_dir)).hexdigest()[:16]
        return Path(runtime) / "bgtransfer" / f"{tag}.sock"

    @property
    def lock(self) -> Path:
        """Held (flock) by the running service for its whole life: one a state dir."""
        return self.state_dir / "service.lock"

    @property
    def start_lock(self) -> Path:
        """Held by a client while it starts the service: one start at a time."""
        return self.state_dir / "service.start.lock"

    @property
    def log(self) -> Path:
        return self.state_dir / "service.log"

    @property
    def journal(self) -> Path:
        return self.state_dir / "service.sqlite3"

    def make_dirs(self) -> None:
        """The state directory and the socket's directory, 0700."""
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder = self.socket.parent
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if folder.stat().st_uid != os.getuid():
            raise PermissionError(f"{folder}: not owned by this user")
        os.chmod(folder, 0o700)
