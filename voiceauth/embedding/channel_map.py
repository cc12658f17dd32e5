"""Channel compensation for a speaker model: project out the directions in which one speaker's
embeddings move when only the channel changes.

A codec (G.711, AMR-NB, GSM), background noise or a shorter stretch of speech moves a speaker's
embedding, and it moves it in much the same few directions whoever is speaking. Given embeddings
of many speakers, each heard through several channels and lengths, the within-speaker scatter's
leading eigenvectors are those directions; a :class:`ChannelMap` subtracts the training mean and
removes them (nuisance attribute projection, Solomonoff et al., 2005), then re-normalises. It is
linear and costs one small matrix product per embedding.

``benchmarks/train_channel_map.py`` fits one for CAM++ on public speech, and the engine benchmark
scores CAM++ through it (``campplus_mapped*``). No speaker model applies one yet: with the map alone,
AS-norm against the public cohort scored the meeting speech worse than CAM++ without it; what was at
or below the baseline everywhere was the map *and* subtracting the mean of the store's voiceprints
(README, Benchmarks), which the scorer does not do yet. A model that applies a map must name it in
its model id, so that voiceprints made with and without it are never compared.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from voiceauth.embedding.base import l2_normalise

DIRECTIONS = 5
"""Nuisance directions removed by default (the engine benchmark's choice; see the README)."""


@dataclass(frozen=True)
class ChannelMap:
    """``x -> unit((unit(x) - mean) P)`` with ``P = I - U U^T``, ``U`` the nuisance directions."""

    mean: np.ndarray
    """(dim,) the mean of the training embeddings (unit rows)."""
    nuisance: np.ndarray
    """(dim, k) orthonormal columns: the directions removed."""

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def apply(self, embeddings: np.ndarray) -> np.ndarray:
        """Map one embedding ``(dim,)`` or a batch ``(n, dim)``; unit rows out."""
        x = np.asarray(embeddings, dtype=np.float64)
        if x.shape[-1] != self.dim:
            raise ValueError(f"a channel map for {self.dim}-d embeddings was given {x.shape[-1]}-d ones")
        centred = l2_normalise(x).astype(np.float64) - self.mean
        return l2_normalise(centred - (centred @ self.nuisance) @ self.nuisance.T)

    def to_bytes(self) -> bytes:
        """The map as an ``.npz`` payload (deterministic for the same arrays)."""
        buffer = io.BytesIO()
        np.savez(buffer, mean=self.mean.astype(np.float32), nuisance=self.nuisance.astype(np.float32))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, payload: bytes) -> ChannelMap:
        with np.load(io.BytesIO(payload)) as data:
            return cls(np.asarray(data["mean"], dtype=np.float64), np.asarray(data["nuisance"], dtype=np.float64))


def fit_channel_map(embeddings: np.ndarray, speakers: Sequence[str], directions: int = DIRECTIONS) -> ChannelMap:
    """Fit a map on ``embeddings`` (n, dim), row i spoken by ``speakers[i]``.

    Each speaker should appear several times under different channels; the ``directions`` leading
    eigenvectors of the within-speaker scatter are removed.
    """
    x = l2_normalise(np.asarray(embeddings, dtype=np.float64)).astype(np.float64)
    labels = np.asarray(speakers)
    if len(x) != len(labels):
        raise ValueError(f"{len(x)} embeddings but {len(labels)} speaker labels")
    if not 0 < directions < x.shape[1]:
        raise ValueError(f"directions must be between 1 and {x.shape[1] - 1}, not {directions}")
    names, index = np.unique(labels, return_inverse=True)
    if len(names) < 2 or len(names) == len(labels):
        raise ValueError("fitting a channel map needs several speakers, each heard more than once")
    mean = x.mean(axis=0)
    sums = np.zeros((len(names), x.shape[1]))
    np.add.at(sums, index, x)
    within = x - (sums / np.bincount(index)[:, None])[index]
    _, vectors = np.linalg.eigh(within.T @ within / len(x))
    return ChannelMap(mean, vectors[:, ::-1][:, :directions].copy())
