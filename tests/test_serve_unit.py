"""`voiceauth serve` on a real uvicorn server over loopback, with the stand-in model (fast).

Real HTTP and WebSocket clients (urllib, the `websockets` library) talk to a real server; only
the speaker model is the deterministic stand-in of test_session. The real model's tests are in
test_serve_live.py."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from test_serve_support import (
    Server,
    audiohook_call,
    audiohook_message,
    audiohook_open,
    read_all,
    request,
    running,
    statuses,
    twilio_call,
    twilio_media,
    twilio_start,
    wav_bytes,
)
from test_session import LOUD, StandIn, frames, make_va, synth
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from voiceauth.cli import EXIT_ERROR, main
from voiceauth.client import VoiceAuth
from voiceauth.errors import StoreError
from voiceauth.serve import KeyFile, KeyRing, Limits, Scope
from voiceauth.serve.errors import AuthError, ScopeError
from voiceauth.store.base import Consent

FAST = 0.002  # seconds per 20 ms frame: 10x real time (the session queues up to 10 s of audio)


@pytest.fixture
def va(tmp_path: Path) -> Iterator[VoiceAuth]:
    client = make_va(tmp_path, Consent.now(channel="test", notice_version="v1", captured_by="tests"), StandIn())
    yield client
    client.close()


@pytest.fixture
def server(va: VoiceAuth) -> Iterator[Server]:
    with running(va) as srv:
        yield srv


def genuine(seconds: float = 8) -> list[bytes]:
    return list(frames(synth(seconds)))


def impostor(seconds: float = 8) -> list[bytes]:
    return list(frames(synth(seconds, amp=LOUD, seed=3)))


# -- REST ------------------------------------------------------------------------------------------------
def test_rest_enrol_verify_opt_out_delete_with_keys_scopes_and_audit(server: Server, va: VoiceAuth) -> None:
    url, k = server.http, server.keys
    speech = [("audio", "a.wav", wav_bytes(synth(12, 16000, seed=5), 16000))]
    consent = {"consent_channel": "ivr", "consent_notice_version": "v3"}
    assert request("POST", f"{url}/v1/customers/cust-2/enrol", None, consent, speech)[0] == 401
    assert request("POST", f"{url}/v1/customers/cust-2/enrol", k["ops"] + "x", consent, speech)[0] == 401
    status, body = request("POST", f"{url}/v1/customers/cust-2/enrol", k["teller"], consent, speech)
    assert status == 403 and "admin" in body["message"]
    status, body = request("POST", f"{url}/v1/customers/cust-2/enrol", k["ops"], {}, speech)
    assert status == 400 and "consent" in body["message"]
    status, body = request("POST", f"{url}/v1/customers/cust-2/enrol", k["ops"], consent, speech)
    assert status == 201 and body["status"] == "complete", body

    status, body = request("POST", f"{url}/v1/customers/cust-2/verify", k["teller"], files=speech)
    assert status == 200 and body["decision"] == "accept" and "embedding" not in json.dumps(body)
    status, body = request("POST", f"{url}/v1/customers/nobody/verify", k["teller"], files=speech)
    assert status == 404 and body["error"] == "NotEnrolledError" and "enrol them first" in body["message"]
    status, body = request("POST", f"{url}/v1/customers/cust-2/verify", k["teller"],
                           files=[("audio", "x.wav", b"RIFF not really a wav")])
    assert status == 422 and "Traceback" not in json.dumps(body) and body["request_id"]
    status, body = request("POST", f"{url}/v1/identify", k["teller"], {"top_k": "2"}, speech)
    assert status == 200 and body["candidates"][0]["customer_id"] in ("cust-1", "cust-2")

    status, body = request("POST", f"{url}/v1/customers/cust-2/opt-out", k["ops"])
    assert status == 200 and body["voiceprint_deleted"] is True
    status, body = request("POST", f"{url}/v1/customers/cust-2/verify", k["teller"], files=speech)
    assert status == 200 and body["decision"] == "opted_out"
    assert request("DELETE", f"{url}/v1/customers/cust-2", k["ops"])[0] == 404
    assert request("DELETE", f"{url}/v1/customers/cust-1", k["ops"]) == (200, {"customer_id": "cust-1",
                                                                              "deleted": True})
    status, body = request("GET", f"{url}/v1/nothing-here")
    assert status == 404 and body["error"] == "HTTPError"
    # the key id is the actor of everything the key did
    actors = {(e.action, e.actor) for e in va.audit_events()}
    assert {("enroll", "key:ops"), ("verify", "key:teller"), ("opt_out", "key:ops"),
            ("delete", "key:ops"), ("identify", "key:teller")} <= actors


def test_outcome_reports_and_openapi(server: Server) -> None:
    url, k = server.http, server.keys
    speech = [("audio", "a.wav", wav_bytes(synth(6, 16000), 16000))]
    status, body = request("POST", f"{url}/v1/customers/cust-1/verify", k["teller"], files=speech)
    assert status == 200 and body["trial_id"], body
    outcome = f"{url}/v1/outcomes/{body['trial_id']}"
    as_json = {"Content-Type": "application/json"}
    assert request("POST", outcome, k["teller"], body=b'{"genuine": true, "source": "kba"}', headers=as_json)[0] == 403
    status, err = request("POST", outcome, k["ops"], body=b'{"genuine": "yes"}', headers=as_json)
    assert status == 400 and "genuine" in err["message"]
    status, err = request("POST", outcome, k["ops"], body=b"not json", headers=as_json)
    assert status == 400 and "JSON" in err["message"]
    status, trial = request("POST", outcome, k["ops"], body=b'{"genuine": true, "source": "kba"}', headers=as_json)
    assert status == 200 and trial["trial_id"] == body["trial_id"] and "cust-1" not in json.dumps(trial), trial
    status, err = request("POST", outcome, k["ops"], body=b'{"genuine": false, "source": "kba"}', headers=as_json)
    assert 400 <= status < 500 and "Traceback" not in json.dumps(err)  # a conflicting outcome is refused
    status, spec = request("GET", f"{url}/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.")
    assert {"/v1/customers/{customer_id}/verify", "/v1/outcomes/{trial_id}", "/v1/identify"} <= set(spec["paths"])


def test_rest_upload_limits(va: VoiceAuth) -> None:
    with running(va, Limits(max_upload_bytes=50_000)) as srv:
        big = [("audio", "a.wav", wav_bytes(synth(4, 16000), 16000))]  # 128 kB
        status, body = request("POST", f"{srv.http}/v1/customers/cust-1/verify", srv.keys["teller"], files=big)
        assert status == 413 and "limit" in body["message"]
        status, body = request("POST", f"{srv.http}/v1/customers/cust-1/verify", srv.keys["teller"],
                               body=b"{}", headers={"Content-Type": "application/json"})
        assert status == 415


def test_health_and_metrics(server: Server) -> None:
    assert request("GET", f"{server.http}/healthz") == (200, {"status": "ok"})
    assert request("GET", f"{server.http}/readyz")[1]["status"] == "ready"
    assert request("GET", f"{server.http}/metrics")[0] == 401
    assert request("GET", f"{server.http}/metrics", server.keys["ivr"])[0] == 403
    asyncio.run(twilio_call(server.ws, server.keys["ivr"], "cust-1", genuine(), pace=FAST))
    status, text = request("GET", f"{server.http}/metrics", server.keys["prom"])
    assert status == 200
    assert 'voiceauth_decisions_total{source="call",status="authenticated"} 1.0' in text
    assert 'voiceauth_streams_ended_total{outcome="ended",protocol="twilio"} 1.0' in text
    assert "voiceauth_decision_latency_seconds_count" in text and "voiceauth_live_calls 0.0" in text
    assert "voiceauth_call_seconds_to_authenticated_count 1.0" in text  # the one genuine call, once
    for stage in ("deciding", "watch"):  # the updates of calls still deciding apart from the settled calls' watch
        assert f'voiceauth_decision_latency_seconds_count{{stage="{stage}"}}' in text


# -- Twilio Media Streams ----------------------------------------------------------------------------------
def test_twilio_stream_authenticates_the_customer_not_an_impostor(server: Server) -> None:
    async def both() -> list[tuple[list[dict], int | None, str]]:
        return await asyncio.gather(
            twilio_call(server.ws, server.keys["ivr"], "cust-1", genuine(), pace=FAST),
            twilio_call(server.ws, server.keys["ivr"], "cust-1", impostor(), pace=FAST, header_key=False))

    (good, code, _), (bad, bad_code, _) = asyncio.run(both())
    assert code == 1000 and statuses(good)[-1] == ("authenticated", True), good
    assert bad_code == 1000 and statuses(bad)[-1] == ("not_authenticated", True), bad
    assert "authenticated" not in [s for s, _ in statuses(bad)]
    assert good[-1]["streamSid"] == "MZ1" and good[-1]["call"]["customer_id"] == "cust-1"


def test_twilio_unknown_customer_ends_not_enrolled(server: Server) -> None:
    messages, code, _ = asyncio.run(twilio_call(server.ws, server.keys["ivr"], "cust-404", genuine(1), pace=FAST))
    assert code == 1000 and statuses(messages) == [("not_enrolled", True)]


async def _twilio_error(url: str, key: str, *messages: str | bytes) -> tuple[list[dict], int | None, str]:
    async with connect(f"{url}/v1/streams/twilio", additional_headers={"X-API-Key": key}, max_size=2**20) as ws:
        with contextlib.suppress(ConnectionClosed):  # the server may close before the last message
            for m in messages:
                await ws.send(m)
        return await read_all(ws, timeout=20)


def test_twilio_protocol_errors_close_cleanly_and_the_server_keeps_serving(server: Server) -> None:
    url, key = server.ws, server.keys["ivr"]
    frame = genuine(1)[0]
    media = twilio_media(frame, 0)
    cases = {
        "bad json": ((key, twilio_start("cust-1"), "{not json"), 1007, "not JSON"),
        "bad base64": ((key, twilio_start("cust-1"), media.replace(base64.b64encode(frame).decode(), "%%%")),
                       1007, "base64"),
        "wrong rate": ((key, twilio_start("cust-1", rate=16000)), 1003, "16000 Hz"),
        "wrong encoding": ((key, twilio_start("cust-1", encoding="audio/x-alaw")), 1003, "not supported"),
        "binary frame": ((key, twilio_start("cust-1"), frame), 1003, "JSON text"),
        "oversized frame": ((key, twilio_start("cust-1"), twilio_media(bytes(16000), 1)), 1009, "exceeds"),
        "over ws_max_size": ((key, twilio_start("cust-1"), "x" * 70_000), 1009, ""),
        "media before start": ((key, media), 1008, "before 'start'"),
        "wrong key": (("ivr.nope", twilio_start("cust-1")), 1008, "invalid API key"),
        "missing scope": ((server.keys["agent"], twilio_start("cust-1")), 1008, "stream"),
        "no customer": ((key, twilio_start("")), 1008, "customerId"),
    }
    for name, ((k, *msgs), code, why) in cases.items():
        messages, got, reason = asyncio.run(_twilio_error(url, k, *msgs))
        assert got == code, (name, got, reason, messages)
        assert why in reason, (name, reason)
        if code != 1009 or why:
            assert messages and messages[-1]["event"] == "voiceauth.error" and messages[-1]["code"] == code, name
    # every error stream's call was settled; a normal call still works
    good, code, _ = asyncio.run(twilio_call(url, key, "cust-1", genuine(), pace=FAST))
    assert code == 1000 and statuses(good)[-1] == ("authenticated", True)
    status, text = request("GET", f"{server.http}/metrics", server.keys["prom"])
    assert 'voiceauth_stream_protocol_errors_total{code="1007",protocol="twilio"} 2.0' in text


def test_a_client_vanishing_mid_call_leaves_the_other_calls_alone(server: Server) -> None:
    async def vanish() -> None:
        ws = await connect(f"{server.ws}/v1/streams/twilio", additional_headers={"X-API-Key": server.keys["ivr"]})
        await ws.send(twilio_start("cust-1", sid="MZgone"))
        for n, frame in enumerate(genuine(4)):
            await ws.send(twilio_media(frame, n, sid="MZgone"))
        ws.transport.abort()  # no close frame: the TCP connection just drops

    async def scenario() -> tuple[list[dict], int | None, str]:
        other = asyncio.create_task(twilio_call(server.ws, server.keys["ivr"], "cust-1", genuine(), pace=FAST))
        await vanish()
        return await other

    messages, code, _ = asyncio.run(scenario())
    assert code == 1000 and statuses(messages)[-1] == ("authenticated", True)
    deadline = time.monotonic() + 20
    while True:
        calls = request("GET", f"{server.http}/v1/calls", server.keys["agent"])[1]["calls"]
        gone = [c for c in calls if c["stream_id"] == "MZgone"]
        if gone and gone[0]["closed"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert gone and gone[0]["closed"] and gone[0]["status"] in ("authenticated", "inconclusive"), gone
    text = request("GET", f"{server.http}/metrics", server.keys["prom"])[1]
    assert 'voiceauth_streams_ended_total{outcome="vanished",protocol="twilio"} 1.0' in text


# -- AudioHook -----------------------------------------------------------------------------------------------
def test_audiohook_session_stereo_takes_the_customer_channel(server: Server) -> None:
    customer = np.frombuffer(b"".join(genuine()), dtype=np.uint8)
    agent = np.frombuffer(b"".join(impostor()), dtype=np.uint8)
    stereo = np.stack([customer, agent], axis=1).reshape(-1).tobytes()  # external first, interleaved
    chunks = [stereo[i:i + 320] for i in range(0, len(stereo), 320)]
    messages, code, _ = asyncio.run(audiohook_call(server.ws, server.keys["ivr"], "cust-1", chunks, pace=FAST,
                                                   channels=("external", "internal")))
    kinds = [m["type"] for m in messages]
    assert code == 1000 and kinds[:2] == ["opened", "pong"] and kinds[-1] == "closed", kinds
    assert messages[0]["parameters"]["media"][0]["channels"] == ["external", "internal"]
    assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))
    assert messages[-1]["clientseq"] == 3
    assert statuses(messages)[-1] == ("authenticated", True)


def test_audiohook_l16_at_16_khz(server: Server) -> None:
    pcm = (synth(8, 16000) * 32767).astype("<i2").tobytes()
    chunks = [pcm[i:i + 640] for i in range(0, len(pcm), 640)]
    messages, code, _ = asyncio.run(audiohook_call(server.ws, server.keys["ivr"], "cust-1", chunks, pace=FAST,
                                                   fmt="L16", rate=16000))
    assert code == 1000 and statuses(messages)[-1] == ("authenticated", True)


async def _audiohook_error(url: str, key: str, *messages: str | bytes) -> tuple[list[dict], int | None, str]:
    headers = {"X-API-Key": key, "Audiohook-Session-Id": "e160e428-53e2-487c-977d-96989bf5c99d"}
    async with connect(f"{url}/v1/streams/audiohook", additional_headers=headers) as ws:
        with contextlib.suppress(ConnectionClosed):  # the server may close before the last message
            for m in messages:
                await ws.send(m)
        return await read_all(ws, timeout=20)


def test_audiohook_protocol_errors(server: Server) -> None:
    url, key = server.ws, server.keys["ivr"]
    opening = audiohook_message("open", 1, audiohook_open("cust-1"))
    cases = {
        "bad json": ((key, "{nope"), 1007, "error"),
        "seq out of order": ((key, audiohook_message("open", 2, audiohook_open("cust-1"))), 1008, "error"),
        "audio before open": ((key, bytes(160)), 1008, "error"),
        "unsupported format": ((key, audiohook_message("open", 1, audiohook_open("cust-1", rate=16000))),
                               1003, "error"),
        "no customer": ((key, audiohook_message("open", 1, audiohook_open(None))), 1008, "error"),
        "wrong key": (("ivr.wrong", opening), 1008, "unauthorized"),
        "oversized frame": ((key, opening, bytes(9000)), 1009, "error"),
    }
    for name, ((k, *msgs), code, reason) in cases.items():
        messages, got, why = asyncio.run(_audiohook_error(url, k, *msgs))
        assert got == code, (name, got, why)
        assert messages[-1]["type"] == "disconnect" and messages[-1]["parameters"]["reason"] == reason, (name, messages)


# -- limits and shutdown -------------------------------------------------------------------------------------
def test_stream_limit_and_idle_timeout(va: VoiceAuth) -> None:
    with running(va, Limits(max_streams=1, idle_timeout_s=1.0)) as srv:
        async def scenario() -> tuple:
            async with connect(f"{srv.ws}/v1/streams/twilio", additional_headers={"X-API-Key": srv.keys["ivr"]}) as a:
                await a.send(twilio_start("cust-1"))
                for n, frame in enumerate(genuine(5)):
                    await a.send(twilio_media(frame, n))
                second = await _twilio_error(srv.ws, srv.keys["ivr"], twilio_start("cust-1"))
                first = await read_all(a, timeout=30)  # idle for 1 s: ended with its final status
            return first, second

        (first, code, reason), (_, second_code, second_reason) = asyncio.run(scenario())
    assert second_code == 1013 and "try again later" in second_reason
    assert code == 1008 and "no message" in reason
    assert statuses(first)[-1] == ("authenticated", True)


def test_graceful_shutdown_finishes_the_calls_in_flight(va: VoiceAuth) -> None:
    srv = Server(va, Limits(drain_timeout_s=30)).start()
    try:
        async def scenario() -> tuple:
            headers = {"X-API-Key": srv.keys["ivr"]}
            async with connect(f"{srv.ws}/v1/streams/twilio", additional_headers=headers) as ws:
                await ws.send(twilio_start("cust-1"))
                audio = genuine()
                for n, frame in enumerate(audio[:100]):
                    await ws.send(twilio_media(frame, n))
                srv.server.handle_exit(signal.SIGTERM, None)  # as on SIGTERM
                await asyncio.sleep(0.5)
                ready = await asyncio.to_thread(request, "GET", f"{srv.http}/readyz")
                refused = await _twilio_error(srv.ws, srv.keys["ivr"], twilio_start("cust-1"))
                for n, frame in enumerate(audio[100:], start=100):  # the call in flight goes on
                    await ws.send(twilio_media(frame, n))
                    if n % 25 == 0:
                        await asyncio.sleep(0.01)
                await ws.send(json.dumps({"event": "stop", "streamSid": "MZ1"}))
                return ready, refused, await read_all(ws)

        ready, refused, (messages, code, _) = asyncio.run(scenario())
        assert ready == (503, {"status": "draining"})
        assert refused[1] == 1013
        assert code == 1000 and statuses(messages)[-1] == ("authenticated", True)
        srv.thread.join(20)
        assert not srv.thread.is_alive()  # drained: the server stopped by itself
    finally:
        srv.stop()


# -- keys --------------------------------------------------------------------------------------------------
def test_keys_are_stored_hashed_and_checked_with_scopes(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    runner = CliRunner()
    out = runner.invoke(main_cli(), ["serve-keys", "create", "--keys", str(path), "--id", "ivr-1",
                                     "--scope", "stream", "--json"])
    assert out.exit_code == 0, out.output
    token = json.loads(out.output)["key"]
    secret = token.split(".", 1)[1]
    assert secret not in path.read_text() and stat.S_IMODE(path.stat().st_mode) == 0o600
    ring = KeyFile(path)
    key = ring.authenticate(token)
    assert key.key_id == "ivr-1" and key.allows(Scope.STREAM) and not key.allows(Scope.VERIFY)
    with pytest.raises(ScopeError):
        key.require(Scope.ADMIN)
    for bad in (None, "", "ivr-1", "ivr-1." + "x" * len(secret), "other." + secret):
        with pytest.raises(AuthError):
            ring.authenticate(bad)
    listing = runner.invoke(main_cli(), ["serve-keys", "list", "--keys", str(path)])
    assert listing.output.strip() == "ivr-1\tstream"
    assert runner.invoke(main_cli(), ["serve-keys", "revoke", "--keys", str(path), "--id", "ivr-1"]).exit_code == 0
    ring._checked -= 2  # a running server re-reads the file within a second
    with pytest.raises(AuthError):
        ring.authenticate(token)
    assert main(["serve-keys", "create", "--keys", str(path), "--id", "x", "--scope", "root"]) == 2
    assert len(KeyRing.load(path)) == 0


def main_cli():  # noqa: ANN201
    from voiceauth.cli import cli

    return cli


# -- which model a server runs -------------------------------------------------------------------------------
@pytest.mark.parametrize(("env_model", "named"), [(None, "ecapa-onnx"), ("campplus", "campplus")])
def test_serve_runs_ecapa_on_onnx_by_default_and_stops_at_once_without_its_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env_model: str | None,
    named: str,
) -> None:
    """Torch ECAPA takes one model call at a time; the same network on ONNX Runtime one per core (25 steady
    calls: 158 s of audio dropped on torch, none on ONNX). A server whose graph was never exported stops
    with the command that exports it, before it opens the store (it used to start, with /readyz 503)."""
    monkeypatch.setenv("VOICEAUTH_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("VOICEAUTH_MODEL", raising=False)
    if env_model:
        monkeypatch.setenv("VOICEAUTH_MODEL", env_model)
    def started(*args: object, **kwargs: object) -> None:
        raise AssertionError("the server started without its model's graph")

    monkeypatch.setattr("voiceauth.serve.server.run", started)  # fails here rather than serving forever
    keys, store = tmp_path / "keys.json", tmp_path / "vp.db"
    assert main(["serve-keys", "create", "--keys", str(keys), "--id", "ivr", "--scope", "stream"]) == 0
    capsys.readouterr()
    assert main(["serve", "--store", str(store), "--keys", str(keys), "--port", "0"]) == EXIT_ERROR
    assert f"voiceauth models pull --model {named}" in capsys.readouterr().err
    assert not store.exists()


def test_models_pull_fetches_the_library_and_the_service_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from voiceauth.cli.options import SERVICE_MODEL
    from voiceauth.services import engines

    assert SERVICE_MODEL == engines.SERVICE_MODEL  # the CLI keeps its own copy (no import at start-up)
    pulled: list[str] = []
    monkeypatch.setattr(engines, "pull", lambda name, model_dir=None: pulled.append(name) or {name: "here"})
    assert main(["models", "pull"]) == 0 and pulled == ["ecapa", "ecapa-onnx"]
    assert main(["models", "pull", "--model-dir", str(tmp_path)]) == 0  # one model's files: both use them
    assert pulled[2:] == ["ecapa", "ecapa-onnx"]
    assert main(["models", "pull", "--model", "ecapa", "--model", "campplus", "--model-dir", str(tmp_path)]) == 2
    assert "one --model" in capsys.readouterr().err


def test_a_streamed_call_can_be_paused_over_rest_and_nothing_sent_meanwhile_is_heard(server: Server,
                                                                                     va: VoiceAuth) -> None:
    """PCI for protocols without a pause message (Twilio, AudioSocket): the platform pauses the call by
    its stream id while the caller keys in a card number; audio streamed meanwhile is never heard."""
    url, k = server.http, server.keys
    part = genuine(3)  # 3 s of speech each
    loud = impostor(3)  # another voice while paused: never heard, so no speaker change either

    async def call() -> tuple[list[dict], int | None, str]:
        async with connect(f"{server.ws}/v1/streams/twilio", additional_headers={"X-API-Key": k["ivr"]},
                           max_size=2**20) as ws:
            reader = asyncio.create_task(read_all(ws, timeout=60))
            await ws.send(twilio_start("cust-1", sid="MZpci"))
            n = 0
            for phase, frames_ in (("listen", part), ("pause", loud), ("resume", part)):
                if phase != "listen":
                    status, body = await asyncio.to_thread(request, "POST", f"{url}/v1/calls/MZpci/{phase}", k["ivr"])
                    assert status == 200 and body["paused"] is (phase == "pause"), body
                    shown = await asyncio.to_thread(request, "GET", f"{url}/v1/calls", k["agent"])
                    flags = next(c["flags"] for c in shown[1]["calls"] if c["stream_id"] == "MZpci")
                    assert ("paused" in flags) is (phase == "pause"), flags  # the agent view shows it
                for frame in frames_:
                    await ws.send(twilio_media(frame, n, sid="MZpci"))
                    n += 1
                    await asyncio.sleep(FAST)
                await asyncio.sleep(0.3)
            await ws.send(json.dumps({"event": "stop", "streamSid": "MZpci"}))
            return await reader

    messages, code, _ = asyncio.run(call())
    final = messages[-1]["call"]
    assert code == 1000 and final["status"] == "authenticated" and "speaker_change" not in final["flags"], final
    assert 5.0 <= final["speech_s"] <= 6.2, final  # the two 3 s parts heard, the paused 3 s not
    actions = [(e.action, e.actor, e.details.get("call_id")) for e in va.store.audit_events()
               if e.action in ("call_pause", "call_resume")]
    assert actions == [("call_pause", "key:ivr", final["call_id"]), ("call_resume", "key:ivr", final["call_id"])]
    assert request("POST", f"{url}/v1/calls/MZpci/pause", k["ivr"])[0] == 404  # ended: nothing to pause
    assert request("POST", f"{url}/v1/calls/{final['call_id']}/pause", k["agent"])[0] == 403


def test_an_audiohook_pause_is_heard_as_nothing_and_shown(server: Server) -> None:
    """AudioHook's own ``paused`` / ``resumed`` messages: the same as the REST pause."""
    headers = {"X-API-Key": server.keys["ivr"], "Audiohook-Session-Id": "e160e428-53e2-487c-977d-96989bf5c99d"}

    async def call() -> tuple[list[dict], int | None, str]:
        async with connect(f"{server.ws}/v1/streams/audiohook", additional_headers=headers, max_size=2**20) as ws:
            reader = asyncio.create_task(read_all(ws, timeout=60))
            await ws.send(audiohook_message("open", 1, audiohook_open("cust-1")))
            seq = 2
            for phase, frames_ in ((None, genuine(3)), ("paused", impostor(3)), ("resumed", genuine(3))):
                if phase is not None:
                    await ws.send(audiohook_message(phase, seq))
                    seq += 1
                    await asyncio.sleep(0.2)
                    shown = await asyncio.to_thread(request, "GET", f"{server.http}/v1/calls", server.keys["agent"])
                    assert ("paused" in shown[1]["calls"][-1]["flags"]) is (phase == "paused"), shown
                for frame in frames_:
                    await ws.send(frame)
                    await asyncio.sleep(FAST)
                await asyncio.sleep(0.3)
            await ws.send(audiohook_message("close", seq, {"reason": "end"}))
            return await reader

    messages, code, _ = asyncio.run(call())
    final = [m for m in messages if m.get("type") == "event"][-1]["parameters"]["entities"][-1]["data"]
    assert code == 1000 and final["status"] == "authenticated" and "speaker_change" not in final["flags"], final
    assert 5.0 <= final["speech_s"] <= 6.2, final


