"""Asterisk AudioSocket calls on a real server over loopback TCP, with the stand-in model (fast).

The client writes the protocol's bytes itself (type, big-endian length, payload), as Asterisk's
AudioSocket() does; the call is announced and its verdict read over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_serve_support import (
    Server,
    announce_audiosocket,
    audiosocket_call,
    audiosocket_message,
    audiosocket_verdict,
    request,
    running,
)
from test_session import LOUD, StandIn, make_va, synth

from voiceauth.serve import Limits
from voiceauth.store.base import Consent

FAST = 0.002  # seconds per 20 ms frame


def pcm(x: np.ndarray) -> list[bytes]:
    """20 ms frames of 16-bit little-endian PCM at 8 kHz."""
    data = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
    return [data[i:i + 320] for i in range(0, len(data) - 319, 320)]


def genuine(seconds: float = 8) -> list[bytes]:
    return pcm(synth(seconds))


def impostor(seconds: float = 8) -> list[bytes]:
    return pcm(synth(seconds, amp=LOUD, seed=3))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """A fresh server and store per test (the metrics' counts are per server)."""
    client = make_va(tmp_path, Consent.now(channel="test", notice_version="v1", captured_by="tests"), StandIn())
    try:
        with running(client) as srv:
            yield srv
    finally:
        client.close()


def test_announced_calls_end_authenticated_for_the_customer_not_an_impostor(server: Server) -> None:
    good, bad = str(uuid.uuid4()), str(uuid.uuid4())
    for call_uuid in (good, bad):
        status, body = announce_audiosocket(server, call_uuid, "cust-1")
        assert status == 201 and body["uuid"] == call_uuid and body["expires_in_s"] == 60, body
        assert audiosocket_verdict(server, call_uuid, timeout=0)["state"] == "announced"
    # DTMF digits in the genuine call are ignored (never heard, never logged)
    dtmf = [audiosocket_message(0x03, b"4"), audiosocket_message(0x03, b"1")]

    async def both() -> list[bytes]:
        return await asyncio.gather(audiosocket_call(server.audiosocket_port, good, genuine(), FAST, before=dtmf),
                                    audiosocket_call(server.audiosocket_port, bad, impostor(), FAST))

    assert asyncio.run(both()) == [b"", b""]  # nothing is sent back on the socket
    verdict, other = audiosocket_verdict(server, good), audiosocket_verdict(server, bad)
    assert verdict["state"] == "ended" and verdict["call"]["status"] == "authenticated", verdict
    assert other["state"] == "ended" and other["call"]["status"] == "not_authenticated", other
    assert verdict["call"]["protocol"] == "audiosocket" and verdict["call"]["stream_id"] == good
    bare = request("GET", f"{server.http}/v1/audiosocket/calls/{good.upper().replace('-', '')}", server.keys["ivr"])
    assert bare[0] == 200 and bare[1]["uuid"] == good  # any string form of the UUID
    assert request("GET", f"{server.http}/v1/audiosocket/calls/not-a-uuid", server.keys["ivr"])[0] == 404
    listed = request("GET", f"{server.http}/v1/calls", server.keys["agent"])[1]["calls"]
    assert {c["stream_id"] for c in listed if c["protocol"] == "audiosocket"} == {good, bad}
    opened = [e for e in server.service.va.store.audit_events()
              if e.action == "stream_open" and e.details.get("stream_id") == good]
    assert len(opened) == 1 and opened[0].actor == "key:ivr" and opened[0].outcome == "audiosocket"
    metrics = request("GET", f"{server.http}/metrics", server.keys["prom"])[1]
    assert 'voiceauth_streams_ended_total{outcome="ended",protocol="audiosocket"} 2.0' in metrics


def test_closing_the_socket_without_a_hang_up_ends_the_call(server: Server) -> None:
    call_uuid = str(uuid.uuid4())
    assert announce_audiosocket(server, call_uuid, "cust-1")[0] == 201
    asyncio.run(audiosocket_call(server.audiosocket_port, call_uuid, genuine(), FAST, hang_up=False))
    verdict = audiosocket_verdict(server, call_uuid)
    assert verdict["state"] == "ended" and verdict["call"]["status"] == "authenticated", verdict
    metrics = request("GET", f"{server.http}/metrics", server.keys["prom"])[1]  # how Asterisk ends it: not vanished
    assert 'voiceauth_streams_ended_total{outcome="ended",protocol="audiosocket"} 1.0' in metrics
    assert 'outcome="vanished",protocol="audiosocket"' not in metrics


def _closed_at_once(server: Server, call_uuid: str, frames: list[bytes], before: list[bytes] | None = None) -> None:
    started = time.monotonic()
    assert asyncio.run(audiosocket_call(server.audiosocket_port, call_uuid, frames, 0.0, before=before)) == b""
    assert time.monotonic() - started < 10


def test_protocol_errors_close_the_connection_and_the_server_keeps_serving(server: Server) -> None:
    frame = genuine(1)[0]
    unannounced = str(uuid.uuid4())
    _closed_at_once(server, unannounced, genuine(2))
    status, body = request("GET", f"{server.http}/v1/audiosocket/calls/{unannounced}", server.keys["ivr"])
    assert status == 404 and "announced" in body["message"]
    after_uuid = {  # message sent right after the call's UUID
        "16 kHz audio": audiosocket_message(0x12, frame + frame),
        "odd byte count": audiosocket_message(0x10, b"\0"),
        "oversized message": audiosocket_message(0x10, bytes(16002)),
        "unknown type": audiosocket_message(0x42),
        "a second UUID": audiosocket_message(0x01, uuid.uuid4().bytes),
    }
    for name, bad in [("audio before the UUID", None), *after_uuid.items()]:
        call_uuid = str(uuid.uuid4())
        assert announce_audiosocket(server, call_uuid, "cust-1")[0] == 201, name
        if bad is None:
            _closed_at_once(server, call_uuid, [frame], before=[audiosocket_message(0x10, frame)])
        else:
            _closed_raw(server, audiosocket_message(0x01, uuid.UUID(call_uuid).bytes) + bad + b"".join(genuine(2)))
        state = audiosocket_verdict(server, call_uuid, timeout=10, until=("announced", "ended"))
        assert state["state"] == ("announced" if bad is None else "ended"), (name, state)
        assert state["call"] is None or state["call"]["status"] != "authenticated", (name, state)
    # a used UUID cannot be streamed again
    used = str(uuid.uuid4())
    assert announce_audiosocket(server, used, "cust-1")[0] == 201
    asyncio.run(audiosocket_call(server.audiosocket_port, used, genuine(), FAST))
    heard = audiosocket_verdict(server, used)["call"]["speech_s"]
    _closed_at_once(server, used, genuine(2))
    assert audiosocket_verdict(server, used)["call"]["speech_s"] == heard
    # and a normal call still works
    fresh = str(uuid.uuid4())
    assert announce_audiosocket(server, fresh, "cust-1")[0] == 201
    asyncio.run(audiosocket_call(server.audiosocket_port, fresh, genuine(), FAST))
    assert audiosocket_verdict(server, fresh)["call"]["status"] == "authenticated"


def _closed_raw(server: Server, raw: bytes) -> None:
    async def send() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.audiosocket_port)
        with contextlib.suppress(ConnectionError):  # the server may close before it has read it all
            writer.write(raw)
            await writer.drain()
        try:
            return await asyncio.wait_for(reader.read(), 10)
        except ConnectionError:
            return b""
        finally:
            writer.close()

    assert asyncio.run(send()) == b""


