"""The ASGI application: one shared ``VoiceAuth`` (and its session pool) behind REST,
streaming, the agent view, health and metrics.

    from voiceauth.serve import create_app
    app = create_app(va, KeyRing.load("serve-keys.json"))   # any ASGI server; `voiceauth serve` uses uvicorn

Routes (scope in brackets; see :mod:`voiceauth.serve.auth`):

    GET  /healthz                          liveness (no key)
    GET  /readyz                           200 once the models are loaded, 503 while loading or draining (no key)
    GET  /metrics                          Prometheus text format [metrics]
    POST /v1/customers/{id}/enrol          multipart: audio (1+), consent_channel, consent_notice_version,
                                           consent_captured_by?, consent_purpose?, mode=new|update|replace [admin]
    POST /v1/customers/{id}/verify         multipart: audio [verify]
    POST /v1/identify                      multipart: audio, top_k? [verify]
    POST /v1/customers/{id}/opt-out        [admin]
    DELETE /v1/customers/{id}              [admin]
    GET/POST/DELETE /v1/watchlist[/{label}] multipart: audio (1+), reason [admin]
    GET  /v1/calls                         live and recently ended calls [agent]
    POST /v1/calls/{id}/pause, /resume     PCI: stop / go back to hearing a live call (id: call or stream id) [stream]
    WS   /v1/streams/twilio                Twilio Media Streams [stream]
    WS   /v1/streams/audiohook             Genesys AudioHook [stream]
    POST /v1/audiosocket/calls, GET /v1/audiosocket/calls/{uuid}   announce an Asterisk AudioSocket call
                                           (TCP, ``audiosocket=``) and read its verdict [stream]
    GET  /agent, POST /agent/login, GET /agent/events   the agent view [agent]

Errors are JSON ``{"error": <type>, "message": ..., "request_id": ...}``: the library's own
message with a 4xx for the caller's mistakes (422 unusable audio, 404 unknown customer, 409
opted out or already enrolled, 401/403 key or scope), 5xx for the service's (503 model,
500 store); never a traceback (that goes to the log under the request id).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from voiceauth.client import VoiceAuth
from voiceauth.errors import VoiceAuthError
from voiceauth.live import SessionPool, SessionSettings
from voiceauth.serve.agent import AgentView
from voiceauth.serve.audiohook import AudioHookStream
from voiceauth.serve.audiosocket import AudioSocketGate
from voiceauth.serve.auth import KeyRing, token_from
from voiceauth.serve.auth import Scope as KeyScope
from voiceauth.serve.config import Limits
from voiceauth.serve.errors import error_body, http_status
from voiceauth.serve.hub import Hub
from voiceauth.serve.metrics import CONTENT_TYPE
from voiceauth.serve.rest import Rest
from voiceauth.serve.streams import serve_stream
from voiceauth.serve.twilio import TwilioStream

log = logging.getLogger("voiceauth.serve")


def shared_pool(va: VoiceAuth, limits: Limits, settings: SessionSettings | None = None) -> SessionPool:
    """The client's session pool, made now with settings that match the service's limits
    (the facade makes one on its first call otherwise)."""
    with va._sessions_lock:  # noqa: SLF001 - the facade has no public way to pass SessionSettings
        if va._sessions is None:  # noqa: SLF001
            settings = settings or SessionSettings(max_sessions=max(limits.max_streams * 2, 64))
            va._sessions = SessionPool(va.services, settings, watchlist=va.watchlist)  # noqa: SLF001
        return va._sessions  # noqa: SLF001


class Service:
    """State shared by the routes of one app."""

    def __init__(self, va: VoiceAuth, keys: KeyRing, limits: Limits, settings: SessionSettings | None) -> None:
        self.va = va
        self.keys = keys
        self.limits = limits
        self.pool = shared_pool(va, limits, settings)
        self.hub = Hub(limits, self.pool)
        self.ready = threading.Event()
        self.warm_error: str | None = None

    def warm_up(self) -> None:
        """Load the speaker and spoof models before the first call needs them (readiness)."""
        try:
            noise = (np.random.default_rng(0).standard_normal(16000) * 0.01).astype(np.float32)
            self.va.embedder.embed([noise])
            if self.va.spoof is not None:
                self.va.spoof.score_speech(noise, 16000)
            self.va.thresholds()
            self.ready.set()
        except Exception as exc:  # noqa: BLE001 - reported by /readyz and the log
            self.warm_error = f"{type(exc).__name__}: {exc}"
            log.exception("loading the models failed; /readyz stays 503")

    # -- small endpoints ---------------------------------------------------------------------------
    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        if self.hub.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if not self.ready.is_set():
            return JSONResponse({"status": "loading" if self.warm_error is None else "failed",
                                 "error": self.warm_error}, status_code=503)
        return JSONResponse({"status": "ready", "live_calls": self.pool.live, "streams": len(self.hub.streams)})

    async def metrics(self, request: Request) -> Response:
        self.keys.authenticate(token_from(request.headers)).require(KeyScope.METRICS)
        return Response(self.hub.metrics.render(), media_type=CONTENT_TYPE)

    async def twilio(self, ws: WebSocket) -> None:
        await serve_stream(TwilioStream(ws, self.va, self.keys, self.hub))

    async def audiohook(self, ws: WebSocket) -> None:
        await serve_stream(AudioHookStream(ws, self.va, self.keys, self.hub))

    # -- errors -------------------------------------------------------------------------------------------
    async def error(self, request: Request, exc: Exception) -> Response:
        request_id = uuid.uuid4().hex[:12]
        if isinstance(exc, HTTPException):
            return JSONResponse({"error": "HTTPError", "message": exc.detail, "request_id": request_id},
                                status_code=exc.status_code, headers={"X-Request-Id": request_id})
        status = http_status(exc)
        if status >= 500:
            log.error("request %s %s failed (%s)", request_id, request.url.path, type(exc).__name__,
                      exc_info=not isinstance(exc, VoiceAuthError))
        return JSONResponse(error_body(exc, request_id), status_code=status, headers={"X-Request-Id": request_id})


class CountRequests:
    """Counts REST responses by endpoint and status (labels never hold ids)."""

    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            endpoint = scope.get("endpoint")
            name = getattr(endpoint, "__name__", "unknown")
            self.service.hub.metrics.requests.labels(name, str(status[0])).inc()


def create_app(va: VoiceAuth, keys: KeyRing, limits: Limits | None = None, *,
               settings: SessionSettings | None = None, warm_up: bool = True,
               audiosocket: socket.socket | tuple[str, int] | None = None) -> Starlette:
    """The service for ``va`` (which it does not close) and the API keys in ``keys``; with
    ``audiosocket`` (a bound socket or ``(host, port)``) it also takes Asterisk AudioSocket calls
    over TCP there (:mod:`voiceauth.serve.audiosocket`)."""
    limits = limits or Limits()
    service = Service(va, keys, limits, settings)
    rest = Rest(va, keys, service.hub)
    agent = AgentView(keys, service.hub)
    gate = AudioSocketGate(va, keys, service.hub, audiosocket)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.hub.start()
        await gate.start()
        if warm_up:
            threading.Thread(target=service.warm_up, name="voiceauth-warm-up", daemon=True).start()
        else:
            service.ready.set()
        yield
        service.hub.begin_drain()
        await gate.stop()
        await service.hub.stop()

    routes = [
        Route("/healthz", service.healthz), Route("/readyz", service.readyz), Route("/metrics", service.metrics),
        *rest.routes(), *agent.routes(), *gate.routes(),
        WebSocketRoute("/v1/streams/twilio", service.twilio),
        WebSocketRoute("/v1/streams/audiohook", service.audiohook),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={Exception: service.error, HTTPException: service.error,
                                        VoiceAuthError: service.error})
    app.state.service = service
    app.state.audiosocket = gate
    app.add_middleware(CountRequests, service=service)
    return app
