"""The live calls the service is running: their latest state, the agent view's subscribers,
the streams' housekeeping (idle time, shutdown drain) and the latency metrics.

Everything here runs on the event loop; the session pool's worker threads reach it only
through ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from voiceauth.live import CallResult, CallSession, CallStatus, SessionPool
from voiceauth.serve.config import Limits
from voiceauth.serve.metrics import Metrics

log = logging.getLogger("voiceauth.serve")
PAUSED = "paused"
"""The flag a call carries on the agent view and ``/v1/calls`` while it is not listened to (PCI)."""


class Endable(Protocol):
    """A stream the hub can end (idle, shutdown)."""

    protocol: str
    last_seen: float

    async def end(self, code: int, reason: str) -> None: ...


@dataclass
class CallMeta:
    """What the service knows about a call besides the library's result."""

    call_id: str
    protocol: str
    stream_id: str
    actor: str
    started: float


def call_json(result: CallResult, meta: CallMeta | None = None) -> dict[str, Any]:
    """A call's state for clients and the agent view: plain values, never audio or embeddings."""
    body: dict[str, Any] = {
        "call_id": result.call_id,
        "customer_id": result.customer_id,
        "status": result.status.value,
        "confidence": result.confidence,
        "llr": result.llr,
        "speech_s": result.speech_s,
        "required_s": result.required_s,
        "progress": result.progress,
        "flags": [f.value for f in result.flags],
        "spoof_score": result.spoof_score,
        "dropped_audio_s": result.dropped_audio_s,
        "thinned_under_load_s": result.thinned_under_load_s,
        "decided_at_speech_s": result.decided_at_speech_s,
        "reason": result.revisions[-1].reason if result.revisions else "",
        "error": result.error,
        "closed": result.closed,
    }
    if meta is not None:
        body.update(protocol=meta.protocol, stream_id=meta.stream_id, started=meta.started)
    return body


