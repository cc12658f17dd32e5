"""The speaker model's front end: long non-speech out, short pauses and word edges kept (issue 14).

Behaviour on synthetic and real (LibriSpeech) speech: what the embedder hears of a recording
(``analyse(...).trimmed``), of a live stream (``SpeechGate.push_kept`` + ``Segmenter``), and
that the one-shot and live paths of the client use it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from standin_voices import STANDIN_CALIBRATION, ToneEmbedder, voice

from voiceauth.audio.decode import Audio, load_audio
from voiceauth.live.evidence import Segmenter
from voiceauth.speech.activity import FRAME_S, QualityFlag, SpeechGate, analyse, frame_length, speech_mask
from voiceauth.speech.pauses import DC_LIMIT, LONG_PAUSE_S, PAD_S, PauseTrimmer, keep_mask, pause_frames, remove_dc

RATE = 16000
LONG, PAD = pause_frames(FRAME_S)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(round(seconds * RATE)), dtype=np.float32)


def contains(haystack: np.ndarray, needle: np.ndarray) -> bool:
    """Is ``needle`` a contiguous, unaltered run of ``haystack``?"""
    starts = np.flatnonzero(haystack == needle[0])
    return any(np.array_equal(haystack[s : s + len(needle)], needle) for s in starts)


@pytest.fixture(scope="module")
def recording(speakers: dict[str, list[Path]]) -> np.ndarray:
    """A real utterance of about 12 s (LibriSpeech, 16 kHz) with a DC offset of about -50 dBFS."""
    return load_audio(next(iter(speakers.values()))[1]).samples


@pytest.fixture(scope="module")
def utterance(recording: np.ndarray) -> np.ndarray:
    """The same, without its DC offset."""
    return (recording - np.mean(recording)).astype(np.float32)


# -- the rule, on masks -----------------------------------------------------------------------------


def test_pause_lengths_are_what_the_docs_say() -> None:
    assert round(LONG_PAUSE_S / FRAME_S) == LONG and round(PAD_S / FRAME_S) == PAD
    assert 0.5 <= LONG_PAUSE_S <= 1.0 and LONG > 2 * PAD


def test_short_pauses_are_kept_whole_long_ones_keep_only_their_edges() -> None:
    v = np.zeros(400, dtype=bool)
    lead = LONG + 20
    long_start, long_end = lead + 80, lead + 80 + LONG + 30
    v[lead : lead + 20] = v[lead + 20 + LONG - 1 : long_start] = v[long_end : long_end + 20] = True
    keep = keep_mask(v, LONG, PAD)
    assert keep[lead:long_start].all()  # the pause of LONG - 1 frames is kept whole
    assert keep[long_start : long_start + PAD].all() and keep[long_end - PAD : long_end].all()
    assert not keep[long_start + PAD : long_end - PAD].any()
    assert keep[lead - PAD : lead].all() and not keep[: lead - PAD].any()  # a long lead-in: a pad only
    assert keep[long_end + 20 : long_end + 20 + PAD].all() and not keep[long_end + 20 + PAD :].any()  # long tail
    short = np.zeros(60, dtype=bool)
    short[LONG - 1 : LONG + 9] = True
    assert keep_mask(short, LONG, PAD).all()  # a lead-in and a tail shorter than a long pause: kept whole
    assert not keep_mask(np.zeros(50, dtype=bool), LONG, PAD).any()


@pytest.mark.parametrize("seed", range(6))
def test_streaming_trimmer_keeps_exactly_what_the_batch_rule_keeps(seed: int) -> None:
    rng = np.random.default_rng(seed)
    voiced = np.repeat(rng.random(40) < 0.5, rng.integers(1, 70, 40))
    frames = np.arange(len(voiced), dtype=np.float32)[:, None]  # each frame carries its index
    trimmer, got, flags, start = PauseTrimmer(LONG, PAD), [], [], 0
    while start < len(voiced):
        step = int(rng.integers(1, 30))
        out, f = trimmer.push(frames[start : start + step], voiced[start : start + step])
        got += [int(o[0]) for o in out]
        flags += f
        start += step
    got += [int(o[0]) for o in trimmer.flush()]
    flags += [False] * (len(got) - len(flags))
    assert got == list(np.flatnonzero(keep_mask(voiced, LONG, PAD)))  # same frames, in order, none twice
    assert flags == list(voiced[got])


# -- one recording ----------------------------------------------------------------------------------


def test_dense_real_speech_is_heard_whole(utterance: np.ndarray) -> None:
    analysis = analyse(Audio(utterance, RATE))
    heard = analysis.trimmed.samples
    assert len(heard) >= 0.95 * len(utterance) // frame_length(RATE) * frame_length(RATE)
    assert len(heard) > len(analysis.speech.samples)  # more than the spliced speech frames
    assert contains(utterance, heard[RATE : 2 * RATE])  # unaltered: no splice, no gain, no filter


def test_long_silences_are_dropped_and_short_pauses_kept(utterance: np.ndarray) -> None:
    half = len(utterance) // 2 // frame_length(RATE) * frame_length(RATE)
    first, second = utterance[:half], utterance[half:]
    plain = analyse(Audio(np.concatenate([first, second]), RATE))
    long_gap = analyse(Audio(np.concatenate([silence(1.0), first, silence(3.0), second, silence(2.0)]), RATE))
    short_gap = analyse(Audio(np.concatenate([first, silence(0.4), second]), RATE))
    frame_s = frame_length(RATE) / RATE
    # 3 s of silence inside and the 3 s around it leave at most the pads (and the speech is all there)
    assert len(long_gap.trimmed.samples) / RATE <= len(plain.trimmed.samples) / RATE + 4 * PAD_S + 2 * frame_s
    assert long_gap.report.speech_s == pytest.approx(plain.report.speech_s, abs=0.2)
    # a 0.4 s pause between words is heard whole
    assert len(short_gap.trimmed.samples) / RATE >= len(plain.trimmed.samples) / RATE + 0.4 - 2 * frame_s
    assert contains(short_gap.trimmed.samples, np.concatenate([first[-800:], silence(0.4), second[:800]]))


def test_word_edges_are_never_trimmed() -> None:
    rng = np.random.default_rng(1)
    words = []
    for _k in range(3):  # a soft onset and a long decay: the detector notices both late
        n = int(0.5 * RATE)
        envelope = np.minimum(1.0, np.arange(n) / (0.12 * RATE)) * np.exp(-np.maximum(0, np.arange(n) - 0.3 * RATE)
                                                                         / (0.03 * RATE))
        word = 0.3 * envelope * rng.standard_normal(n)
        words.append((word - np.mean(word)).astype(np.float32))  # no DC: what is kept is left as it is
    signal = np.concatenate([silence(1.0), words[0], silence(1.5), words[1], silence(0.3), words[2], silence(1.0)])
    heard = analyse(Audio(signal, RATE)).trimmed.samples
    for word in words:
        assert contains(heard, word)
    assert len(heard) < len(signal) - 1.5 * RATE  # the long silences went


def test_digital_silence_pauses_are_heard_and_zeros_stay_zeros(utterance: np.ndarray) -> None:
    n = frame_length(RATE)
    mask = np.repeat(speech_mask(utterance, RATE), n)
    dtx = np.zeros_like(utterance)
    dtx[: len(mask)] = np.where(mask, utterance[: len(mask)], 0.0)  # VoIP DTX: every pause exact zeros
    plain, zeroed = analyse(Audio(utterance, RATE)), analyse(Audio(dtx, RATE))
    assert zeroed.report.speech_s == pytest.approx(plain.report.speech_s, rel=0.1)
    assert len(zeroed.trimmed.samples) >= 0.9 * len(plain.trimmed.samples)
    assert (zeroed.trimmed.samples == 0).sum() >= 0.5 * (dtx == 0).sum() - 2 * PAD * n  # short zero pauses kept


def test_only_zeros_or_comfort_noise_is_no_speech() -> None:
    for signal in (silence(5.0), 10 ** (-65 / 20) * np.random.default_rng(0).standard_normal(5 * RATE)):
        analysis = analyse(Audio(signal.astype(np.float32), RATE))
        assert analysis.report.speech_s == 0 and len(analysis.trimmed.samples) == 0


def test_comfort_noise_and_a_hold_tone_are_dropped(utterance: np.ndarray) -> None:
    rng = np.random.default_rng(2)
    comfort = (10 ** (-60 / 20) * rng.standard_normal(3 * RATE)).astype(np.float32)
    tone = (0.1 * np.sin(2 * np.pi * 1000 * np.arange(3 * RATE) / RATE)).astype(np.float32)
    half = len(utterance) // 2
    base = analyse(Audio(utterance, RATE))
    for filler in (comfort, tone):
        signal = np.concatenate([utterance[:half], filler, utterance[half:]])
        analysis = analyse(Audio(signal, RATE))
        assert len(analysis.trimmed.samples) <= len(base.trimmed.samples) + (2 * PAD_S + 0.2) * RATE
        # comfort noise gives the detector a truer noise floor: quiet syllables may count (net speech +-10 %)
        assert analysis.report.speech_s == pytest.approx(base.report.speech_s, rel=0.1)


def test_dc_offset_is_removed_and_changes_nothing_else(recording: np.ndarray, utterance: np.ndarray) -> None:
    assert abs(float(np.mean(recording))) > DC_LIMIT  # a real recording with an offset
    assert abs(float(np.mean(analyse(Audio(recording, RATE)).trimmed.samples))) < DC_LIMIT
    plain = analyse(Audio(utterance, RATE))
    shifted = analyse(Audio((utterance + 0.05).astype(np.float32), RATE))
    assert shifted.report.speech_s == plain.report.speech_s
    assert abs(float(np.mean(shifted.trimmed.samples))) < DC_LIMIT
    np.testing.assert_allclose(shifted.trimmed.samples, plain.trimmed.samples - np.mean(plain.trimmed.samples),
                               atol=1e-4)
    assert np.array_equal(plain.trimmed.samples, remove_dc(plain.trimmed.samples))  # no offset: untouched
    with_zeros = np.concatenate([silence(0.1), np.full(800, 0.2, np.float32)])
    assert np.array_equal(remove_dc(with_zeros)[:1600], silence(0.1))  # exact zeros stay exact zeros


def test_dc_removal_ignores_infinite_samples_without_a_warning() -> None:
    """Found by test_analyse_never_crashes: +inf and -inf among the samples made the mean NaN (a warning)."""
    samples = np.concatenate([[0.0, -np.inf, 0.0], np.full(800, 0.2), [np.inf, 0.0]]).astype(np.float32)
    out = remove_dc(samples)  # the test run turns warnings into errors
    assert np.allclose(out[3:803], 0.0) and np.isneginf(out[1]) and np.isposinf(out[803]) and out[0] == 0.0


def test_clipped_speech_is_heard_and_flagged(utterance: np.ndarray) -> None:
    clipped = np.clip(utterance * 20.0, -1.0, 1.0).astype(np.float32)
    analysis = analyse(Audio(clipped, RATE))
    assert QualityFlag.CLIPPED in analysis.report.flags
    assert analysis.report.speech_s > 0.5 * analyse(Audio(utterance, RATE)).report.speech_s
    assert len(analysis.trimmed.samples) >= 0.9 * len(utterance)


# -- a live stream ----------------------------------------------------------------------------------


def test_gate_keeps_pauses_for_the_model_and_speech_for_the_spoof_check(utterance: np.ndarray) -> None:
    half = len(utterance) // 2
    stream = np.concatenate([silence(2.0), utterance[:half], silence(3.0), utterance[half:], silence(1.0)])
    plain_gate, kept_gate = SpeechGate(RATE), SpeechGate(RATE)
    voiced = np.concatenate([plain_gate.push(c) for c in np.array_split(stream, 97)])
    kept = [kept_gate.push_kept(c) for c in np.array_split(stream, 131)]
    heard = np.concatenate([k.samples for k in kept])
    speech = np.concatenate([k.speech for k in kept])
    assert np.array_equal(speech, voiced)  # the spoof check hears exactly the speech frames
    assert kept_gate.speech_s == plain_gate.speech_s
    assert len(voiced) < len(heard) <= len(utterance) + (4 * PAD_S + 0.1) * RATE  # pauses in, long silences out
    assert contains(heard, utterance[half - 4000 : half])


def test_segments_hold_net_speech_and_their_pauses(utterance: np.ndarray) -> None:
    rate = 8000
    from voiceauth.audio.decode import resample

    narrow = resample(utterance, RATE, rate)
    stream = np.concatenate([narrow, np.zeros(int(0.5 * rate), np.float32), narrow]) + np.float32(0.03)  # DC
    gate, segmenter = SpeechGate(rate), Segmenter(rate, segment_s=1.5, min_flush_s=0.5)
    segments = []
    for chunk in np.array_split(stream, 60):
        segments += segmenter.push(gate.push_kept(chunk), fed_at=0.0)
    tail = segmenter.flush()
    assert len(segments) >= 3
    assert all(s.speech_s == pytest.approx(1.5) for s in segments)
    assert gate.speech_s - 0.5 < sum(s.speech_s for s in segments + tail) <= gate.speech_s  # a tail < 0.5 s dropped
    assert sum(len(s.samples) for s in segments) / RATE > sum(s.speech_s for s in segments)  # pauses kept
    assert all(abs(float(np.mean(s.samples))) < DC_LIMIT for s in segments)


# -- the client uses it ------------------------------------------------------------------------------


class Recording(ToneEmbedder):
    """The stand-in model, remembering what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[np.ndarray] = []

    def embed(self, signals: Sequence[np.ndarray]) -> np.ndarray:
        self.inputs += [np.asarray(s) for s in signals]
        return super().embed(signals)


