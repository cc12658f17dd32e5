"""Enrol / verify / identify end to end on the real ECAPA model and real LibriSpeech speech."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voiceauth import (
    AlreadyEnrolledError,
    AudioDecodeError,
    ConsentError,
    Decision,
    EnrolmentStatus,
    Flag,
    KeyMissingError,
    ModelMismatchError,
    NoSpeechError,
    NotEnrolledError,
    StoreCorruptError,
)
from voiceauth.store.base import Namespace


def snapshot(va) -> tuple:  # noqa: ANN001
    """Everything a failed call must leave untouched."""
    prints = {
        i.subject_id: (i.speech_s, i.recordings, i.complete, i.updated_at) for i in va.list()
    }
    return prints, len(va.store.audit_events())


@pytest.fixture
def enrolled(make_client, speakers, consent):  # noqa: ANN001, ANN201
    va = make_client()
    ids = sorted(speakers)[:3]
    for spk in ids:
        progress = va.enroll(spk, speakers[spk][:3], consent=consent)
        assert progress.status is EnrolmentStatus.COMPLETE
        assert progress.percent == 100.0
    return va, ids


def test_genuine_accepted_impostor_rejected_identify_ranks(enrolled, speakers) -> None:  # noqa: ANN001
    va, ids = enrolled
    a, b = ids[0], ids[1]
    genuine = va.verify(a, speakers[a][5])
    assert genuine.decision is Decision.ACCEPT
    assert genuine.confidence > 0.9
    assert genuine.speech_s > 2.0
    impostor = va.verify(a, speakers[b][5])
    assert impostor.decision is Decision.REJECT
    assert impostor.confidence < 0.1
    assert genuine.score > impostor.score + 0.3
    top = va.identify(speakers[b][6], top_k=2)
    assert [c.customer_id for c in top][0] == b
    assert len(top) == 2 and top[0].score >= top[1].score


def test_enrolment_spans_calls_with_progress(make_client, speakers, consent) -> None:  # noqa: ANN001
    va = make_client()
    spk = sorted(speakers)[3]
    shortest = min(speakers[spk], key=lambda p: sf.info(p).duration)
    first = va.enroll(spk, [shortest], consent=consent)
    assert first.status is EnrolmentStatus.IN_PROGRESS
    assert 0 < first.percent < 100
    assert Flag.TOO_SHORT in first.feedback
    with pytest.raises(NotEnrolledError, match="incomplete"):
        va.verify(spk, speakers[spk][5])
    second = va.enroll(spk, speakers[spk][:3], consent=consent)
    assert second.status is EnrolmentStatus.COMPLETE
    assert second.recordings == 4
    assert va.verify(spk, speakers[spk][5]).decision is Decision.ACCEPT


def test_re_enrolment_needs_replace_or_update(enrolled, speakers, consent) -> None:  # noqa: ANN001
    va, ids = enrolled
    spk = ids[0]
    before = snapshot(va)
    with pytest.raises(AlreadyEnrolledError, match="replace=True"):
        va.enroll(spk, speakers[spk][3:4], consent=consent)
    assert snapshot(va) == before
    updated = va.enroll(spk, speakers[spk][3:4], consent=consent, update=True)
    assert updated.recordings == 4
    replaced = va.enroll(spk, speakers[spk][4:7], consent=consent, replace=True)
    assert replaced.recordings == 3


def test_consent_is_required(make_client, speakers) -> None:  # noqa: ANN001
    va = make_client()
    spk = sorted(speakers)[0]
    with pytest.raises(ConsentError, match="consent"):
        va.enroll(spk, speakers[spk][:3])
    with pytest.raises(ConsentError, match="legacy_migration"):
        va.enroll(spk, speakers[spk][:3], consent=None)
    assert va.list() == []
    done = va.enroll(spk, speakers[spk][:3], consent=None, legacy_migration=True)
    assert done.complete and va.consent(spk) is None


def test_opted_out_customer_is_not_processed(enrolled) -> None:  # noqa: ANN001
    va, ids = enrolled
    va.opt_out(ids[0])
    assert va.store.get(Namespace.CUSTOMER, ids[0]) is None
    # a path that does not exist proves the audio is never opened
    result = va.verify(ids[0], "/nonexistent/never-read.wav")
    assert result.decision is Decision.OPTED_OUT


@pytest.mark.parametrize(
    ("make_input", "error"),
    [
        (lambda d: d / "missing.wav", AudioDecodeError),
        (lambda d: _write(d / "text.wav", b"this is not audio at all" * 40), AudioDecodeError),
        (lambda d: _truncated_wav(d), AudioDecodeError),
        (lambda d: _silence(d / "silence.wav", 5.0), NoSpeechError),
        (lambda d: _silence(d / "empty.wav", 0.0), NoSpeechError),
        (lambda d: np.full(16000, np.nan, dtype=np.float32), AudioDecodeError),
    ],
    ids=["missing", "not-audio", "truncated", "silent", "zero-length", "nan"],
)
def test_bad_audio_is_a_clear_error_and_changes_nothing(enrolled, tmp_path, make_input, error) -> None:  # noqa: ANN001
    va, ids = enrolled
    source = make_input(tmp_path)
    before = snapshot(va)
    kwargs = {"sample_rate": 16000} if isinstance(source, np.ndarray) else {}
    with pytest.raises(error):
        va.verify(ids[0], source, **kwargs)
    with pytest.raises(error):
        va.enroll(ids[1], [source], consent=None, legacy_migration=True, update=True, **kwargs)
    assert snapshot(va) == before


def test_unknown_customer(enrolled, speakers) -> None:  # noqa: ANN001
    va, ids = enrolled
    with pytest.raises(NotEnrolledError, match="not enrolled"):
        va.verify("nobody", speakers[ids[0]][5])


def test_hour_long_recording_is_bounded(enrolled, speakers, tmp_path) -> None:  # noqa: ANN001
    va, ids = enrolled
    speech, rate = sf.read(speakers[ids[0]][5], dtype="float32")
    path = tmp_path / "hour.wav"
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as out:
        out.write(speech)
        quiet = np.zeros(rate * 60, dtype=np.float32)
        for _ in range(60):
            out.write(quiet)
    result = va.verify(ids[0], path)
    assert Flag.TRUNCATED in result.flags
    assert result.decision is Decision.ACCEPT


def test_store_file_that_is_not_a_database(make_client, tmp_path) -> None:  # noqa: ANN001
    bogus = tmp_path / "bogus.db"
    bogus.write_bytes(b"not a database, just bytes" * 100)
    before = bogus.read_bytes()
    with pytest.raises(StoreCorruptError, match="bogus.db"):
        make_client(bogus)
    assert bogus.read_bytes() == before


def test_wrong_key_is_a_clear_error(enrolled, speakers, monkeypatch, tmp_path) -> None:  # noqa: ANN001
    va, ids = enrolled
    path = va.store.path if hasattr(va.store, "path") else None
    va.close()
    monkeypatch.setenv("VOICEAUTH_KEY_FILE", str(tmp_path / "other-key.json"))
    from voiceauth.client import VoiceAuth

    with pytest.raises(KeyMissingError):
        other = VoiceAuth(path or tmp_path / "voiceprints.db")
        other.verify(ids[0], speakers[ids[0]][5])


def test_voiceprint_of_another_model_is_refused(enrolled, speakers) -> None:  # noqa: ANN001
    va, ids = enrolled

    class OtherModel:
        model_id = "some/other-model@1"
        dim = 192

        def embed(self, signals):  # noqa: ANN001, ANN201
            return np.ones((len(signals), 192), dtype=np.float32) / np.sqrt(192)

    va.embedder = OtherModel()
    with pytest.raises(ModelMismatchError, match="re-enrol"):
        va.verify(ids[0], speakers[ids[0]][5])


def test_database_holds_no_voiceprint_in_the_clear(enrolled, tmp_path) -> None:  # noqa: ANN001
    va, ids = enrolled
    vp = va.store.get(Namespace.CUSTOMER, ids[0])
    va.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("voiceprints.db*"))
    assert vp.embedding.astype(np.float32).tobytes()[:64] not in raw
    assert vp.embedding.astype(np.float64).tobytes()[:64] not in raw
    con = sqlite3.connect(tmp_path / "voiceprints.db")
    tables = [r[0] for r in con.execute("select name from sqlite_master where type='table'")]
    con.close()
    assert tables  # it is a real SQLite file


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _silence(path: Path, seconds: float) -> Path:
    sf.write(path, np.zeros(int(16000 * seconds), dtype=np.float32), 16000)
    return path


def _truncated_wav(directory: Path) -> Path:
    path = directory / "truncated.wav"
    rng = np.random.default_rng(0)
    sf.write(path, rng.normal(0, 0.1, 16000 * 3).astype(np.float32), 16000)
    data = path.read_bytes()
    path.write_bytes(data[:30])
    return path