class Hub:
    """Live and recently ended calls, and the agent view's event subscribers."""

    def __init__(self, limits: Limits, pool: SessionPool) -> None:
        self.limits = limits
        self.pool = pool
        self.metrics = Metrics(lambda: float(pool.live), lambda: float(len(self.streams)))
        self.calls: dict[str, dict[str, Any]] = {}
        self._meta: dict[str, CallMeta] = {}
        self._ended_at: dict[str, float] = {}
        self._flagged: dict[str, set[str]] = {}
        self._paused: set[str] = set()
        """Calls not being listened to (PCI pause): shown with the flag ``paused``."""
        self.subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self.streams: set[Endable] = set()
        self.draining = False
        self.drain_started: float | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._latency_mark = time.monotonic()

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._task = self.loop.create_task(self._housekeeping())

    async def stop(self) -> None:
        for queue in list(self.subscribers):
            queue.put_nowait(None)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def begin_drain(self) -> None:
        """Shutdown step 1: refuse new streams, let calls in flight go on for ``drain_timeout_s``."""
        if not self.draining:
            self.draining = True
            self.drain_started = time.monotonic()
            log.info("draining: %d streams in flight, ending them within %.0f s", len(self.streams),
                     self.limits.drain_timeout_s)
            for queue in list(self.subscribers):  # event streams would hold the server open
                queue.put_nowait(None)

    @property
    def drained(self) -> bool:
        return self.draining and not self.streams

    def threadsafe(self, func: Callable[..., None], *args: Any) -> None:
        """Run ``func(*args)`` on the event loop (from a worker thread); dropped once the loop is gone."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(func, *args)

    # -- calls --------------------------------------------------------------------------------------
    def register(self, meta: CallMeta) -> None:
        self._meta[meta.call_id] = meta

    def update(self, result: CallResult) -> None:
        """A call's new state (on the loop): keep it, count it, tell the subscribers."""
        meta = self._meta.get(result.call_id)
        body = call_json(result, meta)
        if result.call_id in self._paused and not result.closed:
            body["flags"] = [*body["flags"], PAUSED]
        old = self.calls.get(result.call_id)
        if old is not None and old.get("closed"):
            return  # nothing changes once a call has ended
        self.calls[result.call_id] = body
        if old is None or old["status"] != body["status"]:
            self.metrics.decisions.labels("call", body["status"]).inc()
            if result.status is CallStatus.AUTHENTICATED and meta is not None:  # once a call: never again after
                self.metrics.to_authenticated.observe(max(0.0, time.time() - meta.started))
        seen = self._flagged.setdefault(result.call_id, set())
        new_flags = [f for f in result.flags if f.value not in seen]
        seen.update(f.value for f in new_flags)
        self.metrics.flags("call", new_flags)
        if result.closed:
            self._ended_at[result.call_id] = time.monotonic()
            self.metrics.call_ended(result)
        self._broadcast({"type": "call", "call": body})

    def _broadcast(self, event: dict[str, Any]) -> None:
        for queue in list(self.subscribers):
            if queue.full():  # a slow agent view loses the oldest updates, never blocks the calls
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=1000)
        self.subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        self.subscribers.discard(queue)

    def set_paused(self, session: CallSession, paused: bool) -> None:
        """Pause or resume listening to a live call (PCI) and show it: the agent view flags it ``paused``."""
        if paused:
            session.pause()
            self._paused.add(session.call_id)
        else:
            session.resume()
            self._paused.discard(session.call_id)
        self.update(session.result())

    def live_session(self, ident: str) -> CallSession | None:
        """The session of the live stream whose call id, or stream id (Twilio ``streamSid``, AudioHook
        conversationId, AudioSocket UUID), is ``ident``; None when no live stream carries it."""
        for stream in list(self.streams):
            session = getattr(stream, "session", None)
            if session is None or session.closed:
                continue
            meta = self._meta.get(session.call_id)
            if ident == session.call_id or (meta is not None and meta.stream_id and ident == meta.stream_id):
                return session  # type: ignore[no-any-return]
        return None

    def snapshot(self) -> list[dict[str, Any]]:
        return sorted(self.calls.values(), key=lambda c: c.get("started", 0.0))

    # -- housekeeping -----------------------------------------------------------------------------------
    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            try:
                await self._tick(time.monotonic())
            except Exception:  # noqa: BLE001 - housekeeping must keep running
                log.exception("service housekeeping failed")

    async def _tick(self, now: float) -> None:
        self._drain_latencies()
        for call_id, ended in list(self._ended_at.items()):
            if now - ended > self.limits.finished_kept_s:
                self._ended_at.pop(call_id, None)
                self.calls.pop(call_id, None)
                self._meta.pop(call_id, None)
                self._flagged.pop(call_id, None)
                self._paused.discard(call_id)
                self._broadcast({"type": "gone", "call_id": call_id})
        ending: list[tuple[Endable, int, str]] = []
        late = self.drain_started is not None and now - self.drain_started > self.limits.drain_timeout_s
        for stream in list(self.streams):
            if late:
                ending.append((stream, 1001, "server shutting down"))
            elif now - stream.last_seen > self.limits.idle_timeout_s:
                ending.append((stream, 1008, f"no message for {self.limits.idle_timeout_s:g} s"))
        for stream, code, reason in ending:
            self.loop.create_task(stream.end(code, reason))  # type: ignore[union-attr]

    def _drain_latencies(self) -> None:
        """Move the pool's recent latencies into the histograms."""
        deciding = partial(self.pool.decision_latencies, watch=False)
        watch = partial(self.pool.decision_latencies, watch=True)
        mark, self._latency_mark = self._latency_mark, time.monotonic()
        for source, histogram in ((deciding, self.metrics.latency.labels("deciding")),
                                  (watch, self.metrics.latency.labels("watch")),
                                  (self.pool.spoof_latencies, self.metrics.spoof_latency)):
            for value in source(since=mark):
                histogram.observe(float(value))
