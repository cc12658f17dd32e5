"""How a live pool shares the model between calls: how many model calls run at once, how many
threads each uses, and how many segments each takes. Pure functions of the embedder and the
settings (:class:`~voiceauth.live.state.SessionSettings`)."""

from __future__ import annotations

import os

from voiceauth.live.state import SessionSettings


def model_slots(embedder: object, settings: SessionSettings) -> int:
    """How many model calls may run at once: ``settings.model_slots``, or else the cores divided by
    the threads one call of the speaker model uses (an embedder that does not say uses them all),
    at most one per worker."""
    if settings.model_slots is not None:
        return settings.model_slots
    cores = os.cpu_count() or 1
    return max(1, min(settings.workers, cores // (per_call_threads(embedder) or cores)))


def batch_limit(embedder: object, settings: SessionSettings) -> int:
    """Segments per embedding call: ``settings.batch_size``, or 1 for an embedder that embeds a batch
    one signal after another (``sequential``: ONNX Runtime), where a batch saves nothing and holds
    every segment's update, and a model slot, until its last segment is done."""
    return 1 if getattr(embedder, "sequential", False) is True else settings.batch_size


def per_call_threads(embedder: object) -> int | None:
    """Threads one call of the speaker model uses where it says so (ONNX Runtime embedders), else None
    (torch: every core). The spoof check runs in a model slot too, so it is given as many."""
    threads = getattr(embedder, "threads", None)
    return threads if isinstance(threads, int) and not isinstance(threads, bool) and threads > 0 else None
