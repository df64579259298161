"""What ``engine._net.multi`` takes from pycurl's ``AsyncCurlMulti`` beyond its public API.

pycurl is pinned below its next minor release; these tests are the check to run
before that pin is raised: each fails when a private name the subclass overrides or
reads is renamed, dropped or changes its signature.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine
from typing import Any

import pycurl
import pytest

from engine._net.multi import Multi

OVERRIDDEN = {
    "_on_socket": ["self", "what", "fd", "multi", "socketp"],
    "_ensure_loop": ["self"],
    "aclose": ["self"],
}
CALLED = {"_drive": ["self", "fd", "mask"]}


@pytest.mark.parametrize(("name", "params"), [*OVERRIDDEN.items(), *CALLED.items()])
def test_methods_keep_their_signatures(name: str, params: list[str]) -> None:
    """Every private method the subclass overrides or calls exists with the same parameters."""
    method = getattr(pycurl.AsyncCurlMulti, name, None)
    assert method is not None, f"pycurl's AsyncCurlMulti has no {name} any more"
    assert list(inspect.signature(method).parameters) == params


def test_socket_callback_is_the_overridden_method() -> None:
    """pycurl registers ``self._on_socket`` as the socket callback, so the override is the
    one libcurl calls."""
    source = inspect.getsource(pycurl.AsyncCurlMulti)
    assert "self._on_socket" in source
    assert "M_SOCKETFUNCTION" in source


def test_state_attributes_exist(run: Callable[[Coroutine[Any, Any, None]], None]) -> None:
    """``_loop`` is the bound loop (None before the first transfer) and ``_closing`` a flag
    ``aclose`` sets: the subclass reads both."""

    async def check() -> None:
        multi = Multi()
        assert multi._loop is None
        assert multi._closing is False
        assert multi._ensure_loop() is asyncio.get_running_loop()
        assert multi._loop is asyncio.get_running_loop()
        await multi.aclose()
        assert multi._closing is True

    run(check())
