"""Audio in: files, arrays, G.711 and PCM bytes; mono float32 at the model rate out.

Nothing here writes audio anywhere. Files are read in blocks and cut at
``max_seconds`` (and at ``MAX_DECODED_SAMPLES``), so an hour-long recording never sits in
memory whole; their header's rate must be 8-48 kHz before a sample is decoded."""

from __future__ import annotations

import enum
import math
import os
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from voiceauth.audio.g711 import alaw_decode, mulaw_decode
from voiceauth.errors import AudioDecodeError, NoSpeechError

MODEL_RATE = 16000
"""Sample rate the speaker model expects."""
SUPPORTED_RATES = (8000, 16000)
"""Rates accepted for raw (headerless) telephony bytes."""
READ_BLOCK_FRAMES = 1 << 16
"""Frames read from a file at a time."""
MAX_RESAMPLE_FACTOR = 1000
MAX_CHANNELS = 64
MIN_RATE = 8000
MAX_RATE = 48000
"""Sample rates accepted for files, arrays and ``Audio`` (telephony to studio speech).
Outside them a header is wrong or hostile (a 2**31 Hz header would dodge the length cap)."""
MAX_DECODED_SAMPLES = 600 * MAX_RATE * 2
"""Most samples (frames x channels) read from one file, whatever ``max_seconds`` says: 10
minutes of 48 kHz stereo. Reading stops there (``truncated``), so a small compressed file
cannot expand to gigabytes."""
FILE_FORMATS = "WAV, FLAC, OGG/Vorbis"


class Encoding(str, enum.Enum):
    """Raw telephony sample encodings (little-endian, no header)."""

    PCM16 = "pcm16"
    MULAW = "mulaw"
    ALAW = "alaw"
    FLOAT32 = "float32"

    @classmethod
    def parse(cls, value: str | Encoding) -> Encoding:
        """``"MULAW"``, ``"mulaw"`` or ``Encoding.MULAW`` to ``Encoding.MULAW``."""
        if isinstance(value, Encoding):
            return value
        if isinstance(value, str):
            try:
                return cls(value.strip().lower())
            except ValueError:
                pass
        names = ", ".join(e.value for e in cls)
        raise AudioDecodeError(f"unknown audio encoding {value!r}; use one of: {names}")

    @property
    def sample_width(self) -> int:
        """Bytes per sample."""
        return _WIDTHS[self]


_WIDTHS = {Encoding.PCM16: 2, Encoding.MULAW: 1, Encoding.ALAW: 1, Encoding.FLOAT32: 4}


@dataclass(frozen=True)
class Audio:
    """Mono float32 samples in [-1, 1] at ``sample_rate``."""

    samples: np.ndarray
    sample_rate: int
    truncated: bool = False
    """True when the source was longer than ``max_seconds`` and was cut."""

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate if self.sample_rate > 0 else 0.0



# -- decoding ---------------------------------------------------------------------------


