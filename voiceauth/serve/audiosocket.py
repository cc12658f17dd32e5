"""Asterisk AudioSocket: live calls over plain TCP (``voiceauth serve --audiosocket-port N``).

The protocol (Asterisk's AudioSocket channel driver and dialplan application): each message is
a 3-byte header, the type (1 byte) and the payload's length (2 bytes, big-endian), then the
payload. Types read here: ``0x01`` the call's UUID (16 bytes, first), ``0x10`` audio (signed
16-bit linear PCM, 8 kHz mono, little-endian: 320 bytes per 20 ms), ``0x03`` a DTMF digit,
``0x00`` hang-up, ``0xff`` an error from Asterisk. Closing the socket also ends the call.

AudioSocket carries no credentials and no way back for a verdict, so the platform (its AGI or ARI
script, which chose the UUID it passes to ``AudioSocket(uuid,host:port)``) first announces the call
with a key that has the ``stream`` scope, and reads the verdict the same way:

    POST /v1/audiosocket/calls          {"uuid": "...", "customer_id": "..."}  -> 201
    GET  /v1/audiosocket/calls/{uuid}   {"state": "announced" | "live" | "ended", "call": {...}}

The UUID is then a single-use ticket: the connection that presents it within
``Limits.audiosocket_ticket_s`` streams that customer's call, audited as the announcing key. A UUID
that was never announced, has expired or was used already closes the connection before any audio
is heard; so do audio before the UUID, audio at another rate (``0x11``-``0x18``), an odd byte count,
a message over ``Limits.max_frame_ms`` of audio, or an unknown type. Nothing is sent back on the
socket (its way back is audio to the caller): the verdict is on the REST call above, ``/v1/calls``
and the agent view. DTMF digits are ignored and never logged: they may be a card number.
The service closes the socket, never sends a hang-up, so the dialplan carries on after
``AudioSocket()``. Keep the port on a private network, as Asterisk's own docs advise: the
protocol has no encryption.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.websockets import WebSocketState

from voiceauth.client import VoiceAuth
from voiceauth.ids import canonical_id
from voiceauth.live import CallResult
from voiceauth.serve.auth import ApiKey, KeyRing, Scope, token_from
from voiceauth.serve.errors import (
    CLOSE_INVALID_DATA,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED,
    ServeError,
    StreamError,
)
from voiceauth.serve.hub import Hub
from voiceauth.serve.streams import Stream

HEADER = struct.Struct(">BH")
HANGUP, UUID, DTMF, AUDIO, ERROR = 0x00, 0x01, 0x03, 0x10, 0xFF
OTHER_RATES = range(0x11, 0x19)
"""Audio at 12-192 kHz (newer Asterisk releases); refused: a call takes 8 kHz here."""
RATE = 8000
WIDTH = 2


@dataclass
class Ticket:
    """An announced call: who may stream it, for whom, until when."""

    uuid: str
    customer_id: str
    key: ApiKey
    expires: float
    claimed: bool = False
    call_id: str | None = None


class Tickets:
    """Announced AudioSocket calls, each claimable once (in memory; bounded by ``Limits.max_streams``)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._by_uuid: dict[str, Ticket] = {}

    def announce(self, call_uuid: object, customer_id: object, key: ApiKey) -> Ticket:
        try:
            text = str(uuid.UUID(str(call_uuid)))
        except ValueError as exc:
            raise ServeError(f"uuid {str(call_uuid)[:40]!r} is not a UUID; pass the one given to AudioSocket() "
                             "in the dialplan (its string form)") from exc
        customer = canonical_id(customer_id)
        self._forget_old()
        if text in self._by_uuid:
            raise ServeError(f"call {text} was announced already; use a new UUID for every call", 409)
        waiting = sum(1 for t in self._by_uuid.values() if not t.claimed)
        if waiting >= self.hub.limits.max_streams:
            raise ServeError(f"{waiting} announced calls are waiting for their connection; try again later", 503)
        ticket = Ticket(text, customer, key, time.monotonic() + self.hub.limits.audiosocket_ticket_s)
        self._by_uuid[text] = ticket
        return ticket

    def claim(self, call_uuid: str) -> Ticket:
        self._forget_old()
        ticket = self._by_uuid.get(call_uuid)
        if ticket is None or ticket.claimed:
            raise StreamError(f"no call is announced under UUID {call_uuid} (never, expired, or used already): "
                              "announce it with POST /v1/audiosocket/calls before AudioSocket() connects",
                              CLOSE_POLICY)
        ticket.claimed = True
        return ticket

    def find(self, call_uuid: str) -> Ticket | None:
        """The ticket of ``call_uuid`` in any of its string forms (case, hyphens); None if unknown."""
        self._forget_old()
        try:
            return self._by_uuid.get(str(uuid.UUID(call_uuid)))
        except ValueError:
            return None

    def _forget_old(self) -> None:
        """Drop tickets whose call never opened in time, and those whose call the hub no longer shows."""
        now = time.monotonic()
        for key, ticket in list(self._by_uuid.items()):
            gone = ticket.call_id is not None and ticket.call_id not in self.hub.calls
            if (ticket.call_id is None and now > ticket.expires) or gone:
                del self._by_uuid[key]


