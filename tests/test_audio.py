"""Audio in: G.711, raw bytes, files and arrays, and the simulated phone line."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from voiceauth.audio.channel import add_noise, crop, telephone_channel
from voiceauth.audio.decode import MODEL_RATE, Audio, Encoding, decode_bytes, load_audio, resample
from voiceauth.audio.g711 import alaw_decode, alaw_encode, mulaw_decode, mulaw_encode
from voiceauth.errors import AudioDecodeError, NoSpeechError, VoiceAuthError

Codec = Callable[[np.ndarray], np.ndarray]
PROPERTY = settings(max_examples=60, deadline=None)


def sine(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def snr_db(clean: np.ndarray, other: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(clean.astype(np.float64) ** 2) / np.sum((clean - other).astype(np.float64) ** 2)))


# -- G.711 --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "mulaw", "alaw"),
    [(0.0, 0xFF, 0xD5), (1.0, 0x80, 0xAA), (-1.0, 0x00, 0x2A)],
)
def test_g711_known_codes(value: float, mulaw: int, alaw: int) -> None:
    assert mulaw_encode(np.array([value]))[0] == mulaw
    assert alaw_encode(np.array([value]))[0] == alaw


def test_g711_decode_known_levels() -> None:
    assert mulaw_decode(bytes([0xFF]))[0] == 0.0
    assert mulaw_decode(bytes([0x80]))[0] == pytest.approx(32124 / 32768)
    assert alaw_decode(bytes([0xD5]))[0] == pytest.approx(8 / 32768)  # A-law has no zero level
    assert alaw_decode(bytes([0xAA]))[0] == pytest.approx(32256 / 32768)


@pytest.mark.parametrize(("encode", "decode"), [(mulaw_encode, mulaw_decode), (alaw_encode, alaw_decode)])
@pytest.mark.parametrize("amplitude", [0.9, 0.5, 0.05, 0.01])
def test_g711_sine_round_trip_snr(encode: Codec, decode: Codec, amplitude: float) -> None:
    x = sine(440, 1.0, 8000, amplitude)
    codes = encode(x)
    assert codes.dtype == np.uint8
    y = decode(codes)
    assert y.dtype == np.float32
    assert snr_db(x, y) > 30


@pytest.mark.parametrize(("encode", "decode"), [(mulaw_encode, mulaw_decode), (alaw_encode, alaw_decode)])
def test_g711_every_code_survives_decode_encode(encode: Codec, decode: Codec) -> None:
    codes = np.arange(256, dtype=np.uint8)
    again = encode(decode(codes))
    # mu-law has two zeros (0xFF and 0x7F); both decode to 0.0, which encodes to 0xFF
    expected = np.where(codes == 0x7F, 0xFF, codes) if encode is mulaw_encode else codes
    np.testing.assert_array_equal(again, expected)


def test_g711_decoders_take_bytes_or_arrays_and_are_monotonic() -> None:
    codes = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(mulaw_decode(codes.tobytes()), mulaw_decode(codes))
    ramp = np.linspace(-1, 1, 4001)
    for encode, decode in [(mulaw_encode, mulaw_decode), (alaw_encode, alaw_decode)]:
        assert np.all(np.diff(decode(encode(ramp))) >= 0)


# -- raw bytes ----------------------------------------------------------------------------


def test_decode_bytes_pcm16_and_float32() -> None:
    audio = decode_bytes(b"\x00\x80\xff\x7f\x00\x00", "pcm16", 8000)
    np.testing.assert_allclose(audio.samples, [-1.0, 32767 / 32768, 0.0])
    assert audio.sample_rate == 8000
    floats = np.array([0.25, -0.5], dtype="<f4").tobytes()
    np.testing.assert_allclose(decode_bytes(floats, Encoding.FLOAT32, 16000).samples, [0.25, -0.5])


def test_decode_bytes_g711_matches_codec() -> None:
    x = sine(300, 0.1, 8000)
    audio = decode_bytes(mulaw_encode(x).tobytes(), "MULAW", 8000)
    assert audio.duration_s == pytest.approx(0.1)
    assert snr_db(x, audio.samples) > 30
    assert snr_db(x, decode_bytes(alaw_encode(x).tobytes(), Encoding.ALAW, 8000).samples) > 30


def test_decode_bytes_errors() -> None:
    with pytest.raises(AudioDecodeError, match="odd byte count for pcm16"):
        decode_bytes(b"\x00\x00\x00", "pcm16", 8000)
    with pytest.raises(AudioDecodeError, match="multiple of 4"):
        decode_bytes(b"\x00" * 6, "float32", 8000)
    with pytest.raises(AudioDecodeError, match="mulaw, alaw, float32|pcm16, mulaw"):
        decode_bytes(b"\x00", "gsm", 8000)
    with pytest.raises(AudioDecodeError, match="8000 or 16000"):
        decode_bytes(b"\x00", "mulaw", 44100)
    with pytest.raises(AudioDecodeError, match="NaN"):
        decode_bytes(np.array([np.nan], dtype="<f4").tobytes(), "float32", 8000)


def test_encoding_parse() -> None:
    assert Encoding.parse(" ALaw ") is Encoding.ALAW
    assert Encoding.parse(Encoding.PCM16) is Encoding.PCM16
    with pytest.raises(AudioDecodeError, match="use one of: pcm16, mulaw, alaw, float32"):
        Encoding.parse("ulaw16")


@PROPERTY
@given(
    data=st.binary(max_size=600),
    encoding=st.one_of(st.sampled_from([*Encoding, "pcm16", "MULAW", "alaw", "float32"]), st.text(max_size=8)),
    rate=st.one_of(st.sampled_from([8000, 16000]), st.integers(-10, 200_000)),
)
def test_decode_bytes_returns_audio_or_decode_error(data: bytes, encoding: object, rate: int) -> None:
    try:
        audio = decode_bytes(data, encoding, rate)  # type: ignore[arg-type]
    except AudioDecodeError:
        return
    assert audio.sample_rate in (8000, 16000)
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    assert len(audio.samples) == len(data) // Encoding.parse(encoding).sample_width  # type: ignore[arg-type]
    assert np.all(np.abs(audio.samples) <= 1.0)


# -- files --------------------------------------------------------------------------------


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    sf.write(path, samples, rate, subtype="PCM_16")
    return path


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AudioDecodeError, match="file not found: .*nope.wav; check the path"):
        load_audio(tmp_path / "nope.wav")


def test_load_text_file_named_wav(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("customer said hello\n" * 20)
    with pytest.raises(AudioDecodeError, match=r"notes\.wav.*WAV, FLAC, OGG"):
        load_audio(path)


def test_load_truncated_wav(tmp_path: Path) -> None:
    whole = write_wav(tmp_path / "whole.wav", sine(200, 1.0, 8000), 8000).read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole[:30])  # inside the header: no data chunk
    with pytest.raises(AudioDecodeError, match=r"cut\.wav"):
        load_audio(cut)


def test_load_truncated_flac(tmp_path: Path) -> None:
    path = tmp_path / "a.flac"
    sf.write(path, sine(200, 1.0, 16000), 16000)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(AudioDecodeError, match=r"a\.flac"):
        load_audio(path)


def test_load_zero_length_wav(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(NoSpeechError, match="zero-length"):
        load_audio(path)


def test_load_wav_resamples_8k_to_16k_keeping_duration(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "call.wav", sine(440, 2.5, 8000), 8000)
    audio = load_audio(str(path))
    assert audio.sample_rate == MODEL_RATE
    assert audio.duration_s == pytest.approx(2.5)
    assert not audio.truncated
    assert audio.samples.dtype == np.float32
    # still a 440 Hz tone after resampling
    spectrum = np.abs(np.fft.rfft(audio.samples))
    assert np.fft.rfftfreq(len(audio.samples), 1 / MODEL_RATE)[spectrum.argmax()] == pytest.approx(440, abs=1)


def test_stereo_channel_selection(tmp_path: Path) -> None:
    left, right = sine(300, 1.0, 8000, 0.5), sine(1000, 1.0, 8000, 0.25)
    path = tmp_path / "call.wav"
    sf.write(path, np.stack([left, right], axis=1), 8000, subtype="FLOAT")
    agent = load_audio(path, channel=0, target_rate=8000).samples
    customer = load_audio(path, channel=1, target_rate=8000).samples
    mixed = load_audio(path, target_rate=8000).samples
    np.testing.assert_allclose(agent, left, atol=1e-6)
    np.testing.assert_allclose(customer, right, atol=1e-6)
    np.testing.assert_allclose(mixed, (left + right) / 2, atol=1e-6)
    with pytest.raises(AudioDecodeError, match="channel=2 does not exist"):
        load_audio(path, channel=2)


@pytest.fixture(scope="module")
def hour_long_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One hour of 8 kHz PCM16, written a minute at a time."""
    path = tmp_path_factory.mktemp("long") / "hour.wav"
    rng = np.random.default_rng(0)
    minute = (0.1 * rng.standard_normal(60 * 8000)).astype(np.float32)
    with sf.SoundFile(path, "w", samplerate=8000, channels=1, subtype="PCM_16") as fh:
        for _ in range(60):
            fh.write(minute)
    return path


