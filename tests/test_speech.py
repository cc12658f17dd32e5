"""Voice activity and quality on real speech (LibriSpeech test-other) and on synthetic non-speech."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from voiceauth.audio.channel import add_noise, telephone_channel
from voiceauth.audio.decode import Audio, load_audio
from voiceauth.errors import NoSpeechError, SessionError
from voiceauth.speech.activity import (
    FRAME_S,
    QualityFlag,
    SpeechGate,
    analyse,
    require_speech,
    speech_mask,
)

RATE = 16000


@pytest.fixture(scope="module")
def speech_files(librispeech: Path) -> list[Path]:
    files = sorted((librispeech / "test-other").glob("*/*.flac"))
    if not files:
        pytest.skip(f"no FLAC files under {librispeech / 'test-other'}")
    return files


@pytest.fixture(scope="module")
def long_speech(speech_files: list[Path]) -> Audio:
    """The first corpus file of at least 10 s."""
    path = next((p for p in speech_files if sf.info(str(p)).duration >= 10), speech_files[0])
    return load_audio(path)


def at_dbfs(audio: Audio, dbfs: float) -> Audio:
    rms = float(np.sqrt(np.mean(audio.samples.astype(np.float64) ** 2)))
    return Audio((audio.samples * (10 ** (dbfs / 20) / rms)).astype(np.float32), audio.sample_rate)


def gate_speech_s(audio: Audio, chunk: int) -> tuple[float, np.ndarray]:
    gate = SpeechGate(audio.sample_rate)
    out = [gate.push(audio.samples[i : i + chunk]) for i in range(0, len(audio.samples), chunk)]
    assert gate.seen_s == pytest.approx(len(audio.samples) // round(FRAME_S * audio.sample_rate) * FRAME_S)
    return gate.speech_s, np.concatenate(out)


# -- batch detector on real speech --------------------------------------------------------


def test_net_speech_is_most_of_each_utterance(speech_files: list[Path]) -> None:
    for path in speech_files[::10]:
        report = analyse(load_audio(path)).report
        assert 0.5 * report.duration_s <= report.speech_s <= report.duration_s, path.name


def test_clean_speech_report(long_speech: Audio) -> None:
    analysis = analyse(long_speech, min_speech_s=3.0)
    report = analysis.report
    assert report.flags == ()
    assert report.duration_s == pytest.approx(long_speech.duration_s)
    assert -40 < report.level_dbfs < -10
    assert report.snr_db > 15
    assert report.clipping_ratio == 0.0
    assert analysis.speech.sample_rate == RATE
    assert analysis.speech.duration_s == pytest.approx(report.speech_s)
    require_speech(analysis, "call.wav")  # does not raise


def test_mask_has_one_entry_per_whole_frame(long_speech: Audio) -> None:
    mask = speech_mask(long_speech.samples, RATE)
    assert mask.dtype == bool and len(mask) == len(long_speech.samples) // 320
    narrow = telephone_channel(long_speech)
    assert len(speech_mask(narrow.samples, 8000)) == len(narrow.samples) // 160


def test_silence_around_speech_changes_little(long_speech: Audio) -> None:
    base = analyse(long_speech).report.speech_s
    gap = np.zeros(3 * RATE, dtype=np.float32)
    for samples in (np.concatenate([gap, long_speech.samples]), np.concatenate([long_speech.samples, gap])):
        assert abs(analyse(Audio(samples, RATE)).report.speech_s - base) < 0.3


def test_telephone_speech_is_still_found(long_speech: Audio) -> None:
    phone = analyse(telephone_channel(long_speech)).report
    assert phone.speech_s > 0.5 * analyse(long_speech).report.speech_s


def test_clipped_speech_is_flagged(long_speech: Audio) -> None:
    clipped = Audio(np.clip(long_speech.samples * 20, -1, 1), RATE)
    report = analyse(clipped).report
    assert QualityFlag.CLIPPED in report.flags and report.clipping_ratio > 0.01


def test_quiet_speech_is_flagged(long_speech: Audio) -> None:
    assert QualityFlag.TOO_QUIET in analyse(at_dbfs(long_speech, -55)).report.flags
    assert QualityFlag.TOO_QUIET not in analyse(at_dbfs(long_speech, -25)).report.flags


def test_noisy_speech_is_flagged(long_speech: Audio) -> None:
    report = analyse(add_noise(long_speech, snr_db=0.0)).report
    assert QualityFlag.NOISY in report.flags and report.snr_db < 10


def test_too_short_and_truncated_flags(long_speech: Audio) -> None:
    cut = Audio(long_speech.samples, RATE, truncated=True)
    flags = analyse(cut, min_speech_s=long_speech.duration_s + 1).report.flags
    assert QualityFlag.TOO_SHORT in flags and QualityFlag.TRUNCATED in flags


# -- non-speech ---------------------------------------------------------------------------


def tone(freq: float, seconds: float, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize(
    ("name", "samples"),
    [
        ("digital silence", np.zeros(3 * RATE, dtype=np.float32)),
        ("hiss at -60 dBFS", (1e-3 * np.random.default_rng(0).standard_normal(3 * RATE)).astype(np.float32)),
        ("DC offset", np.full(3 * RATE, 0.4, dtype=np.float32)),
        ("steady tone", tone(440, 3.0)),
        ("loud steady noise", (0.1 * np.random.default_rng(1).standard_normal(3 * RATE)).astype(np.float32)),
        ("beeps", tone(1000, 6.0) * (np.arange(6 * RATE) % (2 * RATE) < RATE)),
    ],
)
def test_non_speech_is_not_speech(name: str, samples: np.ndarray) -> None:
    audio = Audio(samples, RATE)
    assert analyse(audio).report.speech_s <= 0.1, name
    assert gate_speech_s(audio, 320)[0] <= 0.2 * audio.duration_s, name


def test_silence_report_and_require_speech() -> None:
    analysis = analyse(Audio(np.zeros(int(3.2 * RATE), dtype=np.float32), RATE))
    report = analysis.report
    assert report.speech_s == 0.0 and len(analysis.speech.samples) == 0
    assert report.level_dbfs == -120.0 and np.isfinite(report.snr_db)
    assert QualityFlag.TOO_QUIET in report.flags and QualityFlag.NOISY not in report.flags
    with pytest.raises(NoSpeechError, match=r"no speech detected in call\.wav \(0\.0 s of speech in 3\.2 s of audio\)"):
        require_speech(analysis, "call.wav")


def test_empty_audio() -> None:
    report = analyse(Audio(np.zeros(0, dtype=np.float32), RATE)).report
    assert report.speech_s == 0.0 and report.duration_s == 0.0 and report.clipping_ratio == 0.0


@settings(max_examples=60, deadline=None)
@given(
    samples=hnp.arrays(np.float32, st.integers(0, 3000)),
    rate=st.sampled_from([8000, 16000, 11025, 100]),
    truncated=st.booleans(),
)
def test_analyse_never_crashes(samples: np.ndarray, rate: int, truncated: bool) -> None:
    analysis = analyse(Audio(samples, rate, truncated))
    report = analysis.report
    assert 0.0 <= report.speech_s <= report.duration_s + 1e-9
    assert np.isfinite([report.snr_db, report.level_dbfs, report.clipping_ratio]).all()
    assert len(analysis.speech.samples) == round(report.speech_s * rate)


# -- streaming gate -----------------------------------------------------------------------


def test_gate_agrees_with_batch_on_real_speech(long_speech: Audio) -> None:
    batch = analyse(long_speech).report.speech_s
    streamed, voiced = gate_speech_s(long_speech, 320)
    assert abs(streamed - batch) <= 0.2 * batch
    assert len(voiced) == round(streamed * RATE)


def test_gate_agrees_on_telephone_speech(long_speech: Audio) -> None:
    phone = telephone_channel(long_speech)
    batch = analyse(phone).report.speech_s
    assert abs(gate_speech_s(phone, 160)[0] - batch) <= 0.2 * batch


def test_gate_odd_chunks_match_frames(long_speech: Audio) -> None:
    framed_s, framed = gate_speech_s(long_speech, 320)
    for chunk in (1, 77, 333, 4099):
        odd_s, odd = gate_speech_s(long_speech, chunk)
        assert odd_s == framed_s
        np.testing.assert_array_equal(odd, framed)


def test_gate_buffers_partial_frames() -> None:
    gate = SpeechGate(8000)
    assert len(gate.push(np.zeros(159, dtype=np.float32))) == 0
    assert gate.seen_s == 0.0
    gate.push(np.zeros(1, dtype=np.float32))
    assert gate.seen_s == pytest.approx(0.02) and gate.speech_s == 0.0


def test_gate_rejects_bad_input() -> None:
    gate = SpeechGate(16000)
    with pytest.raises(SessionError, match="1-D"):
        gate.push(np.zeros((320, 2), dtype=np.float32))
    with pytest.raises(SessionError, match="float"):
        gate.push(np.array(["x"]))
    with pytest.raises(SessionError, match="sample rate"):
        SpeechGate(0)


def _levels_reference(frames: np.ndarray) -> np.ndarray:
    """The frame level by definition: variance in dB, non-finite samples as 0, overflow clamped."""
    from voiceauth.speech.activity import _EPS, _MAX_LEVEL_DB, SILENCE_DBFS

    chunk = np.nan_to_num(np.asarray(frames, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        levels = 10.0 * np.log10(np.var(chunk, axis=1) + _EPS)
    return np.nan_to_num(levels, nan=SILENCE_DBFS, posinf=_MAX_LEVEL_DB, neginf=SILENCE_DBFS)


def test_frame_levels_match_their_definition_for_every_input_kind() -> None:
    """The per-frame level (run on every 20 ms of every live call) takes a faster path for samples of
    32 bits or fewer; it must give the variance in dB, as numpy's ``var`` does, for any input."""
    from voiceauth.speech.activity import _frame_levels_db

    rng = np.random.default_rng(3)
    cases = {
        "float32": (0.1 * rng.standard_normal((300, 160))).astype(np.float32),
        "one frame": (0.1 * rng.standard_normal((1, 160))).astype(np.float32),
        "silence": np.zeros((5, 160), dtype=np.float32),
        "dc": np.full((5, 160), 0.25, dtype=np.float32),
        "int16": rng.integers(-32768, 32767, (50, 160)).astype(np.int16),
        "float64": 0.1 * rng.standard_normal((50, 320)),
        "huge float64": np.full((3, 160), 1e200) * rng.choice([-1.0, 1.0], (3, 160)),
        "largest float32": np.full((3, 160), np.finfo(np.float32).max, dtype=np.float32)
        * rng.choice([-1.0, 1.0], (3, 160)).astype(np.float32),
    }
    broken = (0.1 * rng.standard_normal((4, 160))).astype(np.float32)
    broken[0, 3], broken[1, 7], broken[2, :] = np.nan, np.inf, -np.inf
    cases["non-finite"] = broken
    for name, frames in cases.items():
        got, want = _frame_levels_db(frames), _levels_reference(frames)
        assert got.dtype == np.float64 and got.shape == (len(frames),), name
        assert np.all(np.isfinite(got)), name
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9, err_msg=name)
