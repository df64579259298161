"""Builds the C core through cffi; every other setting lives in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["bindings/build_core.py:ffibuilder"])
