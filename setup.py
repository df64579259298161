"""Builds the C core through cffi; every other setting lives in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class CleanBuildPy(build_py):
    """Copies the package into a fresh ``build/lib``: setuptools never removes a module
    that left the tree, and the wheel would install it beside the new layout."""

    def run(self) -> None:
        shutil.rmtree(Path(self.build_lib) / "engine", ignore_errors=True)
        super().run()


setup(cffi_modules=["bindings/build_core.py:ffibuilder"], cmdclass={"build_py": CleanBuildPy})