def test_hour_long_file_is_cut_without_reading_it_all(hour_long_wav: Path) -> None:
    tracemalloc.start()
    try:
        audio = load_audio(hour_long_wav, max_seconds=60)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert audio.truncated
    assert audio.duration_s == pytest.approx(60.0)
    assert audio.sample_rate == MODEL_RATE
    assert peak < 50 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def test_flac_from_corpus(librispeech: Path) -> None:
    path = sorted((librispeech / "test-other").glob("*/*.flac"))[0]
    audio = load_audio(path)
    assert audio.sample_rate == MODEL_RATE
    assert audio.duration_s == pytest.approx(sf.info(str(path)).duration, abs=1e-3)
    assert 0.001 < float(np.sqrt(np.mean(audio.samples**2))) < 0.5


# -- arrays and Audio ---------------------------------------------------------------------


def test_int16_array_is_scaled() -> None:
    audio = load_audio(np.array([16384, -32768, 0], dtype=np.int16), sample_rate=16000)
    np.testing.assert_allclose(audio.samples, [0.5, -1.0, 0.0])


def test_array_errors() -> None:
    with pytest.raises(AudioDecodeError, match="NaN or infinite"):
        load_audio(np.array([0.1, np.nan, 0.2], dtype=np.float32), sample_rate=16000)
    with pytest.raises(AudioDecodeError, match="sample_rate="):
        load_audio(np.zeros(100, dtype=np.float32))
    with pytest.raises(AudioDecodeError, match="dtype"):
        load_audio(np.array(["a", "b"]), sample_rate=16000)
    with pytest.raises(NoSpeechError):
        load_audio(np.zeros((0, 2), dtype=np.float32), sample_rate=16000)