@pytest.fixture
def recorded(tmp_path: Path) -> Iterator[tuple[object, Recording]]:
    from voiceauth.client import VoiceAuth

    model = Recording()
    va = VoiceAuth(tmp_path / "vp.db", embedder=model, spoof=False,  # type: ignore[arg-type]
                   calibration=STANDIN_CALIBRATION)
    yield va, model
    va.close()


def phrase(speaker: int, seed: int) -> np.ndarray:
    """Words of 'speech' with short pauses, after and before a long silence."""
    words = [voice(speaker, 0.7, seed + k) for k in range(4)]
    return np.concatenate([silence(2.0), words[0], silence(0.3), words[1], silence(0.25), words[2], silence(2.5),
                           words[3], silence(1.0)])


def test_probe_and_enrol_embed_the_pauses_not_the_long_silences(recorded: tuple[object, Recording]) -> None:
    va, model = recorded
    signal = phrase(3, 0)
    va.probe(signal, sample_rate=RATE)  # type: ignore[attr-defined]
    heard = model.inputs[-1]
    assert contains(heard, np.concatenate([signal[int(2.6 * RATE) : int(2.7 * RATE)], silence(0.3)]))
    assert len(heard) < len(signal) - 3.0 * RATE
    analysis = analyse(Audio(signal, RATE))
    progress = va.enroll("cust-1", [signal], sample_rate=RATE, legacy_migration=True, consent=None)  # type: ignore[attr-defined]
    assert progress.speech_s == pytest.approx(analysis.report.speech_s, abs=0.01)  # net speech, not pauses
    assert np.array_equal(model.inputs[-1], analysis.trimmed.samples)


def test_live_call_embeds_segments_with_their_pauses(recorded: tuple[object, Recording]) -> None:
    va, model = recorded
    progress = va.enroll("cust-1", [phrase(3, s) for s in range(12)], sample_rate=RATE,  # type: ignore[attr-defined]
                         legacy_migration=True, consent=None)
    assert progress.complete
    before = len(model.inputs)
    call = va.start_call("cust-1", encoding="pcm16", sample_rate=RATE)  # type: ignore[attr-defined]
    audio = np.concatenate([phrase(3, 10 + s) for s in range(3)])
    for chunk in np.array_split((audio * 32767).astype(np.int16), 200):
        call.feed(chunk)
    call.close()
    result = call.result(wait=30.0)
    segments = model.inputs[before:]
    assert segments and result.speech_s > 0
    assert sum(len(s) for s in segments) / RATE > result.speech_s  # pauses heard, speech counted net
    assert sum(len(s) for s in segments) < len(audio) - 4.0 * RATE  # long silences cut
