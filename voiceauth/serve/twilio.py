"""Twilio Media Streams: ``wss://HOST/v1/streams/twilio``.

Twilio sends JSON text messages: ``connected``, then ``start`` (``streamSid``,
``start.customParameters``, ``start.mediaFormat``), then ``media`` (``media.payload``: base64
G.711 mu-law, 8 kHz mono, 20 ms per message), ``mark`` / ``dtmf``, and ``stop``.

* Customer: ``customParameters.customerId`` (``<Parameter name="customerId" .../>`` in TwiML).
* Key: an ``X-API-Key`` / ``Authorization: Bearer`` header on the handshake, or, since Twilio
  cannot add headers, ``customParameters.apiKey``. It needs the ``stream`` scope.
* Format: ``audio/x-mulaw`` at 8000 Hz, 1 channel; anything else closes the stream with 1003.
* Tracks: with ``both_tracks`` only the ``inbound`` (caller) track is heard.

Pushed back on the stream, one per status change and a final one before the close:
``{"event": "voiceauth.status", "streamSid": ..., "final": bool, "call": {...}}``; on a
protocol error ``{"event": "voiceauth.error", "streamSid": ..., "code": N, "message": ...}``
before the close frame. (Twilio itself ignores messages other than media/mark/clear; a
client that reads them, such as a proxy or the tests, gets the status in-band. The agent
view and ``/v1/calls`` show the same.)

Pace: Twilio streams in real time; a test client may send faster. Frames are queued by the
session (up to ``SessionSettings.max_queued_s`` of audio; older audio is dropped and counted
as ``dropped_audio_s``), so faster than real time is fine up to that backlog.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from voiceauth.live import CallResult
from voiceauth.serve.errors import CLOSE_INVALID_DATA, CLOSE_POLICY, CLOSE_UNSUPPORTED, StreamError
from voiceauth.serve.streams import Stream

RATE = 8000
ENCODING = "audio/x-mulaw"


class TwilioStream(Stream):
    protocol = "twilio"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.stream_sid = ""

    async def handle(self, message: dict[str, Any]) -> None:
        text = message.get("text")
        if text is None:
            raise StreamError("Twilio Media Streams messages are JSON text frames, not binary", CLOSE_UNSUPPORTED)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StreamError(f"message is not JSON ({exc.msg} at {exc.pos})", CLOSE_INVALID_DATA) from exc
        if not isinstance(data, dict) or not isinstance(data.get("event"), str):
            raise StreamError("message is not a JSON object with an 'event'", CLOSE_INVALID_DATA)
        event = data["event"]
        if event == "media":
            self._media(data)
        elif event == "start":
            await self._start(data)
        elif event == "stop":
            await self.end(1000, "stream stopped")
        elif event == "connected" and self.session is not None:
            raise StreamError("'connected' after 'start'", CLOSE_POLICY)
        # connected, mark, dtmf and events added later: nothing to do

    async def _start(self, data: dict[str, Any]) -> None:
        if self.session is not None:
            raise StreamError("a second 'start' on one stream", CLOSE_POLICY)
        start = data.get("start")
        if not isinstance(start, dict):
            raise StreamError("'start' message without a 'start' object", CLOSE_INVALID_DATA)
        sid = data.get("streamSid") or start.get("streamSid") or ""
        self.stream_sid = str(sid)[:64]
        params = start.get("customParameters") or {}
        if not isinstance(params, dict):
            raise StreamError("start.customParameters must be an object", CLOSE_INVALID_DATA)
        api_key = params.get("apiKey")
        key = self.authenticate(api_key if isinstance(api_key, str) else None)
        fmt = start.get("mediaFormat") or {"encoding": ENCODING, "sampleRate": RATE, "channels": 1}
        if not isinstance(fmt, dict):
            raise StreamError("start.mediaFormat must be an object", CLOSE_INVALID_DATA)
        if fmt.get("encoding") != ENCODING or fmt.get("sampleRate") != RATE or fmt.get("channels", 1) != 1:
            raise StreamError(
                f"media format {fmt.get('encoding')!r} at {fmt.get('sampleRate')!r} Hz, "
                f"{fmt.get('channels', 1)!r} channel(s) is not supported; send {ENCODING} at {RATE} Hz mono",
                CLOSE_UNSUPPORTED)
        customer = params.get("customerId")
        if not isinstance(customer, str) or not customer:
            raise StreamError("start.customParameters.customerId is missing: pass the customer the caller claims "
                              "to be as a <Parameter name=\"customerId\">", CLOSE_POLICY)
        self.frame_limit(RATE, 1)
        await self.open_call(key, customer, encoding="mulaw", sample_rate=RATE, stream_id=self.stream_sid)

    def _media(self, data: dict[str, Any]) -> None:
        if self.session is None:
            raise StreamError("'media' before 'start'", CLOSE_POLICY)
        media = data.get("media")
        if not isinstance(media, dict) or not isinstance(media.get("payload"), str):
            raise StreamError("'media' message without a media.payload string", CLOSE_INVALID_DATA)
        if media.get("track", "inbound") != "inbound":
            return  # the agent's side of the call
        payload = media["payload"]
        if len(payload) > 4 * (self.max_frame // 3 + 1):
            self.check_size(len(payload) * 3 // 4)
        try:
            audio = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise StreamError(f"media.payload is not valid base64 ({exc})", CLOSE_INVALID_DATA) from exc
        self.check_size(len(audio))
        self.feed(audio)

    def status_message(self, result: CallResult, final: bool) -> dict[str, Any]:
        return {"event": "voiceauth.status", "streamSid": self.stream_sid, "final": final,
                "call": self.status_body(result)}

    def error_message(self, error: StreamError) -> dict[str, Any]:
        return {"event": "voiceauth.error", "streamSid": self.stream_sid, "code": error.code,
                "message": str(error)}