def test_array_longer_than_max_seconds_is_truncated() -> None:
    audio = load_audio(np.zeros(8000 * 5, dtype=np.float32), sample_rate=8000, max_seconds=2.0)
    assert audio.truncated and audio.duration_s == pytest.approx(2.0)


def test_audio_source_is_resampled_and_keeps_truncated_flag() -> None:
    audio = load_audio(Audio(sine(200, 1.0, 8000), 8000, truncated=True))
    assert audio.sample_rate == MODEL_RATE and audio.duration_s == pytest.approx(1.0) and audio.truncated


def test_resample() -> None:
    x = sine(100, 1.0, 16000)
    np.testing.assert_array_equal(resample(x, 16000, 16000), x)
    assert len(resample(x, 16000, 8000)) == 8000
    assert len(resample(sine(100, 1.0, 44100), 44100, 16000)) == 16000
    assert resample(x.astype(np.float64), 16000, 8000).dtype == np.float32


@PROPERTY
@given(  # default float elements include NaN, inf and the extremes of the dtype
    array=hnp.arrays(
        dtype=st.sampled_from([np.float32, np.float64, np.int16]),
        shape=st.one_of(hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=400), st.just((0,))),
    ),
    rate=st.sampled_from([8000, 16000, 11025, 44100, 0, 7, None]),
    channel=st.sampled_from([None, 0, 1, 5]),
)
def test_load_audio_on_random_arrays(array: np.ndarray, rate: int | None, channel: int | None) -> None:
    try:
        audio = load_audio(array, sample_rate=rate, channel=channel)
    except VoiceAuthError:
        return
    assert audio.sample_rate == MODEL_RATE
    assert audio.samples.ndim == 1 and audio.samples.dtype == np.float32 and len(audio.samples) > 0
    assert np.all(np.isfinite(audio.samples)) and np.all(np.abs(audio.samples) <= 1.0)


# -- simulated channels -------------------------------------------------------------------


def test_telephone_channel_band_limits_to_8k() -> None:
    def through_line(freq: float) -> float:
        out = telephone_channel(Audio(sine(freq, 1.0, 16000, 0.3), 16000))
        assert out.sample_rate == 8000 and out.duration_s == pytest.approx(1.0)
        return float(np.sqrt(np.mean(out.samples[2000:] ** 2)))

    passband = through_line(1000)
    assert passband == pytest.approx(0.3 / np.sqrt(2), rel=0.1)
    assert through_line(80) < passband / 10


def test_add_noise_hits_the_snr_and_is_seeded() -> None:
    clean = Audio(sine(300, 2.0, 8000, 0.3), 8000)
    noisy = add_noise(clean, snr_db=10.0, seed=3)
    assert snr_db(clean.samples, noisy.samples) == pytest.approx(10.0, abs=0.3)
    np.testing.assert_array_equal(noisy.samples, add_noise(clean, 10.0, seed=3).samples)
    assert not np.array_equal(noisy.samples, add_noise(clean, 10.0, seed=4).samples)


def test_crop() -> None:
    audio = Audio(np.zeros(16000, dtype=np.float32), 16000)
    assert crop(audio, 0.25).duration_s == pytest.approx(0.25)
    assert crop(audio, 5.0).duration_s == pytest.approx(1.0)