class TcpConnection:
    """The part of a WebSocket that :class:`~voiceauth.serve.streams.Stream` uses, over one TCP connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_payload: int) -> None:
        self.reader = reader
        self.writer = writer
        self.max_payload = max_payload
        self.headers: dict[str, str] = {}
        self.application_state = WebSocketState.CONNECTING

    async def accept(self) -> None:
        self.application_state = WebSocketState.CONNECTED

    async def receive(self) -> dict[str, Any]:
        """One AudioSocket message, or a disconnect once the peer has closed (a message cut short too)."""
        try:
            kind, length = HEADER.unpack(await self.reader.readexactly(HEADER.size))
            if length > self.max_payload:
                raise StreamError(f"AudioSocket message of {length} bytes is over the limit of {self.max_payload}; "
                                  "send 20 ms audio messages", CLOSE_TOO_BIG)
            payload = await self.reader.readexactly(length) if length else b""
        except (asyncio.IncompleteReadError, ConnectionError):
            return {"type": "websocket.disconnect"}
        return {"type": "audiosocket.message", "kind": kind, "payload": payload}

    async def send_json(self, payload: Any) -> None:
        """Nothing goes back on the socket (the verdict is on REST and the agent view)."""

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        self.application_state = WebSocketState.DISCONNECTED
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


class AudioSocketStream(Stream):
    protocol = "audiosocket"
    closing_ends_call = True

    def __init__(self, conn: TcpConnection, va: VoiceAuth, keys: KeyRing, hub: Hub, tickets: Tickets) -> None:
        super().__init__(conn, va, keys, hub)  # type: ignore[arg-type]
        self.tickets = tickets  # (message sizes are bounded by the connection, before the payload is read)

    async def handle(self, message: dict[str, Any]) -> None:
        kind, payload = message["kind"], message["payload"]
        if kind == AUDIO:
            if self.session is None:
                raise StreamError("audio before the call's UUID", CLOSE_POLICY)
            if len(payload) % WIDTH:
                raise StreamError(f"audio of {len(payload)} bytes is not whole 16-bit samples", CLOSE_INVALID_DATA)
            self.feed(payload)
        elif kind == UUID:
            await self._open(payload)
        elif kind == DTMF:
            return  # never looked at, never logged: the caller may be keying in a card number
        elif kind == HANGUP:
            await self.end(CLOSE_NORMAL, "hang-up")
        elif kind == ERROR:
            await self.end(CLOSE_NORMAL, f"Asterisk reported error {payload[:4].hex() or '(no code)'}")
        elif kind in OTHER_RATES:
            raise StreamError(f"audio message type 0x{kind:02x} is not 8 kHz: set the channel to slin (8 kHz, "
                              "type 0x10) before AudioSocket()", CLOSE_UNSUPPORTED)
        else:
            raise StreamError(f"unknown AudioSocket message type 0x{kind:02x}", CLOSE_INVALID_DATA)

    async def _open(self, payload: bytes) -> None:
        if self.session is not None:
            raise StreamError("a second UUID on one connection", CLOSE_POLICY)
        if len(payload) != 16:
            raise StreamError(f"the UUID message holds {len(payload)} bytes, not 16", CLOSE_INVALID_DATA)
        ticket = self.tickets.claim(str(uuid.UUID(bytes=payload)))
        session = await self.open_call(ticket.key, ticket.customer_id, encoding="pcm16", sample_rate=RATE,
                                       stream_id=ticket.uuid)
        ticket.call_id = session.call_id

    def status_message(self, result: CallResult, final: bool) -> None:
        return None


class AudioSocketGate:
    """The TCP listener and its two REST routes, sharing the app's client, keys and hub."""

    def __init__(self, va: VoiceAuth, keys: KeyRing, hub: Hub,
                 listen: socket.socket | tuple[str, int] | None) -> None:
        self.va = va
        self.keys = keys
        self.hub = hub
        self.listen = listen
        self.tickets = Tickets(hub)
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        if self.listen is None:
            return
        if isinstance(self.listen, socket.socket):
            self._server = await asyncio.start_server(self._connection, sock=self.listen)
        else:
            host, port = self.listen
            self._server = await asyncio.start_server(self._connection, host, port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        limit = max(self.hub.limits.max_frame_bytes(RATE, WIDTH), 16)
        conn = TcpConnection(reader, writer, limit)
        try:
            await AudioSocketStream(conn, self.va, self.keys, self.hub, self.tickets).run()
        finally:
            if conn.application_state is not WebSocketState.DISCONNECTED:
                await conn.close()

    # -- REST ------------------------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        return [Route("/v1/audiosocket/calls", self.announce, methods=["POST"]),
                Route("/v1/audiosocket/calls/{uuid}", self.verdict, methods=["GET"])]

    def _key(self, request: Request) -> ApiKey:
        return self.keys.authenticate(token_from(request.headers)).require(Scope.STREAM)

    async def announce(self, request: Request) -> JSONResponse:
        key = self._key(request)
        if self.listen is None:
            raise ServeError("this server takes no AudioSocket calls; start it with --audiosocket-port", 404)
        try:
            body = await request.json()
        except ValueError as exc:
            raise ServeError(f"send the call as JSON: uuid and customer_id ({exc})") from exc
        if not isinstance(body, dict):
            raise ServeError('send the call as a JSON object: {"uuid": ..., "customer_id": ...}')
        ticket = self.tickets.announce(body.get("uuid"), body.get("customer_id"), key)
        return JSONResponse({"uuid": ticket.uuid, "customer_id": ticket.customer_id,
                             "expires_in_s": self.hub.limits.audiosocket_ticket_s}, status_code=201)

    async def verdict(self, request: Request) -> JSONResponse:
        self._key(request)
        ticket = self.tickets.find(request.path_params["uuid"])
        if ticket is None:
            raise ServeError("no AudioSocket call is known under this UUID (never announced, expired, or "
                             "ended long enough ago to be forgotten)", 404)
        call = self.hub.calls.get(ticket.call_id) if ticket.call_id is not None else None
        state = "announced" if call is None else ("ended" if call.get("closed") else "live")
        return JSONResponse({"uuid": ticket.uuid, "state": state, "call": call})