def check_rate(sample_rate: object, name: str) -> int:
    """``sample_rate`` as an int, when it is an integer within MIN_RATE..MAX_RATE Hz."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
        raise AudioDecodeError(f"sample rate of {name} must be an integer number of Hz, got {sample_rate!r}")
    if not MIN_RATE <= sample_rate <= MAX_RATE:
        raise AudioDecodeError(
            f"{name} has sample rate {sample_rate} Hz; accepted rates are {MIN_RATE}-{MAX_RATE} Hz: "
            "resample the recording (e.g. to 16000 Hz) or pass its real rate"
        )
    return int(sample_rate)


def _check_finite(samples: np.ndarray, name: str) -> None:
    if not np.isfinite(samples).all():
        raise AudioDecodeError(
            f"{name} contains NaN or infinite samples; check the decoder or DSP step that produced it"
        )


def decode_bytes(data: bytes, encoding: Encoding | str, sample_rate: int) -> Audio:
    """Raw telephony bytes (no header, little-endian) to an ``Audio`` at ``sample_rate``.

    No resampling. float32 samples are clipped to [-1, 1]; empty ``data`` gives empty audio.

    Raises:
        AudioDecodeError: unknown encoding, unsupported rate, a byte count that is not
            a whole number of samples, or NaN/inf float32 samples.
    """
    enc = Encoding.parse(encoding)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise AudioDecodeError(
            f"raw {enc.value} audio must be bytes, got {type(data).__name__}; pass the payload bytes"
        )
    if (
        isinstance(sample_rate, bool)
        or not isinstance(sample_rate, (int, np.integer))
        or sample_rate not in SUPPORTED_RATES
    ):
        rates = " or ".join(str(r) for r in SUPPORTED_RATES)
        raise AudioDecodeError(f"unsupported sample rate {sample_rate!r} for raw {enc.value} audio; use {rates} Hz")
    width = enc.sample_width
    if len(data) % width:
        what = (
            "odd byte count for pcm16"
            if enc is Encoding.PCM16
            else f"byte count not a multiple of {width} for {enc.value}"
        )
        raise AudioDecodeError(
            f"{what} ({len(data)} bytes); check the declared encoding and that frames are not cut mid-sample"
        )
    if enc is Encoding.MULAW:
        samples = mulaw_decode(data)
    elif enc is Encoding.ALAW:
        samples = alaw_decode(data)
    elif enc is Encoding.PCM16:
        samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / np.float32(32768.0)
    else:
        samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
        _check_finite(samples, "float32 audio")
        samples = np.clip(samples, -1.0, 1.0)
    return Audio(samples, int(sample_rate))


def _poly_factors(from_rate: int, to_rate: int) -> tuple[int, int]:
    """Up/down factors for ``resample_poly``; odd rate pairs (huge factors, huge filters)
    get a close rational approximation instead (well under 0.1 % off)."""
    g = math.gcd(from_rate, to_rate)
    up, down = to_rate // g, from_rate // g
    if max(up, down) <= MAX_RESAMPLE_FACTOR:
        return up, down
    ratio = Fraction(to_rate, from_rate)
    approx = ratio.limit_denominator(max(1, int(MAX_RESAMPLE_FACTOR / max(1.0, float(ratio)))))
    return max(1, approx.numerator), approx.denominator


def resample(x: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling (scipy ``resample_poly``) to float32; identity when rates match."""
    x = np.asarray(x, dtype=np.float32)
    if from_rate == to_rate or len(x) == 0:
        return x
    from scipy.signal import resample_poly

    up, down = _poly_factors(int(from_rate), int(to_rate))
    return resample_poly(x, up, down).astype(np.float32, copy=False)


def _pick_channel(frames: np.ndarray, channel: int | None, name: str) -> np.ndarray:
    """(frames,) or (frames, channels) to mono: one channel, or the average of all."""
    if frames.ndim == 1:
        frames = frames[:, None]
    elif frames.ndim != 2:
        raise AudioDecodeError(f"{name} has shape {frames.shape}; pass 1-D mono or 2-D (frames, channels)")
    channels = frames.shape[1]
    if not 0 < channels <= MAX_CHANNELS:
        raise AudioDecodeError(
            f"{name} has shape {frames.shape}, i.e. {channels} channels; pass (frames, channels) "
            f"with 1..{MAX_CHANNELS} channels (transpose a (channels, frames) array with .T)"
        )
    if channel is None:
        return frames[:, 0] if channels == 1 else frames.mean(axis=1, dtype=np.float64).astype(np.float32)
    if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)) or not 0 <= channel < channels:
        raise AudioDecodeError(
            f"{name} has {channels} channel(s), so channel={channel!r} does not exist; "
            f"use 0..{channels - 1}, or channel=None to mix down"
        )
    return frames[:, channel]


def _frame_limit(max_seconds: float, rate: int) -> int:
    """Frames in ``max_seconds`` at ``rate``; ``inf`` means no limit."""
    return sys.maxsize if math.isinf(max_seconds) else int(max_seconds * rate)


