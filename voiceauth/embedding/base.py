"""The Embedder protocol and the helpers every speaker model shares.

An embedder turns speech (float32 mono at 16 kHz) into L2-normalised vectors whose cosine
similarity is high for the same speaker. Long signals are embedded in windows of at most
``max_window_s`` seconds and the window embeddings averaged, so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from voiceauth.audio.decode import MODEL_RATE
from voiceauth.errors import AudioError

MIN_SAMPLES = MODEL_RATE // 4
"""Shortest input (0.25 s) the embedder accepts; shorter speech is padded by repetition."""


@runtime_checkable
class Embedder(Protocol):
    """Anything that maps a batch of 16 kHz signals to unit-length embeddings."""

    model_id: str
    dim: int

    def embed(self, signals: Sequence[np.ndarray]) -> np.ndarray:
        """Return an array of shape (len(signals), dim), float32, rows of unit length."""
        ...


def l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def checked_signal(signal: np.ndarray) -> np.ndarray:
    """``signal`` as float32, if it is non-empty, finite, 1-D audio; AudioError otherwise."""
    signal = np.asarray(signal, dtype=np.float32)
    if signal.ndim != 1 or not signal.size or not np.all(np.isfinite(signal)):
        raise AudioError("embedder input must be non-empty, finite 1-D float32 audio at 16 kHz")
    return signal


def windows(signal: np.ndarray, max_len: int) -> list[np.ndarray]:
    """Split ``signal`` into nearly equal windows of at most ``max_len`` samples."""
    if len(signal) < MIN_SAMPLES:
        reps = -(-MIN_SAMPLES // max(len(signal), 1))
        signal = np.tile(signal, reps)[:MIN_SAMPLES]
    count = -(-len(signal) // max_len)
    return [w for w in np.array_split(signal, count) if len(w)]



