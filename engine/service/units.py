"""``bgtransfer service install``: a systemd user socket unit and service unit.

With them, systemd owns the socket and starts the service on the first connection;
the service then takes the socket systemd passes (``LISTEN_FDS``) instead of binding
its own.  Clients need nothing else: they connect to the same path.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from engine.service.paths import ServicePaths

NAME = "bgtransfer"


def unit_dir() -> Path:
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg) if xdg else Path.home() / ".config") / "systemd" / "user"


def socket_unit(paths: ServicePaths) -> str:
    return f"""[Unit]
Description=bgtransfer background downloads (socket, {paths.state_dir})

[Socket]
ListenStream={paths.socket}
SocketMode=0600
DirectoryMode=0700
RemoveOnStop=yes

[Install]
WantedBy=sockets.target
"""


def service_unit(paths: ServicePaths) -> str:
    command = shlex.join(
        [sys.executable, "-m", "engine", "service", "run", "--state-dir", str(paths.state_dir)]
    )
    return f"""[Unit]
Description=bgtransfer background downloads ({paths.state_dir})
Requires={NAME}.socket

[Service]
ExecStart={command}
Restart=on-failure
NoNewPrivileges=yes
PrivateTmp=no
UMask=0077
"""


def install(paths: ServicePaths, folder: Path | None = None) -> list[Path]:
    """Write both units (replacing older ones); the paths written."""
    folder = folder or unit_dir()
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix, text in (("socket", socket_unit(paths)), ("service", service_unit(paths))):
        path = folder / f"{NAME}.{suffix}"
        path.write_text(text)
        written.append(path)
    return written
