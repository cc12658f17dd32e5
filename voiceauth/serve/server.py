"""Running the app on uvicorn, with a shutdown that finishes the calls in flight.

On SIGTERM or Ctrl-C the server stops taking new streams (``/readyz`` turns 503 so a load
balancer moves new calls elsewhere; a new stream is closed with 1013), lets the streams in
flight go on for ``Limits.drain_timeout_s``, then ends the remaining ones (final status, close
1001), and only then stops uvicorn; the session pool finishes the queued speech when the
client is closed. A second Ctrl-C quits at once.

TLS: pass ``ssl_certfile`` / ``ssl_keyfile`` (``voiceauth serve --ssl-certfile ... --ssl-keyfile ...``),
uvicorn's own options; or terminate TLS at a proxy in front and keep ``--host 127.0.0.1``.
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette

from voiceauth.serve.app import Service

log = logging.getLogger("voiceauth.serve")


class DrainingServer(uvicorn.Server):
    """uvicorn, but the first exit signal drains the streams before uvicorn's own shutdown."""

    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self.service = service
        self._drain_requested = False
        self._deadline: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_requested:
            if sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True
            return
        self._drain_requested = True  # acted on by on_tick, on the event loop

    async def on_tick(self, counter: int) -> bool:
        hub = self.service.hub
        if self._drain_requested and not hub.draining:
            hub.begin_drain()
        if hub.draining:
            limits = self.service.limits
            if self._deadline is None:
                self._deadline = time.monotonic() + limits.drain_timeout_s + limits.final_wait_s + 5.0
            if hub.drained or time.monotonic() > self._deadline:
                self.should_exit = True
        return await super().on_tick(counter)


def run(app: Starlette, *, host: str = "127.0.0.1", port: int = 8080, log_level: str = "info",
        **uvicorn_options: Any) -> None:
    """Serve ``app`` until SIGTERM / Ctrl-C (see the module docs)."""
    service: Service = app.state.service
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, ws="websockets-sansio",
                            ws_max_size=service.limits.max_message_bytes, timeout_graceful_shutdown=10,
                            proxy_headers=False, server_header=False, **uvicorn_options)
    DrainingServer(config, service).run()
