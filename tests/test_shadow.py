"""Model upgrade without re-enrolment: shadow voiceprints grow from accepted speech and take over (stand-in models)."""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from standin_voices import STANDIN_CALIBRATION, ToneEmbedder, voice

from voiceauth.audio.g711 import mulaw_encode
from voiceauth.client import VoiceAuth
from voiceauth.decision import CallStatus, Decision
from voiceauth.errors import ModelError, ModelMismatchError, NotEnrolledError
from voiceauth.live import SessionPool, SessionSettings
from voiceauth.services import shadow
from voiceauth.services.enrolment import NewSpeech, builder
from voiceauth.store.base import AuditRecord, Consent, Namespace

CUSTOMERS = 22


class NextToneEmbedder(ToneEmbedder):
    """The 'next model': the same voices in another embedding space, under another model id."""

    model_id = "stand-in/tones@2"

    def __init__(self) -> None:
        super().__init__()
        self.basis = np.random.default_rng(8).standard_normal((64, self.dim))


NEXT_CALIBRATION = dataclasses.replace(STANDIN_CALIBRATION, model_id=NextToneEmbedder.model_id)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    consent = Consent.now(channel="ivr", notice_version="v1", captured_by="tests")
    with VoiceAuth(tmp_path / "vp.db", embedder=ToneEmbedder(), spoof=False,  # type: ignore[arg-type]
                   calibration=STANDIN_CALIBRATION) as va:
        for k in range(CUSTOMERS):
            va.enroll(f"cust-{k}", [voice(k, 4.0, s) for s in range(3)], consent=consent, sample_rate=16000)
    return tmp_path / "vp.db"


@pytest.fixture
def current(db: Path) -> Iterator[VoiceAuth]:
    """The deployment on the current model, growing shadows of the next one."""
    with VoiceAuth(db, embedder=ToneEmbedder(), spoof=False, calibration=STANDIN_CALIBRATION,  # type: ignore[arg-type]
                   shadow_model=NextToneEmbedder()) as va:  # type: ignore[arg-type]
        yield va


def upgraded(db: Path) -> VoiceAuth:
    """The deployment switched to the next model."""
    return VoiceAuth(db, embedder=NextToneEmbedder(), spoof=False, calibration=NEXT_CALIBRATION)  # type: ignore[arg-type]


def grow_until_complete(va: VoiceAuth, customer: int) -> int:
    """Accepted verifications until the customer's shadow is complete; how many it took."""
    for attempt in range(1, 8):
        assert va.verify(f"cust-{customer}", voice(customer, 6.0, 50 + attempt), sample_rate=16000).decision \
            is Decision.ACCEPT
        got = va.store.get(Namespace.SHADOW, f"cust-{customer}")
        if got is not None and got.complete:
            return attempt
    raise AssertionError("the shadow never completed")


def test_accepted_speech_grows_the_shadow_and_rejected_speech_does_not(current: VoiceAuth) -> None:
    assert current.store.get(Namespace.SHADOW, "cust-3") is None
    assert current.verify("cust-3", voice(3, 6.0, 9), sample_rate=16000).decision is Decision.ACCEPT
    first = current.store.get(Namespace.SHADOW, "cust-3")
    assert first is not None and first.model_id == NextToneEmbedder.model_id and not first.complete
    assert first.embedding.shape == (NextToneEmbedder.dim,) and 0 < first.speech_s < current.enrol_speech_s
    impostor = current.verify("cust-3", voice(7, 6.0, 9), sample_rate=16000)
    assert impostor.decision is not Decision.ACCEPT
    after = current.store.get(Namespace.SHADOW, "cust-3")
    assert after is not None and after.speech_s == first.speech_s and after.recordings == 1
    # the customer's voiceprint is untouched: the current model alone decides
    vp = current.store.get(Namespace.CUSTOMER, "cust-3")
    assert vp is not None and vp.model_id == ToneEmbedder.model_id
    events = [e for e in current.audit_events("cust-3") if e.action == "shadow_enroll"]
    assert len(events) == 1 and events[0].details["model"] == NextToneEmbedder.model_id
    assert current.verify_audit().ok


