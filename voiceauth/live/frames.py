"""IVR frames: validation and decoding (cheap: ``feed()`` runs on the IVR thread)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from voiceauth.audio.decode import SUPPORTED_RATES, Audio, Encoding
from voiceauth.audio.g711 import alaw_decode, mulaw_decode
from voiceauth.errors import AudioDecodeError, SessionError
from voiceauth.live.state import Chunk

Queued = tuple[bytes | np.ndarray, int, float]
"""One frame in a call's inbox: (payload, sample count, ``time.monotonic()`` when fed)."""
BATCH_S = 0.2
"""Audio a front end decodes and gates in one pass when frames have queued up: a pass costs about
as much for one 20 ms frame as for ten (73 vs 15 us a frame), and a busy service gets the gain."""

DTYPES = {
    Encoding.PCM16: np.dtype(np.int16),
    Encoding.MULAW: np.dtype(np.uint8),
    Encoding.ALAW: np.dtype(np.uint8),
    Encoding.FLOAT32: np.dtype(np.float32),
}


def check_rate(sample_rate: int) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or (
        sample_rate not in SUPPORTED_RATES
    ):
        raise SessionError(f"unsupported sample rate {sample_rate!r} for a live call; use 8000 or 16000 Hz")
    return int(sample_rate)


def parse_encoding(encoding: Encoding | str) -> Encoding:
    try:
        return Encoding.parse(encoding)
    except AudioDecodeError as exc:
        raise SessionError(str(exc)) from exc



def decode_chunk(payload: bytes | np.ndarray, encoding: Encoding) -> np.ndarray:
    """A validated chunk to float32 samples in [-1, 1]."""
    if isinstance(payload, bytes):
        if encoding is Encoding.MULAW:
            return mulaw_decode(payload)
        if encoding is Encoding.ALAW:
            return alaw_decode(payload)
        dtype = "<i2" if encoding is Encoding.PCM16 else "<f4"
        payload = np.frombuffer(payload, dtype=dtype)
    if payload.dtype == np.uint8:
        return mulaw_decode(payload) if encoding is Encoding.MULAW else alaw_decode(payload)
    if payload.dtype.kind == "i":
        return payload.astype(np.float32) / np.float32(32768.0)
    samples = payload.astype(np.float32, copy=False)
    if not np.isfinite(samples).all():
        raise AudioDecodeError("float32 frame contains NaN or infinite samples; check the IVR's audio path")
    return np.clip(samples, -1.0, 1.0)


@dataclass(frozen=True)
class FrameFormat:
    """What a call's frames must look like."""

    encoding: Encoding
    sample_rate: int
    max_chunk_s: float

    @property
    def width(self) -> int:
        return self.encoding.sample_width

    @property
    def dtype(self) -> np.dtype:
        return DTYPES[self.encoding]

    @property
    def max_samples(self) -> int:
        return int(self.max_chunk_s * self.sample_rate)


def validate_chunk(chunk: Chunk, fmt: FrameFormat, call_id: str) -> tuple[bytes | np.ndarray, int]:
    """One IVR frame checked against the call's format: (payload to decode later, sample count)."""
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        data = bytes(chunk)
        if len(data) % fmt.width:
            raise SessionError(
                f"{len(data)} bytes is not a whole number of {fmt.encoding.value} samples "
                f"({fmt.width} bytes each); check the declared encoding and that frames are not cut mid-sample"
            )
        payload: bytes | np.ndarray = data
        count = len(data) // fmt.width
    elif isinstance(chunk, Audio):
        if chunk.sample_rate != fmt.sample_rate:
            raise SessionError(
                f"Audio at {chunk.sample_rate} Hz fed to call {call_id} opened at {fmt.sample_rate} Hz; "
                "resample it or open the call with the right sample_rate"
            )
        payload = np.array(chunk.samples, dtype=np.float32)
        count = len(payload)
    elif isinstance(chunk, np.ndarray):
        if chunk.ndim != 1 or chunk.dtype != fmt.dtype:
            raise SessionError(
                f"call {call_id} takes 1-D {fmt.dtype} frames for {fmt.encoding.value} "
                f"(got {chunk.ndim}-D {chunk.dtype}); convert the frame or open the call with the right encoding"
            )
        payload = chunk.copy()
        count = len(chunk)
    else:
        raise SessionError(
            f"feed() takes bytes or a numpy array, got {type(chunk).__name__}; pass the raw IVR frame"
        )
    if count > fmt.max_samples:
        raise SessionError(
            f"frame of {count} samples is longer than {fmt.max_chunk_s:g} s; "
            "feed the audio in IVR-sized frames (e.g. 20 ms)"
        )
    return payload, count


def take_batch(inbox: deque[Queued], max_samples: int) -> list[Queued]:
    """The oldest queued frames, until they hold ``max_samples`` (at least one frame; none when the
    inbox is empty). The IVR thread may drop the oldest meanwhile (``CallSession._make_room``)."""
    batch: list[Queued] = []
    held = 0
    while held < max_samples:
        try:
            item = inbox.popleft()
        except IndexError:
            break
        batch.append(item)
        held += item[1]
    return batch


def decode_batch(batch: list[Queued], encoding: Encoding) -> np.ndarray:
    """The frames of ``batch`` decoded (:func:`decode_chunk`) and joined, in order."""
    chunks = [decode_chunk(payload, encoding) for payload, _, _ in batch]
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