def test_pausing_fails_closed_when_the_audit_trail_cannot_be_written(server: Server, va: VoiceAuth,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A pause takes effect even if its audit write fails; a resume that cannot be audited does not
    happen (the call stays unheard)."""
    url, k = server.http, server.keys
    real_audit = va.store.audit

    def audit(record: Any) -> None:
        if record.action in ("call_pause", "call_resume"):
            raise StoreError("disk full")
        real_audit(record)

    async def call() -> list[tuple[int, bool]]:
        async with connect(f"{server.ws}/v1/streams/twilio", additional_headers={"X-API-Key": k["ivr"]},
                           max_size=2**20) as ws:
            await ws.send(twilio_start("cust-1", sid="MZaudit"))
            await asyncio.sleep(0.3)
            monkeypatch.setattr(va.store, "audit", audit)
            seen = []
            for phase in ("pause", "resume"):
                status, _ = await asyncio.to_thread(request, "POST", f"{url}/v1/calls/MZaudit/{phase}", k["ivr"])
                shown = await asyncio.to_thread(request, "GET", f"{url}/v1/calls", k["agent"])
                seen.append((status, "paused" in next(c["flags"] for c in shown[1]["calls"]
                                                      if c["stream_id"] == "MZaudit")))
            monkeypatch.setattr(va.store, "audit", real_audit)
            await ws.send(json.dumps({"event": "stop", "streamSid": "MZaudit"}))
            await read_all(ws, timeout=30)
            return seen

    assert asyncio.run(call()) == [(500, True), (500, True)]  # paused anyway; still paused after the failed resume