def test_a_complete_shadow_takes_over_when_the_deployment_switches(current: VoiceAuth, db: Path) -> None:
    assert grow_until_complete(current, 5) >= 2
    current.verify("cust-6", voice(6, 6.0, 70), sample_rate=16000)  # one accept: a shadow still in progress
    status = current.shadow_status()
    assert (status.customers, status.on_model, status.shadows_complete, status.shadows_in_progress) == (
        CUSTOMERS, 0, 1, 1)
    assert status.ready == pytest.approx(1 / CUSTOMERS)
    before = current.store.get(Namespace.CUSTOMER, "cust-5")
    current.close()
    with upgraded(db) as va:
        genuine = va.verify("cust-5", voice(5, 6.0, 99), sample_rate=16000)
        assert genuine.decision is Decision.ACCEPT
        now = va.store.get(Namespace.CUSTOMER, "cust-5")
        assert now is not None and before is not None
        assert now.model_id == NextToneEmbedder.model_id and now.created_at == before.created_at
        assert va.store.get(Namespace.SHADOW, "cust-5") is None
        assert va.verify("cust-5", voice(9, 6.0, 99), sample_rate=16000).decision is not Decision.ACCEPT
        upgrades = [e for e in va.audit_events("cust-5") if e.action == "model_upgrade"]
        assert len(upgrades) == 1 and upgrades[0].details == {
            "from": ToneEmbedder.model_id, "to": NextToneEmbedder.model_id,
            "speech_s": upgrades[0].details["speech_s"], "recordings": upgrades[0].details["recordings"]}
        # no complete shadow: the new model cannot score them, and the message says how far it is
        with pytest.raises(ModelMismatchError, match=r"cust-6.*holds \d+\.\d of 10 s"):
            va.verify("cust-6", voice(6, 6.0, 99), sample_rate=16000)
        with pytest.raises(ModelMismatchError, match="cust-7.*no shadow voiceprint"):
            va.verify("cust-7", voice(7, 6.0, 99), sample_rate=16000)
        assert va.shadow_status().on_model == 1
        assert va.verify_audit().ok


def test_erasure_takes_the_shadow_with_it(current: VoiceAuth, db: Path) -> None:
    for k in (1, 2, 3):
        current.verify(f"cust-{k}", voice(k, 6.0, 30), sample_rate=16000)
        assert current.store.get(Namespace.SHADOW, f"cust-{k}") is not None
    assert current.delete("cust-1")
    assert current.opt_out("cust-2").voiceprint_deleted
    current.store.touch(Namespace.CUSTOMER, "cust-3", time.time() - 400 * 86400)
    assert "cust-3" in current.purge_unused(180)
    for k in (1, 2, 3):
        assert current.store.get(Namespace.SHADOW, f"cust-{k}") is None
    current.close()
    con = sqlite3.connect(db)
    try:
        left = con.execute("SELECT subject_id FROM voiceprints WHERE namespace = 'shadow'").fetchall()
    finally:
        con.close()
    assert left == []


def test_no_shadow_without_its_customer(current: VoiceAuth) -> None:
    new = NewSpeech(np.ones(NextToneEmbedder.dim, dtype=np.float32) / 8.0, 5.0, 1)
    build = builder("ghost", Namespace.SHADOW, NextToneEmbedder.model_id, new, mode="update", required_s=10.0)
    with pytest.raises(NotEnrolledError, match="no shadow voiceprint"):
        current.store.upsert(Namespace.SHADOW, "ghost", build, event=AuditRecord("shadow_enroll", "ghost", "added"))
    current.opt_out("cust-4")
    build = builder("cust-4", Namespace.SHADOW, NextToneEmbedder.model_id, new, mode="update", required_s=10.0)
    with pytest.raises(NotEnrolledError):
        current.store.upsert(Namespace.SHADOW, "cust-4", build, event=AuditRecord("shadow_enroll", "cust-4", "added"))
    # the facade's grow() swallows it: the decision it follows stands, and nothing is written
    assert shadow.grow(current.services, "cust-4", [voice(4, 6.0, 1)], [5.0], ToneEmbedder.model_id) is None
    assert current.store.get(Namespace.SHADOW, "cust-4") is None
    assert current.store.get(Namespace.SHADOW, "ghost") is None


def test_re_enrolment_discards_the_shadow_and_a_new_next_model_starts_over(current: VoiceAuth, db: Path) -> None:
    current.verify("cust-2", voice(2, 6.0, 40), sample_rate=16000)
    assert current.store.get(Namespace.SHADOW, "cust-2") is not None
    current.enroll("cust-2", [voice(2, 4.0, s) for s in (7, 8, 9)], replace=True, sample_rate=16000,
                   consent=Consent.now(channel="ivr", notice_version="v1", captured_by="tests"))
    assert current.store.get(Namespace.SHADOW, "cust-2") is None
    assert [e.outcome for e in current.audit_events("cust-2") if e.action == "shadow_delete"] == ["re-enrolled"]
    # a shadow of an earlier next model (the plan changed) is replaced, never merged with another model's
    current.verify("cust-2", voice(2, 6.0, 41), sample_rate=16000)
    current.close()

    class ThirdToneEmbedder(NextToneEmbedder):
        model_id = "stand-in/tones@3"
        dim = 32

    with VoiceAuth(db, embedder=ToneEmbedder(), spoof=False, calibration=STANDIN_CALIBRATION,  # type: ignore[arg-type]
                   shadow_model=ThirdToneEmbedder()) as va:  # type: ignore[arg-type]
        assert va.verify("cust-2", voice(2, 6.0, 42), sample_rate=16000).decision is Decision.ACCEPT
        got = va.store.get(Namespace.SHADOW, "cust-2")
        assert got is not None and got.model_id == ThirdToneEmbedder.model_id and got.recordings == 1
        assert got.embedding.shape == (32,)
        assert [e.outcome for e in va.audit_events("cust-2") if e.action == "shadow_delete"] == [
            "re-enrolled", "replaced"]


