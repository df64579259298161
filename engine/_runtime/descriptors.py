"""How many files and connections the process may hold open at once.

Each running operation holds up to three descriptors for its whole run (the partial
file, the control file, an O_DIRECT twin of the first), and each request a socket.
Under a low limit (``ulimit -n 128``) the engine's own caps (32 operations, 256
requests) would run out of descriptors, and an open or a connect would fail with
EMFILE: a download failed for want of a resource that frees itself as the others
end.  So the soft limit is raised to the hard one first (as Go's runtime does), and
the caps are cut to what the limit leaves: downloads then wait for a place in the
scheduler or a request slot, never for a descriptor.
"""

from __future__ import annotations

import dataclasses
import functools

_KEPT = 48
"""Descriptors left to everything else: the interpreter, stdio, the state database
and its WAL, the loop's own, the filer's channel, libcurl's resolver."""
_PER_OPERATION = 3
_MAX_OPERATIONS = 32
_MAX_REQUESTS = 256


@dataclasses.dataclass(frozen=True)
class Budget:
    operations: int
    """Operations that may run at once (each with its files open)."""
    requests: int
    """Requests in flight at once (a socket each)."""


@functools.lru_cache(maxsize=1)
def budget() -> Budget:
    """The process's caps, from RLIMIT_NOFILE (raised to its hard limit on first use)."""
    try:
        import resource
    except ImportError:  # not POSIX: the engine's own caps
        return Budget(_MAX_OPERATIONS, _MAX_REQUESTS)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return Budget(_MAX_OPERATIONS, _MAX_REQUESTS)
    spare = max(8, soft - _KEPT)
    operations = max(1, min(_MAX_OPERATIONS, spare // (2 * _PER_OPERATION + 2)))
    requests = max(1, min(_MAX_REQUESTS, spare - operations * _PER_OPERATION))
    return Budget(operations, requests)
