"""Trial harvest: enrolment trials, verification / call trials with outcomes, and what the trial table may hold."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from standin_voices import STANDIN_CALIBRATION, ToneEmbedder, voice

from voiceauth.audio.g711 import mulaw_encode
from voiceauth.client import VoiceAuth
from voiceauth.errors import OutcomeError, VoiceAuthError
from voiceauth.live import CallResult, SessionPool, SessionSettings
from voiceauth.scoring.normalisation import Normalisation
from voiceauth.store.base import Consent, Namespace
from voiceauth.store.trials import TrialKind

TRIAL_COLUMNS = {"trial_id", "kind", "model_id", "channel", "normalisation", "raw", "as_norm", "speech_s", "llr",
                 "label", "source", "day", "calibration", "trajectory"}
CUSTOMERS = 22


@pytest.fixture
def consent() -> Consent:
    return Consent.now(channel="ivr", notice_version="v1", captured_by="tests")


@pytest.fixture
def va(tmp_path: Path, consent: Consent) -> Iterator[VoiceAuth]:
    client = VoiceAuth(tmp_path / "vp.db", embedder=ToneEmbedder(), spoof=False,  # type: ignore[arg-type]
                       calibration=STANDIN_CALIBRATION)
    for k in range(CUSTOMERS):
        client.enroll(f"cust-{k}", [voice(k, 4.0, s) for s in range(3)], consent=consent, sample_rate=16000,
                      channel_tag="ivr-8k")
    yield client
    client.close()


def rows(db: Path, table: str) -> tuple[list[str], list[tuple]]:
    con = sqlite3.connect(db)
    try:
        cur = con.execute(f"SELECT * FROM {table}")  # noqa: S608 - table names from this test
        return [d[0] for d in cur.description], cur.fetchall()
    finally:
        con.close()


def test_consented_enrolment_yields_labelled_genuine_and_impostor_trials(va: VoiceAuth) -> None:
    trials = va.store.trials()
    kinds = Counter(t.kind for t in trials)
    assert kinds[TrialKind.ENROL_GENUINE] == 3 * CUSTOMERS  # each recording against the other two
    # each recording against up to 10 other voiceprints (fewer while fewer are enrolled)
    assert kinds[TrialKind.ENROL_IMPOSTOR] == sum(3 * min(10, k) for k in range(CUSTOMERS))
    assert all(t.label is (t.kind == TrialKind.ENROL_GENUINE) and t.source == "enrolment" for t in trials)
    assert {t.channel for t in trials} == {"ivr-8k"}
    genuine = np.array([t.raw for t in trials if t.label])
    impostor = np.array([t.raw for t in trials if not t.label])
    assert genuine.mean() > 0.6 > 0.2 > impostor.mean()
    # AS-norm values exist once the other customers form a cohort (20), never before
    normed = [t for t in trials if t.as_norm is not None]
    assert normed and all(t.normalisation == "as-norm" for t in normed)
    assert len(normed) < len(trials)


def test_legacy_migration_without_consent_harvests_nothing(tmp_path: Path) -> None:
    va = VoiceAuth(tmp_path / "vp.db", embedder=ToneEmbedder(), spoof=False,  # type: ignore[arg-type]
                   calibration=STANDIN_CALIBRATION)
    for k in range(3):
        va.enroll(f"m-{k}", [voice(k, 4.0, s) for s in range(3)], consent=None, legacy_migration=True,
                  sample_rate=16000)
    assert va.store.trials() == []
    va.close()


def test_trial_table_holds_no_biometric_data_and_no_customer_id(va: VoiceAuth, tmp_path: Path) -> None:
    result = va.verify("cust-3", voice(3, 5.0, 9), sample_rate=16000, channel_tag="ivr-8k")
    va.report_outcome(result.trial_id, genuine=True, source="kba")
    call_result = stream_call(va, "cust-4", voice(4, 8.0, 11, rate=8000))  # a call's trial, with its trajectory
    va.report_outcome(call_result.trial_id, genuine=True, source="kba")
    wait_for_call_trial(va)
    columns, data = rows(tmp_path / "vp.db", "trials")
    assert set(columns) == TRIAL_COLUMNS
    assert len(data) > 500
    allowed_text = {*TrialKind.SPEAKER, TrialKind.SPOOF_BONA_FIDE, ToneEmbedder.model_id, "ivr-8k", "raw",
                    "as-norm", "enrolment", "kba"}
    ids = {i.subject_id for i in va.list()}
    for row in data:
        for name, value in zip(columns, row, strict=True):
            assert not isinstance(value, (bytes, bytearray)), name  # no blobs: no embedding, no audio
            if name == "trajectory" and value is not None:  # a call's (score, net speech) pairs: numbers only
                points = json.loads(value)
                assert all(len(p) == 2 and all(isinstance(v, (int, float)) for v in p) for p in points), value
            elif isinstance(value, str):
                assert value in allowed_text or (name == "trial_id" and re.fullmatch(r"t-[0-9a-f]{24}", value)), value
                assert value not in ids
            else:
                assert value is None or isinstance(value, (int, float))
    # the day, not the moment: no join on time with the audit trail's events
    assert all(row[columns.index("day")] % 86400 == 0 for row in data)


def test_verification_trial_and_reported_outcome(va: VoiceAuth) -> None:
    genuine = va.verify("cust-3", voice(3, 5.0, 9), sample_rate=16000, channel_tag="ivr-8k")
    impostor = va.verify("cust-3", voice(5, 5.0, 9), sample_rate=16000)
    assert genuine.trial_id and impostor.trial_id and genuine.trial_id != impostor.trial_id
    trial = {t.trial_id: t for t in va.store.trials(kinds=(TrialKind.VERIFY,))}
    assert trial[genuine.trial_id].label is None and trial[genuine.trial_id].llr == pytest.approx(genuine.llr)
    assert trial[genuine.trial_id].channel == "ivr-8k" and trial[impostor.trial_id].channel == ""
    assert va.report_outcome(genuine.trial_id, genuine=True, source="kba").label is True
    assert va.report_outcome(genuine.trial_id, genuine=True, source="kba").label is True  # the same again: no-op
    with pytest.raises(OutcomeError, match="already reported genuine"):
        va.report_outcome(genuine.trial_id, genuine=False, source="fraud_case")
    va.report_outcome(impostor.trial_id, genuine=False, source="fraud_case")
    with pytest.raises(OutcomeError, match="no trial"):
        va.report_outcome("t-" + "0" * 24, genuine=True, source="kba")
    with pytest.raises(VoiceAuthError, match="not a trial id"):
        va.report_outcome("cust-3", genuine=True, source="kba")
    enrolment_trial = va.store.trials(kinds=(TrialKind.ENROL_GENUINE,))[0]
    with pytest.raises(OutcomeError, match="enrolment trial"):
        va.report_outcome(enrolment_trial.trial_id, genuine=False, source="kba")
    outcomes = [e for e in va.store.audit_events() if e.action == "trial_outcome"]
    assert [e.outcome for e in outcomes] == ["genuine", "impostor"] and all(e.subject_id is None for e in outcomes)


def test_a_verification_is_one_write_transaction(va: VoiceAuth, monkeypatch: pytest.MonkeyPatch) -> None:
    """Last used, the audit event and the trial row commit together: one commit (one fsync) per verify."""
    store = va.store
    opened = store._write  # type: ignore[attr-defined]
    writes: list[int] = []

    def counting():  # noqa: ANN202 - the store's own context manager, counted
        writes.append(1)
        return opened()

    monkeypatch.setattr(store, "_write", counting)
    before = len(store.audit_events())
    result = va.verify("cust-3", voice(3, 5.0, 9), sample_rate=16000, channel_tag="ivr-8k")
    assert len(writes) == 1
    assert result.trial_id in {t.trial_id for t in store.trials(kinds=(TrialKind.VERIFY,))}
    assert len(store.audit_events()) == before + 1


def test_a_trial_that_cannot_be_written_fails_the_verification_and_writes_nothing(
        va: VoiceAuth, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trial row shares the verification's transaction: if it fails, no decision is returned (the
    integration asks the questions) and neither the audit event nor the last-used time is written."""
    from voiceauth.errors import StoreError

    store = va.store

    def broken(con, trials):  # noqa: ANN001, ANN202 - the store's own signature
        raise StoreError("disk full")

    monkeypatch.setattr(store, "_insert_trials", broken)
    events, used = len(store.audit_events()), store.get(Namespace.CUSTOMER, "cust-3").last_used_at
    with pytest.raises(StoreError, match="disk full"):
        va.verify("cust-3", voice(3, 5.0, 9), sample_rate=16000)
    assert len(store.audit_events()) == events
    assert store.get(Namespace.CUSTOMER, "cust-3").last_used_at == used