def _read_file(path: Path, channel: int | None, max_seconds: float) -> tuple[np.ndarray, int, bool]:
    """Read at most ``max_seconds`` of one channel (or the mix) in blocks."""
    import soundfile as sf

    if not path.exists():
        raise AudioDecodeError(f"file not found: {path}; check the path")
    if not path.is_file():
        raise AudioDecodeError(f"{path} is not a regular file; pass the path of a {FILE_FORMATS} file")
    unreadable = (
        f"cannot read {path} as audio; supported formats are {FILE_FORMATS} "
        "(for raw telephony bytes use decode_bytes with an encoding). Check the file is complete and not corrupt"
    )
    try:
        with sf.SoundFile(path) as fh:
            rate = check_rate(int(fh.samplerate), str(path))
            if not 0 < fh.channels <= MAX_CHANNELS:
                raise AudioDecodeError(
                    f"{path} has {fh.channels} channels; voiceauth reads files with 1..{MAX_CHANNELS} channels"
                )
            limit = min(_frame_limit(max_seconds, rate), MAX_DECODED_SAMPLES // fh.channels)
            blocks: list[np.ndarray] = []
            taken = 0
            while taken < limit:
                block = fh.read(min(READ_BLOCK_FRAMES, limit - taken), dtype="float32", always_2d=True)
                if len(block) == 0:
                    break
                mono = _pick_channel(block, channel, str(path))
                _check_finite(mono, str(path))
                blocks.append(np.array(mono, dtype=np.float32))
                taken += len(block)
            truncated = taken >= limit and len(fh.read(1, dtype="float32", always_2d=True)) > 0
    except AudioDecodeError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as exc:
        raise AudioDecodeError(f"{unreadable} ({exc})") from exc
    samples = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
    return samples, rate, truncated


def _array_samples(arr: np.ndarray, sample_rate: int | None, channel: int | None) -> tuple[np.ndarray, int]:
    if sample_rate is None:
        raise AudioDecodeError("a numpy array needs sample_rate=; pass the rate the audio was recorded at")
    rate = check_rate(sample_rate, "audio array")
    if arr.dtype == np.int16:
        scaled = arr.astype(np.float32) / np.float32(32768.0)
    elif np.issubdtype(arr.dtype, np.floating):
        with np.errstate(over="ignore"):
            scaled = arr.astype(np.float32)
        _check_finite(scaled, "audio array")
    else:
        raise AudioDecodeError(f"unsupported array dtype {arr.dtype}; pass float samples in [-1, 1] or int16 PCM")
    return _pick_channel(scaled, channel, "audio array"), rate


def load_audio(
    source: str | os.PathLike[str] | np.ndarray | Audio,
    *,
    sample_rate: int | None = None,
    channel: int | None = None,
    target_rate: int = MODEL_RATE,
    max_seconds: float = 600.0,
) -> Audio:
    """Decode a file, array or ``Audio`` to mono float32 in [-1, 1] at ``target_rate``.

    Args:
        source: a WAV/FLAC/OGG path; a numpy array (``sample_rate`` required, int16 is
            scaled by 1/32768, floats are taken as is and clipped to [-1, 1], 2-D arrays
            are (frames, channels)); or an ``Audio`` (resampled if needed).
        channel: the channel that holds the customer; None averages all channels.
        max_seconds: audio beyond this is dropped and ``truncated`` is set (a file is also
            cut at ``MAX_DECODED_SAMPLES`` decoded samples, whatever ``max_seconds`` says).

    Raises:
        AudioDecodeError: missing, unreadable or truncated file, a rate outside
            ``MIN_RATE``..``MAX_RATE`` Hz, bad channel, NaN/inf samples.
        NoSpeechError: zero-length audio.
    """
    if isinstance(target_rate, bool) or not isinstance(target_rate, (int, np.integer)) or target_rate <= 0:
        raise AudioDecodeError(f"target_rate must be a positive integer, got {target_rate!r}")
    if not max_seconds > 0:
        raise AudioDecodeError(f"max_seconds must be positive, got {max_seconds!r}")
    if isinstance(source, Audio):
        name = "audio"
        rate, truncated = check_rate(source.sample_rate, name), source.truncated
        samples = _pick_channel(np.asarray(source.samples, dtype=np.float32), channel, name)
        _check_finite(samples, name)
    elif isinstance(source, np.ndarray):
        name = "audio array"
        samples, rate = _array_samples(source, sample_rate, channel)
        truncated = False
    elif isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        samples, rate, truncated = _read_file(Path(name), channel, max_seconds)
    else:
        raise AudioDecodeError(
            f"unsupported audio source {type(source).__name__}; pass a file path, a numpy array or an Audio"
        )
    limit = _frame_limit(max_seconds, rate)
    if len(samples) > limit:
        samples, truncated = samples[:limit], True
    if len(samples) == 0:
        raise NoSpeechError(f"{name} has no samples (zero-length audio); check the recording and the channel")
    samples = resample(np.clip(samples, -1.0, 1.0), rate, int(target_rate))
    return Audio(np.clip(samples, -1.0, 1.0), int(target_rate), truncated)