def test_the_shadow_model_must_be_another_model(db: Path) -> None:
    with pytest.raises(ModelError, match="is the model in use"):
        VoiceAuth(db, embedder=ToneEmbedder(), spoof=False, calibration=STANDIN_CALIBRATION,  # type: ignore[arg-type]
                  shadow_model=ToneEmbedder())  # type: ignore[arg-type]


def _call(va: VoiceAuth, customer: str, speaker: int, seed: int) -> CallStatus:
    codes = mulaw_encode(voice(speaker, 12.0, seed, rate=8000))
    with va.start_call(customer) as call:
        for i in range(0, len(codes) - 160 + 1, 160):
            call.feed(codes[i : i + 160].tobytes())
            if i % 4000 == 0:
                time.sleep(0.002)
    return call.result(wait=60).status


def test_an_authenticated_call_grows_the_shadow_and_a_failed_one_does_not(current: VoiceAuth) -> None:
    current._sessions = SessionPool(current.services, SessionSettings(reap_interval_s=0.05, spoof_check=False),
                                    watchlist=current.watchlist)
    assert _call(current, "cust-8", 8, 3) is CallStatus.AUTHENTICATED
    deadline = time.monotonic() + 10
    while current.store.get(Namespace.SHADOW, "cust-8") is None and time.monotonic() < deadline:
        time.sleep(0.05)  # grown on a worker once the verdict is out
    got = current.store.get(Namespace.SHADOW, "cust-8")
    assert got is not None and got.model_id == NextToneEmbedder.model_id and got.speech_s > 0
    assert got.speech_s <= current.enrol_speech_s + 5.0  # at most an enrolment's worth (plus one segment) kept
    assert _call(current, "cust-9", 12, 3) is not CallStatus.AUTHENTICATED  # someone else's voice
    time.sleep(0.5)
    assert current.store.get(Namespace.SHADOW, "cust-9") is None


def test_cli_reports_the_switch_over(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from voiceauth.cli import EXIT_OK, main
    from voiceauth.models import CAMPPLUS

    assert main(["models", "shadow-status", "--to", "campplus", "--model", "ecapa", "--store", str(db),
                 "--json"]) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report == {"model_id": CAMPPLUS.model_id, "customers": CUSTOMERS, "on_model": 0, "shadows_complete": 0,
                      "shadows_in_progress": 0, "ready": 0.0}
    assert main(["models", "shadow-status", "--to", "campplus", "--model", "campplus", "--store", str(db)]) == EXIT_OK
    assert f"0 of {CUSTOMERS} customers on it" in capsys.readouterr().out


@pytest.mark.integration  # real models: ECAPA (ONNX) today, CAM++ next
def test_real_models_move_a_customer_from_ecapa_to_campplus(tmp_path: Path, speakers: dict[str, list[Path]]) -> None:
    from test_engines import calibration_for

    from voiceauth.models import CAMPPLUS, ECAPA

    a, b = list(speakers.values())[:2]
    db = tmp_path / "vp.db"
    consent = Consent.now(channel="ivr", notice_version="v1", captured_by="tests")
    with VoiceAuth(db, embedder="ecapa-onnx", spoof=False, shadow_model="campplus") as va:
        va.enroll("alice", a[:3], consent=consent)
        va.enroll("bob", b[:3], consent=consent)
        assert va.verify("alice", b[4]).decision is not Decision.ACCEPT
        assert va.store.get(Namespace.SHADOW, "alice") is None  # an impostor's speech never seeds a shadow
        for path in a[3:7]:
            assert va.verify("alice", path).decision is Decision.ACCEPT
        grown = va.store.get(Namespace.SHADOW, "alice")
        assert grown is not None and grown.complete and grown.model_id == CAMPPLUS.model_id
        assert va.shadow_status().shadows_complete == 1
    calibration = calibration_for(CAMPPLUS.model_id, tmp_path / "campplus.json")
    with VoiceAuth(db, embedder="campplus", spoof=False, calibration=calibration) as va:
        assert va.verify("alice", a[8]).decision is Decision.ACCEPT  # the shadow took over
        now = va.store.get(Namespace.CUSTOMER, "alice")
        assert now is not None and now.model_id == CAMPPLUS.model_id
        assert va.verify("alice", b[5]).decision is not Decision.ACCEPT
        with pytest.raises(ModelMismatchError, match=f"bob's voiceprint was made by model {ECAPA.model_id}"):
            va.verify("bob", b[6])