def test_erasure_leaves_nothing_linking_trials_to_the_customer(va: VoiceAuth, tmp_path: Path) -> None:
    ids = [va.verify("cust-7", voice(7, 5.0, s), sample_rate=16000).trial_id for s in range(3)]
    va.report_outcome(ids[0], genuine=True, source="kba")
    assert va.delete("cust-7")
    db = tmp_path / "vp.db"
    con = sqlite3.connect(db)
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    con.close()
    holding_customer = []
    for table in tables:
        columns, data = rows(db, table)
        text = [str(v) for row in data for v in row]
        if any("cust-7" in v for v in text):  # the audit trail (what was done to whom) and the consent record
            holding_customer.append(table)
            assert not any(i in v for i in ids for v in text), table  # ...never name a trial
    assert "trials" not in holding_customer and "voiceprints" not in holding_customer
    assert set(holding_customer) <= {"audit", "consent", "voiceprint_versions"}  # the row-version counter


def test_channel_tags_are_short_words(va: VoiceAuth) -> None:
    with pytest.raises(VoiceAuthError, match="channel tag"):
        va.verify("cust-1", voice(1, 4.0, 5), sample_rate=16000, channel_tag="ivr 8k; DROP TABLE")


def live_pool(va: VoiceAuth) -> SessionPool:
    """A fresh live pool for ``va`` without the spoof check (the stand-in voices are not speech)."""
    va._sessions = SessionPool(va.services, SessionSettings(reap_interval_s=0.05, spoof_check=False),
                               watchlist=va.watchlist)
    return va._sessions