def test_announcing_checks_key_scope_uuid_and_reuse(server: Server) -> None:
    call_uuid = str(uuid.uuid4())
    assert announce_audiosocket(server, call_uuid, "cust-1", key=server.keys["agent"])[0] == 403
    assert announce_audiosocket(server, call_uuid, "cust-1", key="ivr.nope")[0] == 401
    status, body = announce_audiosocket(server, "not-a-uuid", "cust-1")
    assert status == 400 and "UUID" in body["message"]
    status, body = announce_audiosocket(server, call_uuid, "   ")
    assert status == 400 and "customer id" in body["message"]
    assert announce_audiosocket(server, call_uuid, "cust-1")[0] == 201
    status, body = announce_audiosocket(server, call_uuid.upper(), "cust-1")
    assert status == 409 and "new UUID" in body["message"]
    status, body = request("POST", f"{server.http}/v1/audiosocket/calls", server.keys["ivr"], body=b"{nope",
                           headers={"Content-Type": "application/json"})
    assert status == 400 and "JSON" in body["message"]
    assert request("GET", f"{server.http}/v1/audiosocket/calls/{call_uuid}", server.keys["agent"])[0] == 403
    spec = request("GET", f"{server.http}/openapi.json")[1]
    assert {"/v1/audiosocket/calls", "/v1/audiosocket/calls/{uuid}"} <= set(spec["paths"])
    assert "`stream` scope" in spec["paths"]["/v1/audiosocket/calls"]["post"]["description"]


def test_an_announcement_expires(tmp_path: Path) -> None:
    va = make_va(tmp_path, Consent.now(channel="test", notice_version="v1", captured_by="tests"), StandIn())
    with running(va, Limits(audiosocket_ticket_s=0.2)) as server:
        call_uuid = str(uuid.uuid4())
        assert announce_audiosocket(server, call_uuid, "cust-1")[0] == 201
        time.sleep(0.4)
        _closed_at_once(server, call_uuid, genuine(2))
        assert request("GET", f"{server.http}/v1/audiosocket/calls/{call_uuid}", server.keys["ivr"])[0] == 404
    va.close()


def test_serve_takes_audiosocket_calls_only_when_given_a_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from voiceauth.cli import main
    from voiceauth.services import engines

    monkeypatch.setenv("VOICEAUTH_KEY_FILE", str(tmp_path / "keyring.json"))
    monkeypatch.setattr(engines, "check_pulled", lambda model: None)
    served: list[object] = []
    monkeypatch.setattr("voiceauth.serve.server.run", lambda app, **kw: served.append(app.state.audiosocket.listen))
    keys = tmp_path / "keys.json"
    assert main(["serve-keys", "create", "--keys", str(keys), "--id", "ivr", "--scope", "stream"]) == 0
    base = ["serve", "--store", str(tmp_path / "vp.db"), "--keys", str(keys), "--port", "0"]
    assert main(base) == 0
    assert main([*base, "--audiosocket-port", "9019"]) == 0
    assert served == [None, ("127.0.0.1", 9019)]
