"""G.711 mu-law and A-law (ITU-T G.711), encode and decode, vectorised."""

from __future__ import annotations

import numpy as np

# -- G.711 (ITU-T) ----------------------------------------------------------------------
# Both laws work on 16-bit linear PCM. A code is sign | 3-bit segment | 4-bit step; the
# segment is the position of the highest set bit of the (biased) magnitude. Negative
# samples use the one's complement magnitude (-x - 1), as in the ITU-T G.191 reference.

_ULAW_BIAS = 0x84  # 132: makes every segment start at a power of two
_ULAW_MAX = 32635  # largest magnitude that still fits after adding the bias


def _to_pcm16(x: np.ndarray) -> np.ndarray:
    """Float [-1, 1] to int32 holding 16-bit PCM values (rounded, saturated)."""
    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(np.rint(x * 32768.0), -32768, 32767).astype(np.int32)


def _top_bit(values: np.ndarray) -> np.ndarray:
    """Index of the highest set bit of positive integers (exact, via frexp)."""
    return np.frexp(values.astype(np.float64))[1].astype(np.int32) - 1


def _as_codes(data: np.ndarray | bytes | bytearray | memoryview) -> np.ndarray:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    return np.asarray(data).astype(np.uint8, copy=False)


def mulaw_encode(x: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] to G.711 mu-law codes (uint8); 0.0 encodes to 0xFF."""
    pcm = _to_pcm16(x)
    sign = np.where(pcm < 0, 0x80, 0x00)
    magnitude = np.minimum(np.where(pcm < 0, -pcm - 1, pcm), _ULAW_MAX) + _ULAW_BIAS  # in [132, 32767]
    segment = _top_bit(magnitude) - 7  # 0..7
    step = (magnitude >> (segment + 3)) & 0x0F
    return (~(sign | (segment << 4) | step) & 0xFF).astype(np.uint8)


def _mulaw_table() -> np.ndarray:
    code = ~np.arange(256, dtype=np.int32) & 0xFF
    segment = (code >> 4) & 0x07
    magnitude = ((((code & 0x0F) << 3) + _ULAW_BIAS) << segment) - _ULAW_BIAS
    return (np.where(code & 0x80, -magnitude, magnitude) / 32768.0).astype(np.float32)


def alaw_encode(x: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] to G.711 A-law codes (uint8); 0.0 encodes to 0xD5."""
    pcm = _to_pcm16(x) >> 3  # 13-bit
    positive = pcm >= 0
    magnitude = np.where(positive, pcm, -pcm - 1)  # 0..4095
    segment = np.clip(_top_bit(np.maximum(magnitude, 1)) - 4, 0, 7)
    step = (magnitude >> np.maximum(segment, 1)) & 0x0F
    code = np.where(positive, 0x80, 0x00) | (segment << 4) | step
    return (code ^ 0x55).astype(np.uint8)


def _alaw_table() -> np.ndarray:
    code = np.arange(256, dtype=np.int32) ^ 0x55
    segment = (code >> 4) & 0x07
    step = code & 0x0F
    magnitude = np.where(segment == 0, (step << 4) + 8, ((step << 4) + 0x108) << np.maximum(segment - 1, 0))
    return (np.where(code & 0x80, magnitude, -magnitude) / 32768.0).astype(np.float32)


def mulaw_decode(data: np.ndarray | bytes) -> np.ndarray:
    """G.711 mu-law codes (uint8 array or bytes) to float32 in [-1, 1]."""
    return _MULAW_TABLE[_as_codes(data)]


def alaw_decode(data: np.ndarray | bytes) -> np.ndarray:
    """G.711 A-law codes (uint8 array or bytes) to float32 in [-1, 1]."""
    return _ALAW_TABLE[_as_codes(data)]


_MULAW_TABLE = _mulaw_table()
_ALAW_TABLE = _alaw_table()



