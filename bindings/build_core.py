"""The cffi build of the C core (API, out-of-line mode): compiled as ``engine._native``.

The declarations cffi sees come from ``rangefile.cdef`` beside this file; the
compiler checks them against ``csrc/rangefile.h`` when the module is built, and
``BGTRANSFER_WERROR=1`` (set in CI) turns every warning into an error.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CSRC = ROOT / "csrc"

sys.path.insert(0, str(HERE))
from source_digest import source_digest  # noqa: E402  (beside this file, not a package)

ffibuilder = FFI()
ffibuilder.cdef((HERE / "rangefile.cdef").read_text())
# What the core was built from: the tests refuse to run against a core built from other sources.
ffibuilder.cdef("const char *bgt_source_digest(void);")

_flags = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"]
if os.environ.get("BGTRANSFER_WERROR") == "1":
    _flags.append("-Werror")

_sources = [CSRC / "rangefile.c", CSRC / "dio.c", CSRC / "filer.c"]
if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
    _sources.append(CSRC / "third_party" / "xxhash" / "xxh_x86dispatch.c")

ffibuilder.set_source(
    "engine._native",
    '#include "rangefile.h"\n#include "filer.h"\n'
    f'static const char *bgt_source_digest(void) {{ return "{source_digest(ROOT)}"; }}',
    sources=[os.path.relpath(src, Path.cwd()) for src in _sources],
    include_dirs=[os.path.relpath(CSRC, Path.cwd())],
    extra_compile_args=_flags,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
