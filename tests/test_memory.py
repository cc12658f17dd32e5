"""Freed heap memory goes back to the OS after model work, throttled (voiceauth.memory)."""

from __future__ import annotations

import ctypes.util
import sys
import time

import pytest

from voiceauth import memory


@pytest.mark.skipif(not sys.platform.startswith("linux") or ctypes.util.find_library("c") is None,
                    reason="malloc_trim is glibc's")
def test_release_runs_then_is_throttled(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(memory, "_malloc_trim", lambda: calls.append)
    monkeypatch.setattr(memory, "_last", 0.0)
    assert memory.release_freed(min_interval_s=60) is True
    assert memory.release_freed(min_interval_s=60) is False  # within the interval: skipped
    assert calls == [0]
    monkeypatch.setattr(memory, "_last", time.monotonic() - 61)
    assert memory.release_freed(min_interval_s=60) is True and calls == [0, 0]


def test_no_glibc_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_malloc_trim", lambda: None)
    monkeypatch.setattr(memory, "_last", 0.0)
    assert memory.release_freed() is False


def test_the_real_trim_is_found_on_this_machine() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    memory._loaded = False  # noqa: SLF001 - load it afresh
    assert memory._malloc_trim() is not None  # noqa: SLF001
