"""Genesys Cloud AudioHook (protocol version 2): ``wss://HOST/v1/streams/audiohook``.

The client (Genesys) sends JSON text messages, each with ``version`` ``"2"``, ``type``,
``seq`` (1, 2, 3...), ``serverseq`` (the last ``seq`` it saw from us), ``id`` (the
session) and ``parameters``; and binary frames of audio in the format the server picked.

* ``open``: ``parameters.media`` offers formats (``PCMU`` at 8000 Hz, or ``L16``: signed
  16-bit little-endian at 8000 or 16000 Hz; channels ``["external"]`` or
  ``["external", "internal"]``, interleaved). The first usable offer is answered in
  ``opened``; only the ``external`` (customer) channel is heard. No usable offer:
  ``disconnect`` (reason ``error``) and close 1003.
* Customer: ``parameters.inputVariables.customerId`` or ``parameters.customConfig.customerId``.
* Key: the ``X-API-Key`` header of the handshake (AudioHook's integration key), ``stream`` scope;
  a missing or wrong key gets ``disconnect`` (reason ``unauthorized``) and close 1008.
* ``ping`` -> ``pong``; ``paused`` / ``resumed`` pause and resume listening; ``close`` ->
  final status, ``closed``, close 1000. ``update``, ``discarded``, ``dtmf``, ``error``: noted only.

Status changes go to the client as ``event`` messages:
``{"type": "event", "parameters": {"entities": [{"type": "voiceauth.status", "data": {...}}]}}``.
Protocol errors (bad JSON, out-of-order ``seq``, audio before ``opened``, oversized frames)
get ``disconnect`` with reason ``error`` and the close code (1007, 1008, 1009).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from voiceauth.live import CallResult
from voiceauth.serve.errors import (
    CLOSE_INVALID_DATA,
    CLOSE_POLICY,
    CLOSE_UNSUPPORTED,
    StreamError,
)
from voiceauth.serve.streams import Stream

VERSION = "2"
FORMATS = {"PCMU": ("mulaw", 1, (8000,)), "L16": ("pcm16", 2, (8000, 16000))}


def _duration(seconds: float) -> str:
    return f"PT{seconds:.3f}S".replace(".000S", "S")


class AudioHookStream(Stream):
    protocol = "audiohook"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.session_id = self.ws.headers.get("audiohook-session-id", "")[:64]
        self.seq = 0
        self.client_seq = 0
        self.channels = 1
        self.width = 1
        self.rate = 8000
        self.samples = 0

    # -- outgoing ---------------------------------------------------------------------------------
    def message(self, kind: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        self.seq += 1
        return {"version": VERSION, "type": kind, "seq": self.seq, "clientseq": self.client_seq,
                "id": self.session_id, "position": _duration(self.samples / self.rate),
                "parameters": parameters or {}}

    def status_message(self, result: CallResult, final: bool) -> dict[str, Any]:
        data = dict(self.status_body(result), final=final)
        return self.message("event", {"entities": [{"type": "voiceauth.status", "data": data}]})

    def error_message(self, error: StreamError) -> dict[str, Any]:
        reason = "unauthorized" if "API key" in str(error) else "error"
        return self.message("disconnect", {"reason": reason, "info": str(error)})

    def closing_messages(self, code: int) -> list[dict[str, Any]]:
        if code == 1000:
            return [self.message("closed")]
        return [self.message("disconnect", {"reason": "completed" if code == 1001 else "error",
                                            "info": "server shutting down" if code == 1001 else "stream ended"})]

    # -- incoming ---------------------------------------------------------------------------------
    async def handle(self, message: dict[str, Any]) -> None:
        if message.get("bytes") is not None:
            self._audio(message["bytes"])
            return
        try:
            data = json.loads(message.get("text") or "")
        except json.JSONDecodeError as exc:
            raise StreamError(f"message is not JSON ({exc.msg} at {exc.pos})", CLOSE_INVALID_DATA) from exc
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            raise StreamError("message is not a JSON object with a 'type'", CLOSE_INVALID_DATA)
        seq = data.get("seq")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq != self.client_seq + 1:
            raise StreamError(f"seq {seq!r} out of order (expected {self.client_seq + 1})", CLOSE_POLICY)
        self.client_seq = seq
        if data.get("version") != VERSION:
            raise StreamError(f"AudioHook version {data.get('version')!r} is not supported; use {VERSION!r}",
                              CLOSE_UNSUPPORTED)
        if not self.session_id:
            self.session_id = str(data.get("id", ""))[:64]
        params = data.get("parameters") or {}
        if not isinstance(params, dict):
            raise StreamError("parameters must be an object", CLOSE_INVALID_DATA)
        kind = data["type"]
        if kind == "open":
            await self._open(params)
        elif self.session is None and kind not in ("ping", "close"):
            raise StreamError(f"{kind!r} before 'open'", CLOSE_POLICY)
        elif kind == "ping":
            self.send(self.message("pong"))
        elif kind == "close":
            await self.end(1000, "session closed")
        elif kind in ("paused", "resumed") and self.session is not None:
            self.hub.set_paused(self.session, kind == "paused")

    async def _open(self, params: dict[str, Any]) -> None:
        if self.session is not None:
            raise StreamError("a second 'open' on one session", CLOSE_POLICY)
        key = self.authenticate()
        offers = params.get("media")
        if not isinstance(offers, list):
            raise StreamError("open.parameters.media must be a list of offered formats", CLOSE_INVALID_DATA)
        chosen = next((m for m in offers if self._usable(m)), None)
        if chosen is None:
            raise StreamError("no offered media format is supported; offer PCMU at 8000 Hz or L16 at 8000/16000 Hz "
                              "with an 'external' channel", CLOSE_UNSUPPORTED)
        customer = None
        for source in ("inputVariables", "customConfig"):
            values = params.get(source)
            if isinstance(values, dict) and isinstance(values.get("customerId"), str) and values["customerId"]:
                customer = values["customerId"]
                break
        if customer is None:
            raise StreamError("no customer: set inputVariables.customerId (or customConfig.customerId) to the "
                              "customer the caller claims to be", CLOSE_POLICY)
        encoding, self.width, _ = FORMATS[chosen["format"]]
        self.rate = int(chosen["rate"])
        self.channels = len(chosen["channels"])
        self.external = chosen["channels"].index("external")
        self.frame_limit(self.rate, self.width, self.channels)
        await self.open_call(key, customer, encoding=encoding, sample_rate=self.rate,
                             stream_id=str(params.get("conversationId", self.session_id))[:64])
        self.send(self.message("opened", {"startPaused": False, "media": [chosen]}))

    @staticmethod
    def _usable(offer: Any) -> bool:
        if not isinstance(offer, dict) or offer.get("type", "audio") != "audio":
            return False
        spec = FORMATS.get(offer.get("format"))  # type: ignore[arg-type]
        channels = offer.get("channels")
        return (spec is not None and offer.get("rate") in spec[2] and isinstance(channels, list)
                and 1 <= len(channels) <= 2 and "external" in channels)

    def _audio(self, data: bytes) -> None:
        if self.session is None:
            raise StreamError("audio before the session was opened", CLOSE_POLICY)
        self.check_size(len(data))
        step = self.width * self.channels
        if len(data) % step:
            raise StreamError(f"audio frame of {len(data)} bytes is not whole {step}-byte sample frames",
                              CLOSE_INVALID_DATA)
        self.samples += len(data) // step
        if self.channels > 1:
            dtype = np.uint8 if self.width == 1 else np.dtype("<i2")
            data = np.frombuffer(data, dtype=dtype)[self.external::self.channels].tobytes()
        self.feed(data)
