"""The cffi build of the C core (API, out-of-line mode): compiled as ``engine._native``.

The declarations cffi sees come from ``rangefile.cdef`` beside this file; the
compiler checks them against ``csrc/rangefile.h`` when the module is built, and
``BGTRANSFER_WERROR=1`` (set in CI) turns every warning into an error.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CSRC = ROOT / "csrc"

ffibuilder = FFI()
ffibuilder.cdef((HERE / "rangefile.cdef").read_text())

_flags = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"]
if os.environ.get("BGTRANSFER_WERROR") == "1":
    _flags.append("-Werror")

_sources = [CSRC / "rangefile.c", CSRC / "dio.c", CSRC / "filer.c"]
if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
    _sources.append(CSRC / "third_party" / "xxhash" / "xxh_x86dispatch.c")

ffibuilder.set_source(
    "engine._native",
    '#include "rangefile.h"\n#include "filer.h"',
    sources=[os.path.relpath(src, Path.cwd()) for src in _sources],
    include_dirs=[os.path.relpath(CSRC, Path.cwd())],
    extra_compile_args=_flags,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
