"""`voiceauth serve` end to end on the real models: a customer enrolled over REST from real
LibriSpeech recordings, then real calls streamed in real time over loopback, in both formats.

The genuine caller (other recordings of the same speaker) must end AUTHENTICATED; an impostor
(another speaker claiming the customer's id) must never be AUTHENTICATED. Audio goes through a
phone channel and G.711 mu-law at 8 kHz, in 20 ms frames at real-time pace (0.02 s per frame),
as Twilio and Genesys send it; the genuine and impostor calls stream at the same time."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_serve_support import (
    Server,
    announce_audiosocket,
    audiohook_call,
    audiosocket_call,
    audiosocket_verdict,
    request,
    running,
    statuses,
    twilio_call,
    wav_bytes,
)

from voiceauth.audio.channel import telephone_channel
from voiceauth.audio.decode import load_audio
from voiceauth.audio.g711 import mulaw_encode
from voiceauth.client import VoiceAuth

pytestmark = pytest.mark.integration
REAL_TIME = 0.02
CALL_S = 10.0


def phone(path: Path) -> np.ndarray:
    return telephone_channel(load_audio(path)).samples  # 8 kHz


def call_frames(paths: list[Path], seconds: float = CALL_S) -> list[bytes]:
    codes = mulaw_encode(np.concatenate([phone(p) for p in paths]))[: int(seconds * 8000)]
    return [codes[i:i + 160].tobytes() for i in range(0, len(codes) - 159, 160)]


def pcm_frames(paths: list[Path], seconds: float = CALL_S) -> list[bytes]:
    """20 ms frames of 16-bit 8 kHz PCM, as Asterisk's AudioSocket() sends them."""
    data = (np.clip(np.concatenate([phone(p) for p in paths]), -1, 1) * 32767).astype("<i2")[: int(seconds * 8000)]
    raw = data.tobytes()
    return [raw[i:i + 320] for i in range(0, len(raw) - 319, 320)]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, embedder, speakers: dict[str, list[Path]],  # noqa: ANN001
         ) -> Iterator[tuple[Server, dict[str, list[Path]], str, str]]:
    home = tmp_path_factory.mktemp("serve-live")
    mp = pytest.MonkeyPatch()
    mp.setenv("VOICEAUTH_KEY_FILE", str(home / "keyring.json"))
    va = VoiceAuth(home / "vp.db", embedder=embedder)  # the real AASIST spoof check too
    customer, other = sorted(speakers)[:2]
    try:
        with running(va) as server:
            enrolment = [("audio", p.name.replace(".flac", ".wav"), wav_bytes(phone(p), 8000))
                         for p in speakers[customer][:3]]
            status, body = request("POST", f"{server.http}/v1/customers/{customer}/enrol", server.keys["ops"],
                                   {"consent_channel": "ivr", "consent_notice_version": "v1"}, enrolment)
            assert status == 201 and body["status"] == "complete", body
            yield server, speakers, customer, other
    finally:
        va.close()
        mp.undo()


def _check(genuine: tuple, impostor: tuple, threshold_reached: bool = True) -> None:
    (good, code, _), (bad, bad_code, _) = genuine, impostor
    assert code == 1000 and statuses(good)[-1] == ("authenticated", True), statuses(good)
    assert bad_code == 1000 and "authenticated" not in [s for s, _ in statuses(bad)], statuses(bad)
    assert statuses(bad)[-1][0] in ("not_authenticated", "inconclusive")


def test_twilio_real_time_call_authenticates_the_customer_not_an_impostor(live: tuple) -> None:
    server, speakers, customer, other = live

    async def calls() -> list[tuple]:
        return await asyncio.gather(
            twilio_call(server.ws, server.keys["ivr"], customer, call_frames(speakers[customer][3:5]), REAL_TIME),
            twilio_call(server.ws, server.keys["ivr"], customer, call_frames(speakers[other][3:5]), REAL_TIME))

    genuine, impostor = asyncio.run(calls())
    _check(genuine, impostor)
    final = genuine[0][-1]["call"]
    assert final["spoof_score"] is not None and final["dropped_audio_s"] == 0.0


def test_audiohook_real_time_call_authenticates_the_customer_not_an_impostor(live: tuple) -> None:
    server, speakers, customer, other = live

    async def calls() -> list[tuple]:
        return await asyncio.gather(
            audiohook_call(server.ws, server.keys["ivr"], customer, call_frames(speakers[customer][5:8]), REAL_TIME),
            audiohook_call(server.ws, server.keys["ivr"], customer, call_frames(speakers[other][5:8]), REAL_TIME))

    genuine, impostor = asyncio.run(calls())
    _check(genuine, impostor)
    calls_now = request("GET", f"{server.http}/v1/calls", server.keys["agent"])[1]["calls"]
    assert {c["protocol"] for c in calls_now} == {"twilio", "audiohook"}


def test_audiosocket_real_time_call_authenticates_the_customer_not_an_impostor(live: tuple) -> None:
    import uuid

    server, speakers, customer, other = live
    good, bad = str(uuid.uuid4()), str(uuid.uuid4())
    for call_uuid in (good, bad):
        assert announce_audiosocket(server, call_uuid, customer)[0] == 201

    async def calls() -> list[bytes]:
        return await asyncio.gather(
            audiosocket_call(server.audiosocket_port, good, pcm_frames(speakers[customer][3:5]), REAL_TIME),
            audiosocket_call(server.audiosocket_port, bad, pcm_frames(speakers[other][3:5]), REAL_TIME))

    asyncio.run(calls())
    genuine, impostor = audiosocket_verdict(server, good), audiosocket_verdict(server, bad)
    assert genuine["call"]["status"] == "authenticated" and genuine["call"]["dropped_audio_s"] == 0.0, genuine
    assert impostor["state"] == "ended" and impostor["call"]["status"] in ("not_authenticated", "inconclusive")
    decided = [e.outcome for e in server.service.va.store.audit_events()  # every status change is audited
               if e.action == "call_decision" and e.details.get("call_id") == impostor["call"]["call_id"]]
    assert decided and "authenticated" not in decided, decided
