"""Helpers of the service tests (no tests here): a real uvicorn server on loopback, HTTP and WebSocket clients."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import soundfile as sf
import uvicorn
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from voiceauth.client import VoiceAuth
from voiceauth.serve import KeyRing, Limits, create_app
from voiceauth.serve.server import DrainingServer


class Server:
    """A real uvicorn server (with the draining shutdown) in a thread on a free loopback port."""

    def __init__(self, va: VoiceAuth, limits: Limits | None = None, warm_up: bool = False) -> None:
        self.ring = KeyRing()
        self.keys = {name: self.ring.create(name, scopes) for name, scopes in {
            "ivr": ["stream"], "teller": ["verify"], "agent": ["agent"], "prom": ["metrics"], "ops": ["admin"],
        }.items()}
        self.limits = limits or Limits()
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # Asterisk AudioSocket calls
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(("127.0.0.1", 0))
        self.audiosocket_port = self.tcp.getsockname()[1]
        self.app = create_app(va, self.ring, self.limits, warm_up=warm_up, audiosocket=self.tcp)
        self.service = self.app.state.service
        config = uvicorn.Config(self.app, log_level="warning", ws_max_size=self.limits.max_message_bytes,
                                timeout_graceful_shutdown=5)
        self.server = DrainingServer(config, self.service)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """As on SIGTERM: drain (ends the agent view's event streams), then stop."""
        self.server.handle_exit(signal.SIGTERM, None)
        self.thread.join(self.limits.drain_timeout_s + self.limits.final_wait_s + 10)
        if self.thread.is_alive():
            self.server.should_exit = True
            self.thread.join(30)


@contextmanager
def running(va: VoiceAuth, limits: Limits | None = None) -> Iterator[Server]:
    server = Server(va, limits).start()
    try:
        yield server
    finally:
        server.stop()


# -- HTTP -----------------------------------------------------------------------------------------------
def multipart(fields: dict[str, str], files: Iterable[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, filename, data in files:
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                  f"Content-Type: application/octet-stream\r\n\r\n".encode())
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def request(method: str, url: str, key: str | None = None, fields: dict[str, str] | None = None,
            files: Iterable[tuple[str, str, bytes]] = (), headers: dict[str, str] | None = None,
            body: bytes | None = None) -> tuple[int, Any]:
    """(status, JSON body or text) of one request; never raises for an HTTP error status."""
    hdrs = dict(headers or {})
    if key is not None:
        hdrs["X-API-Key"] = key
    if fields is not None or files:
        body, hdrs["Content-Type"] = multipart(fields or {}, files)
    req = urllib.request.Request(url, data=body, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            status, raw, ctype = resp.status, resp.read(), resp.headers.get("content-type", "")
    except urllib.error.HTTPError as err:
        status, raw, ctype = err.code, err.read(), err.headers.get("content-type", "")
    return status, json.loads(raw) if "json" in ctype else raw.decode()


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    out = io.BytesIO()
    sf.write(out, samples, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


# -- WebSocket clients ------------------------------------------------------------------------------------
async def read_all(ws: ClientConnection, timeout: float = 60, arrivals: list[float] | None = None
                   ) -> tuple[list[dict[str, Any]], int | None, str]:
    """Every message until the server closes: (messages, close code, close reason); with ``arrivals``,
    the ``time.monotonic()`` each message arrived is appended to it."""
    messages: list[dict[str, Any]] = []

    async def collect() -> None:
        async for raw in ws:
            messages.append(json.loads(raw))
            if arrivals is not None:
                arrivals.append(time.monotonic())

    with contextlib.suppress(ConnectionClosed):
        await asyncio.wait_for(collect(), timeout)
    return messages, ws.close_code, ws.close_reason or ""


def twilio_start(customer: str, sid: str = "MZ1", api_key: str | None = None, rate: int = 8000,
                 encoding: str = "audio/x-mulaw") -> str:
    params = {"customerId": customer}
    if api_key is not None:
        params["apiKey"] = api_key
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": sid, "start": {
        "streamSid": sid, "accountSid": "AC1", "callSid": "CA1", "tracks": ["inbound"], "customParameters": params,
        "mediaFormat": {"encoding": encoding, "sampleRate": rate, "channels": 1}}})


def twilio_media(frame: bytes, n: int, sid: str = "MZ1") -> str:
    return json.dumps({"event": "media", "sequenceNumber": str(n + 2), "streamSid": sid, "media": {
        "track": "inbound", "chunk": str(n + 1), "timestamp": str(20 * n),
        "payload": base64.b64encode(frame).decode()}})


async def twilio_call(url: str, key: str, customer: str, frames: list[bytes], pace: float = 0.02,
                      header_key: bool = True, arrivals: list[float] | None = None,
                      ) -> tuple[list[dict[str, Any]], int | None, str]:
    """Stream ``frames`` the way Twilio does, ``pace`` seconds per frame (0.02: real time)."""
    headers = {"X-API-Key": key} if header_key else {}
    async with connect(f"{url}/v1/streams/twilio", additional_headers=headers, max_size=2**20) as ws:
        reader = asyncio.create_task(read_all(ws, timeout=len(frames) * pace + 90, arrivals=arrivals))
        with contextlib.suppress(ConnectionClosed):  # the server may end the call first (not enrolled)
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await ws.send(twilio_start(customer, api_key=None if header_key else key))
            started = time.monotonic()
            for n, frame in enumerate(frames):
                await ws.send(twilio_media(frame, n))
                delay = started + (n + 1) * pace - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await ws.send(json.dumps({"event": "stop", "sequenceNumber": str(len(frames) + 2), "streamSid": "MZ1",
                                      "stop": {"accountSid": "AC1", "callSid": "CA1"}}))
        return await reader


def audiohook_message(kind: str, seq: int, parameters: dict[str, Any] | None = None) -> str:
    return json.dumps({"version": "2", "id": "e160e428-53e2-487c-977d-96989bf5c99d", "type": kind, "seq": seq,
                       "serverseq": 0, "position": "PT0S", "parameters": parameters or {}})


def audiohook_open(customer: str | None, fmt: str = "PCMU", rate: int = 8000,
                   channels: tuple[str, ...] = ("external",)) -> dict[str, Any]:
    params: dict[str, Any] = {"organizationId": "d7934305-0972-4844-938e-9060eef73d05",
                              "conversationId": "090eaa2f-72fa-480a-83e0-8667ff89c0ec",
                              "participant": {"id": "883efee8", "ani": "+15551234567", "dnis": "+15557654321"},
                              "media": [{"type": "audio", "format": fmt, "channels": list(channels), "rate": rate}],
                              "language": "en-US"}
    if customer is not None:
        params["inputVariables"] = {"customerId": customer}
    return params


async def audiohook_call(url: str, key: str, customer: str, frames: list[bytes], pace: float = 0.02,
                         fmt: str = "PCMU", channels: tuple[str, ...] = ("external",), rate: int = 8000,
                         ) -> tuple[list[dict[str, Any]], int | None, str]:
    """An AudioHook session: open, ping, binary audio (``pace`` s per frame), close."""
    headers = {"X-API-Key": key, "Audiohook-Session-Id": "e160e428-53e2-487c-977d-96989bf5c99d",
               "Audiohook-Organization-Id": "d7934305-0972-4844-938e-9060eef73d05"}
    async with connect(f"{url}/v1/streams/audiohook", additional_headers=headers, max_size=2**20) as ws:
        reader = asyncio.create_task(read_all(ws, timeout=len(frames) * pace + 90))
        with contextlib.suppress(ConnectionClosed):
            await ws.send(audiohook_message("open", 1, audiohook_open(customer, fmt, rate, channels)))
            await ws.send(audiohook_message("ping", 2))
            started = time.monotonic()
            for n, frame in enumerate(frames):
                await ws.send(frame)
                delay = started + (n + 1) * pace - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await ws.send(audiohook_message("close", 3, {"reason": "end"}))
        return await reader


def audiosocket_message(kind: int, payload: bytes = b"") -> bytes:
    """One AudioSocket message: type, big-endian payload length, payload."""
    return bytes([kind]) + len(payload).to_bytes(2, "big") + payload


def announce_audiosocket(server: Server, call_uuid: str, customer: str, key: str | None = None) -> tuple[int, Any]:
    return request("POST", f"{server.http}/v1/audiosocket/calls", key or server.keys["ivr"],
                   body=json.dumps({"uuid": call_uuid, "customer_id": customer}).encode(),
                   headers={"Content-Type": "application/json"})


async def audiosocket_call(port: int, call_uuid: str, pcm_frames: list[bytes], pace: float = 0.02,
                           before: list[bytes] | None = None, hang_up: bool = True) -> bytes:
    """Stream a call as Asterisk's AudioSocket() does: the UUID, 16-bit 8 kHz frames (``pace`` s each),
    then a hang-up (or, ``hang_up=False``, just closes); ``before``: raw messages sent first. Returns what
    the server sent back when it closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        with contextlib.suppress(ConnectionError):
            for raw in before or []:
                writer.write(raw)
            writer.write(audiosocket_message(0x01, uuid.UUID(call_uuid).bytes))
            started = time.monotonic()
            for n, frame in enumerate(pcm_frames):
                writer.write(audiosocket_message(0x10, frame))
                await writer.drain()
                delay = started + (n + 1) * pace - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            if hang_up:
                writer.write(audiosocket_message(0x00))
                await writer.drain()
            else:  # Asterisk may also just close the socket
                writer.close()
                await writer.wait_closed()
                return b""
        try:
            return await asyncio.wait_for(reader.read(), 60)  # b"" once the server has closed
        except ConnectionError:  # closed while we were still writing: nothing was sent back
            return b""
    finally:
        writer.close()


def audiosocket_verdict(server: Server, call_uuid: str, timeout: float = 30,
                        until: tuple[str, ...] = ("ended",)) -> dict[str, Any]:
    """The announced call's state once it is in ``until`` (by default: ended, the platform's read
    after AudioSocket() returns), or after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = request("GET", f"{server.http}/v1/audiosocket/calls/{call_uuid}", server.keys["ivr"])
        assert status == 200, body
        if body["state"] in until or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def statuses(messages: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    """(status, final) of every status message, either protocol."""
    out = []
    for m in messages:
        if m.get("event") == "voiceauth.status":
            out.append((m["call"]["status"], m["final"]))
        elif m.get("type") == "event":
            for entity in m["parameters"]["entities"]:
                out.append((entity["data"]["status"], entity["data"]["final"]))
    return out
