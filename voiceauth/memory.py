"""Give freed heap memory back to the operating system after model work.

A process that runs the torch models on inputs of many lengths (every recording is a new
shape) grows its resident memory for hundreds of calls although nothing stays allocated:
glibc keeps the freed blocks in its per-thread arenas. Measured (``benchmarks/service.py``
and issue 18): verifying 300 LibriSpeech files one after another grew from 0.9 GB to 2.9 GB
resident; with ``malloc_trim(0)`` after each model call it stayed at 0.8 GB. So it is the
allocator's retention, not a leak, and :func:`release_freed` bounds it. It is throttled (at
most once per ``min_interval_s``), costs a few milliseconds, and is a no-op where the C
library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time

MIN_INTERVAL_S = 1.0
"""Trim at most this often (per process)."""

_lock = threading.Lock()
_last = 0.0
_trim = None
_loaded = False


def _malloc_trim():  # noqa: ANN202 - a ctypes function or None
    global _trim, _loaded
    if not _loaded:
        _loaded = True
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _trim = libc.malloc_trim
            _trim.argtypes, _trim.restype = [ctypes.c_size_t], ctypes.c_int
        except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
            _trim = None
    return _trim


def release_freed(min_interval_s: float = MIN_INTERVAL_S) -> bool:
    """Return freed heap pages to the OS if the last release is ``min_interval_s`` old.
    Returns True when a release ran."""
    global _last
    now = time.monotonic()
    if now - _last < min_interval_s or not _lock.acquire(blocking=False):
        return False
    try:
        if now - _last < min_interval_s:
            return False
        _last = now
        trim = _malloc_trim()
        if trim is None:
            return False
        trim(0)
        return True
    finally:
        _lock.release()
