"""benchmarks/engine.py condition builders: rates, lengths, exact zeros, crops, deterministic trial pool."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from bench_modules import benchmark_module

from voiceauth.audio.decode import MODEL_RATE, Audio, load_audio
from voiceauth.speech.activity import FRAME_S, analyse, frame_length, speech_mask

pytestmark = pytest.mark.integration  # real model, processes or external tools


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return benchmark_module("engine")


@pytest.fixture(scope="module")
def clip(speakers: dict[str, list[Path]]) -> Audio:
    return load_audio(next(iter(speakers.values()))[0])


@pytest.mark.parametrize("channel", ["clean", "mulaw", "alaw", "noise"])
def test_channels_keep_rate_and_length(bench: ModuleType, clip: Audio, channel: str) -> None:
    out = bench.apply_channel(clip, channel, seed=3)
    assert out.sample_rate == MODEL_RATE and out.samples.dtype == np.float32
    assert len(out.samples) == len(clip.samples)
    assert np.all(np.abs(out.samples) <= 1.0)
    if channel != "clean":
        assert not np.array_equal(out.samples, clip.samples)


def test_g711_is_band_limited_and_laws_differ(bench: ModuleType, clip: Audio) -> None:
    mu, a = bench.g711(clip, "mulaw"), bench.g711(clip, "alaw")
    assert not np.array_equal(mu.samples, a.samples)
    spectrum = np.abs(np.fft.rfft(mu.samples))
    freqs = np.fft.rfftfreq(len(mu.samples), 1 / MODEL_RATE)
    assert spectrum[freqs > 4200].sum() < 0.01 * spectrum[(freqs > 300) & (freqs < 3400)].sum()


def test_noise_is_seeded(bench: ModuleType, clip: Audio) -> None:
    one, two = bench.apply_channel(clip, "noise", 5), bench.apply_channel(clip, "noise", 5)
    assert np.array_equal(one.samples, two.samples)
    assert not np.array_equal(one.samples, bench.apply_channel(clip, "noise", 6).samples)


def test_dtx_zeros_exactly_the_pauses(bench: ModuleType, clip: Audio) -> None:
    out = bench.digital_silence(clip)
    n = frame_length(clip.sample_rate)
    mask = speech_mask(clip.samples, clip.sample_rate)
    frames = out.samples[: len(mask) * n].reshape(len(mask), n)
    assert len(out.samples) == len(clip.samples)
    assert 0 < (~mask).sum() < len(mask)
    assert np.all(frames[~mask] == 0.0)
    assert np.array_equal(frames[mask], clip.samples[: len(mask) * n].reshape(len(mask), n)[mask])
    assert np.all(out.samples[len(mask) * n :] == 0.0)
    assert analyse(out).report.speech_s > 0


@pytest.mark.parametrize("channel", ["amr", "gsm"])
def test_mobile_codecs(bench: ModuleType, clip: Audio, channel: str) -> None:
    if not bench.sox_codec_available(channel):
        pytest.skip(f"SoX cannot encode {channel} here")
    out = bench.apply_channel(clip, channel)
    assert out.sample_rate == MODEL_RATE
    assert abs(len(out.samples) - len(clip.samples)) <= 0.03 * MODEL_RATE  # codec frames of 20 ms
    assert np.corrcoef(out.samples[: len(clip.samples)][:16000], clip.samples[:16000])[0, 1] ** 2 < 0.999
    assert float(np.std(out.samples)) > 0.1 * float(np.std(clip.samples))


def test_parse_condition(bench: ModuleType) -> None:
    assert bench.parse_condition("mulaw-3s") == ("mulaw", 3.0)
    assert bench.parse_condition("clean-full") == ("clean", None)
    assert bench.parse_condition("meet-mulaw-3s") == ("mulaw", 3.0)  # the corpus prefix is not the channel
    assert bench.PHONE_3S in bench.CONDITIONS
    for name in bench.CONDITIONS:
        channel, _ = bench.parse_condition(name)
        assert channel in ("clean", "mulaw", "alaw", "dtx", "noise", *bench.SOX_CODECS)


def test_pool_is_deterministic_and_disjoint(bench: ModuleType, librispeech: Path) -> None:
    one, two = bench.pool(10), bench.pool(10)
    assert one == two and len(one.impostors) == 10
    assert one != bench.pool(10, seed=bench.SEED + 1)
    for speaker, files in one.enrol.items():
        assert len(files) == bench.ENROL_FILES and not set(files) & set(one.tests[speaker])
    assert not {p.name.split("-")[0] for p in one.impostors} & set(one.enrol)


def test_folds_enrol_on_every_file_once_and_never_test_on_it(bench: ModuleType, librispeech: Path) -> None:
    folds = bench.folds(10)
    assert len(folds) == bench.FOLDS and all(f.impostors == folds[0].impostors for f in folds)
    for speaker in folds[0].enrol:
        enrolled = [p for f in folds for p in f.enrol[speaker]]
        assert len(enrolled) == len(set(enrolled)) == bench.FOLDS * bench.ENROL_FILES  # each file once
        for f in folds:
            assert not set(f.enrol[speaker]) & set(f.tests[speaker])
            assert set(f.enrol[speaker]) | set(f.tests[speaker]) == set(enrolled)


@pytest.mark.parametrize("seconds", [1.0, 2.0, 3.0])
def test_crops_hold_that_much_net_speech(bench: ModuleType, clip: Audio, seconds: float) -> None:
    for channel in ("clean", "mulaw"):
        audio = bench.apply_channel(clip, channel)
        cut = bench.crop_to_speech(audio, seconds)
        mask = speech_mask(audio.samples, audio.sample_rate)
        kept = len(cut.samples) // frame_length(audio.sample_rate)
        assert len(cut.samples) < len(audio.samples)
        assert mask[:kept].sum() * FRAME_S == pytest.approx(seconds)


def test_meeting_pool_is_cross_session(bench: ModuleType) -> None:
    from voiceauth.tools.samples import meeting_speech

    meeting_speech()  # fetched from the package index and extracted once, whatever ran before (was a skip in CI)
    split = bench.meeting_pool()
    assert len(split.enrol) >= 5 and sum(map(len, split.tests.values())) >= 30
    for speaker, files in split.enrol.items():
        meetings = {p.parent.parent.name for p in files}
        assert len(meetings) == 1 and files  # enrolled in one meeting...
        assert not meetings & {p.parent.parent.name for p in split.tests[speaker]}  # ...tested in the others


def test_systems_hear_the_front_end_not_the_spliced_speech(bench: ModuleType, clip: Audio) -> None:
    """``ecapa`` / ``campplus`` embed ``analyse().trimmed``: longer than the spliced speech frames."""
    analysis = analyse(clip)
    assert len(analysis.speech.samples) < len(analysis.trimmed.samples) <= len(clip.samples)
    assert bench.DEFAULT_SYSTEM in bench.SYSTEMS and "fusion" in bench.SYSTEMS


def test_as_norm_leaves_out_the_cohort_rows_of_impostor_speakers(bench: ModuleType, librispeech: Path) -> None:
    """The public cohort and the benchmark's impostors are both drawn from train-clean: an impostor
    scored against a cohort holding their own speech would be normalised with their own score."""
    from types import SimpleNamespace

    from voiceauth.scoring.normalisation import COHORT_TOP_N, symmetric_z, top_stats
    from voiceauth.services.cohort import public_cohort

    split = bench.pool(30)
    model_id = "speechbrain/spkrec-ecapa-voxceleb@0575cb64"
    engines = SimpleNamespace(onnx={"ecapa": SimpleNamespace(model_id=model_id)})
    speakers = bench.cohort_speakers("ecapa")
    cohort = public_cohort(model_id, "phone")
    assert cohort is not None and len(speakers) == len(cohort) == len(public_cohort(model_id, "clean"))
    drawn = {p.name.split("-")[0] for p in split.impostors}
    shared = [i for i, s in enumerate(speakers) if s in drawn]
    assert shared  # the draw meets the cohort, so leaving rows out matters
    impostor = next(p for p in split.impostors if p.name.split("-")[0] == speakers[shared[0]])
    probe = cohort[shared[0]]  # the impostor's embedding as the cohort holds it
    voiceprint = {"s1": cohort[0] if 0 not in shared else cohort[-1]}
    raw = np.array([float(voiceprint["s1"] @ probe)])
    got = bench.as_normed(engines, "ecapa", "mulaw", split, voiceprint, {impostor: {"ecapa": probe}},
                          [("s1", impostor)], raw)
    rest = np.delete(cohort, shared, axis=0)
    expected = symmetric_z(raw, top_stats(rest @ voiceprint["s1"][:, None], COHORT_TOP_N),
                           top_stats(rest @ probe[:, None], COHORT_TOP_N))
    with_own = symmetric_z(raw, top_stats(cohort @ voiceprint["s1"][:, None], COHORT_TOP_N),
                           top_stats(cohort @ probe[:, None], COHORT_TOP_N))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert not np.allclose(got, with_own)