def stream_call(va: VoiceAuth, customer_id: str, x: np.ndarray) -> CallResult:
    live_pool(va)
    codes = mulaw_encode(x)
    with va.start_call(customer_id, channel_tag="ivr-8k") as call:
        for i in range(0, len(codes) - 160 + 1, 160):
            call.feed(codes[i : i + 160].tobytes())
            if i % 4000 == 0:
                time.sleep(0.002)
    return call.result(wait=60)


def wait_for_call_trial(va: VoiceAuth) -> None:
    deadline = time.monotonic() + 5
    while not va.store.trials(kinds=(TrialKind.CALL,)) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_live_call_records_its_trial_under_the_result_id(va: VoiceAuth) -> None:
    result = stream_call(va, "cust-4", voice(4, 8.0, 11, rate=8000))
    assert result.closed and result.trial_id is not None
    wait_for_call_trial(va)
    (trial,) = va.store.trials(kinds=(TrialKind.CALL,))
    assert trial.trial_id == result.trial_id and trial.channel == "ivr-8k" and trial.label is None
    assert trial.llr == pytest.approx(result.llr, abs=1e-3)
    # its trajectory: each update's (score, net speech) once there was enough speech for a decision
    assert trial.trajectory is not None and len(trial.trajectory) >= 2
    speech = [s for _, s in trial.trajectory]
    assert speech == sorted(speech) and speech[0] >= va._sessions.settings.min_decision_s - 1e-6
    assert speech[-1] == pytest.approx(trial.speech_s, abs=0.01)
    calibration = va.scorer.calibrations.get(Normalisation(trial.normalisation))
    assert calibration.llr(*trial.trajectory[-1]) == pytest.approx(result.llr, abs=1e-2)  # the points re-score it
    assert va.report_outcome(result.trial_id, genuine=True, source="kba").label is True


def test_the_segment_cut_at_close_is_scored_before_the_call_finishes(va: VoiceAuth) -> None:
    """A worker finishing the previous segment while the front end cuts the last one at close
    must not finish the call first: the last segment is scored, the trial holds the final score
    (was: the call looked flushed with the last segment not yet queued; its trial missed that
    segment's score, or the segment was dropped unscored)."""
    pool = live_pool(va)
    codes = mulaw_encode(voice(4, 8.0, 11, rate=8000))
    call = va.start_call("cust-4", channel_tag="ivr-8k")
    cut: list[float] = []
    push = call._push_segments

    def counted(segments: list) -> None:  # type: ignore[type-arg]
        cut.extend(s.speech_s for s in segments)
        push(segments)

    call._push_segments = counted  # type: ignore[method-assign]
    for i in range(0, len(codes) - 160 + 1, 160):
        call.feed(codes[i : i + 160].tobytes())
    deadline = time.monotonic() + 30
    while (call._inbox or call._segments or call._in_flight) and time.monotonic() < deadline:
        time.sleep(0.02)  # everything fed so far is scored: only the cut at close is left
    flush = call._segmenter.flush

    def flush_while_a_worker_finishes() -> list:  # type: ignore[type-arg]
        last = flush()
        assert last, "the call must end mid-speech for this test"
        pool._maybe_finish(call)  # an embedding job that just finished the previous segment
        return last

    call._segmenter.flush = flush_while_a_worker_finishes  # type: ignore[method-assign]
    call.close()
    result = call.result(wait=30)
    assert result.closed
    assert result.speech_s == pytest.approx(sum(cut), abs=0.02)  # the last segment counted
    wait_for_call_trial(va)
    (trial,) = va.store.trials(kinds=(TrialKind.CALL,))
    assert trial.llr == pytest.approx(result.llr, abs=1e-3)
    assert trial.speech_s == pytest.approx(result.speech_s, abs=0.02)
