"""What every streaming protocol shares: one WebSocket = one live call.

A protocol subclass (:mod:`voiceauth.serve.twilio`, :mod:`voiceauth.serve.audiohook`) parses
its messages and calls :meth:`Stream.open_call`, :meth:`Stream.feed` and :meth:`Stream.end`;
this class owns the call session, the outbound queue (one writer task per stream, so status
pushes from the pool's worker threads never race the protocol's own replies) and the
bookkeeping in the :class:`~voiceauth.serve.hub.Hub`.

How a stream ends:

* the client ends it (Twilio ``stop``, AudioHook ``close``): the call is closed, its queued
  speech is scored (up to ``final_wait_s``), the final status is sent, then close 1000;
* a protocol error: an error message where the protocol has one, then the close code
  (1003 wrong format or rate, 1007 bad JSON / base64, 1008 policy: key, scope, order,
  idle, 1009 frame too big, 1013 too many streams);
* the client vanishes: the call is closed and settled as above, nobody is told; the other
  calls never notice;
* shutdown: calls in flight go on for ``drain_timeout_s``, then end as if the client had
  ended them (close 1001).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from voiceauth.client import VoiceAuth
from voiceauth.errors import SessionError, VoiceAuthError
from voiceauth.live import CallResult, CallSession
from voiceauth.serve.auth import ApiKey, KeyRing, Scope, token_from
from voiceauth.serve.errors import (
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    CLOSE_TRY_LATER,
    ServeError,
    StreamError,
)
from voiceauth.serve.hub import CallMeta, Hub, call_json
from voiceauth.store.base import AuditRecord

log = logging.getLogger("voiceauth.serve")


class Stream:
    """One streaming connection carrying one call."""

    protocol = "stream"
    closing_ends_call = False
    """Whether the client closing the connection is how it ends a call (AudioSocket), not a vanishing."""

    def __init__(self, ws: WebSocket, va: VoiceAuth, keys: KeyRing, hub: Hub) -> None:
        self.ws = ws
        self.va = va
        self.keys = keys
        self.hub = hub
        self.limits = hub.limits
        self.last_seen = time.monotonic()
        self.session: CallSession | None = None
        self.key: ApiKey | None = None
        self.max_frame = 0
        self._out: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._final: asyncio.Future[CallResult] | None = None
        self._ending = False
        self._closed_sent = False

    # -- the protocol's part ------------------------------------------------------------------------
    async def handle(self, message: dict[str, Any]) -> None:
        """One ASGI ``websocket.receive`` message (``text`` or ``bytes``)."""
        raise NotImplementedError

    def status_message(self, result: CallResult, final: bool) -> dict[str, Any] | None:
        """The protocol's message carrying a status change (None: not sent)."""
        raise NotImplementedError

    def error_message(self, error: StreamError) -> dict[str, Any] | None:
        """The protocol's error message sent before closing (None: the close code alone)."""
        return None

    def closing_messages(self, code: int) -> list[dict[str, Any]]:
        """Messages the protocol sends last, after the final status, before the close frame."""
        return []

    # -- run ---------------------------------------------------------------------------------------------
    async def run(self) -> None:
        await self.ws.accept()
        self._writer = asyncio.get_running_loop().create_task(self._write())
        if self.hub.draining or len(self.hub.streams) >= self.limits.max_streams:
            why = "server shutting down" if self.hub.draining else f"{len(self.hub.streams)} streams already"
            self.hub.metrics.protocol_errors.labels(self.protocol, str(CLOSE_TRY_LATER)).inc()
            await self.fail(StreamError(f"{why}; try again later", CLOSE_TRY_LATER))
            await self._stop_writer()
            return
        self.hub.streams.add(self)
        outcome = "ended"
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    outcome = "ended" if self._ending or self.closing_ends_call else "vanished"
                    break
                self.last_seen = time.monotonic()
                if self._ending:
                    continue  # the call is over; wait for the client's close
                await self.handle(message)
        except StreamError as exc:
            outcome = "protocol_error"
            self.hub.metrics.protocol_errors.labels(self.protocol, str(exc.code)).inc()
            await self.fail(exc)
        except WebSocketDisconnect:
            outcome = "vanished"
        except Exception:  # noqa: BLE001 - one broken stream must not take the server down
            outcome = "internal_error"
            log.exception("%s stream failed", self.protocol)
            await self.fail(StreamError("internal error; the service log has the details", CLOSE_INTERNAL))
        finally:
            self.hub.streams.discard(self)
            self.hub.metrics.streams_total.labels(self.protocol, outcome).inc()
            if self.session is not None and not self.session.closed:
                self.session.close()  # a vanished client's call is settled all the same
            await self._stop_writer()

    async def _write(self) -> None:
        while True:
            kind, payload = await self._out.get()
            try:
                if kind == "json":
                    await self.ws.send_json(payload)
                elif kind == "close":
                    code, reason = payload
                    if self.ws.application_state is WebSocketState.CONNECTED:
                        await self.ws.close(code, reason[:120])
                    return
                else:
                    return
            except Exception:  # noqa: BLE001 - the client is gone; nothing more to send
                return

    async def _stop_writer(self) -> None:
        if self._writer is None:
            return
        if not self._closed_sent:
            self._out.put_nowait(("stop", None))
        try:
            await asyncio.wait_for(self._writer, 5.0)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self._writer.cancel()

    def send(self, message: dict[str, Any] | None) -> None:
        if message is not None and not self._closed_sent:
            self._out.put_nowait(("json", message))

    def _close(self, code: int, reason: str) -> None:
        if not self._closed_sent:
            self._closed_sent = True
            self._out.put_nowait(("close", (code, reason)))

    async def fail(self, error: StreamError) -> None:
        """End the stream on a protocol error: error message, close code; the call is settled."""
        log.info("%s stream closed (%d): %s", self.protocol, error.code, error)
        self._ending = True
        self.send(self.error_message(error))
        if self.session is not None:
            self.session.close()
        self._close(error.code, str(error))

    async def end(self, code: int = CLOSE_NORMAL, reason: str = "call ended") -> None:
        """End the call: close it, wait for its final status, send it, close the stream. Idempotent."""
        if self._ending:
            return
        self._ending = True
        if self._final is not None:  # a call was opened (its session may still be on its way back)
            if self.session is not None:
                self.session.close()
            final = await self.final_result()
            if final is not None:
                self.send(self.status_message(final, final=True))
        for message in self.closing_messages(code):
            self.send(message)
        self._close(code, reason)

    async def final_result(self) -> CallResult | None:
        if self._final is None:
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(self._final), self.limits.final_wait_s)
        except asyncio.TimeoutError:
            return self.session.result() if self.session is not None else None

    # -- the call -------------------------------------------------------------------------------------------
    def authenticate(self, token: str | None = None) -> ApiKey:
        """The stream's key: the handshake's header, else ``token`` from the protocol's parameters."""
        try:
            key = self.keys.authenticate(token_from(self.ws.headers) or token)
            return key.require(Scope.STREAM)
        except ServeError as exc:
            raise StreamError(str(exc), CLOSE_POLICY) from exc

    def frame_limit(self, sample_rate: int, width: int, channels: int = 1) -> None:
        self.max_frame = self.limits.max_frame_bytes(sample_rate, width, channels)

    def check_size(self, size: int) -> None:
        if size > self.max_frame:
            raise StreamError(f"audio frame of {size} bytes exceeds the limit of {self.max_frame} bytes "
                              f"({self.limits.max_frame_ms} ms); send 20 ms frames", CLOSE_TOO_BIG)

    async def open_call(self, key: ApiKey, customer_id: str, *, encoding: str, sample_rate: int,
                        stream_id: str) -> CallSession:
        """Start the stream's call for ``customer_id``; status changes are pushed back on the stream."""
        self.key = key
        loop = asyncio.get_running_loop()
        self._final = loop.create_future()
        call_id = f"{self.protocol}-{uuid.uuid4().hex[:12]}"
        actor = f"key:{key.key_id}"
        self.hub.register(CallMeta(call_id, self.protocol, stream_id, actor, time.time()))

        def on_update(result: CallResult) -> None:  # worker thread
            self.hub.threadsafe(self._updated, result)

        def on_decision(result: CallResult) -> None:  # worker thread
            self.hub.threadsafe(self._decided, result)

        def start() -> CallSession:
            session = self.va.start_call(customer_id, sample_rate=sample_rate, encoding=encoding, call_id=call_id,
                                         on_update=on_update, on_decision=on_decision)
            # the call's decisions are audited as the service; this links the call to the key that streamed it
            self.va.store.audit(AuditRecord("stream_open", session.customer_id, self.protocol, actor,
                                            {"call_id": call_id, "stream_id": stream_id[:64]}))
            return session

        try:
            self.session = await run_in_threadpool(start)
        except (SessionError, VoiceAuthError) as exc:
            raise StreamError(str(exc), CLOSE_POLICY) from exc
        self.hub.update(self.session.result())
        return self.session

    def _updated(self, result: CallResult) -> None:
        self.hub.update(result)
        if result.closed and self._final is not None and not self._final.done():
            self._final.set_result(result)
            if not self._ending and self.hub.loop is not None:
                # ended by the service (not enrolled, opted out or erased meanwhile, expired): say so and close
                self.hub.loop.create_task(self.end(CLOSE_NORMAL, f"call ended: {result.status.value}"))

    def _decided(self, result: CallResult) -> None:
        if not result.closed and not self._ending:
            self.send(self.status_message(result, final=False))

    def feed(self, audio: bytes) -> None:
        if self.session is None:
            raise StreamError("audio before the call was opened", CLOSE_POLICY)
        if self.session.closed:
            return
        try:
            self.session.feed(audio)
        except SessionError as exc:
            raise StreamError(str(exc)) from exc

    def status_body(self, result: CallResult) -> dict[str, Any]:
        return call_json(result)


async def serve_stream(stream: Stream) -> None:
    with contextlib.suppress(WebSocketDisconnect):
        await stream.run()
