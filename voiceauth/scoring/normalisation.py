"""Score normalisation: adaptive symmetric normalisation (AS-norm) against a cohort."""

from __future__ import annotations

import enum

import numpy as np

from voiceauth.matmul import matmul

MIN_COHORT = 20
"""Fewer cohort voiceprints than this and scores are not normalised (flag SMALL_COHORT)."""
COHORT_TOP_N = 100


class Normalisation(str, enum.Enum):
    RAW = "raw"
    AS_NORM = "as-norm"


def top_stats(scores: np.ndarray, top_n: int = COHORT_TOP_N) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (at least 1e-6) of the ``top_n`` highest scores of each column.

    ``scores`` is (cohort, m): the cohort side of AS-norm for m embeddings at once.
    """
    n = min(top_n, len(scores))
    top = np.partition(scores, len(scores) - n, axis=0)[len(scores) - n :]
    return top.mean(axis=0), np.maximum(top.std(axis=0), 1e-6)


def as_norm(raw: float, enrol: np.ndarray, test: np.ndarray, cohort: np.ndarray, top_n: int = COHORT_TOP_N) -> float:
    """Adaptive symmetric normalisation of one trial score against an impostor cohort.

    Each side is compared with the cohort; the ``top_n`` highest cohort scores of each
    side give a mean and standard deviation, and the score is z-normalised against both.
    """
    (enrol_mean, test_mean), (enrol_std, test_std) = top_stats(matmul(cohort, np.stack([enrol, test], axis=1)), top_n)
    return float(symmetric_z(raw, (enrol_mean, enrol_std), (test_mean, test_std)))


def as_norm_many(raw: np.ndarray, enrol: np.ndarray, tests: np.ndarray, cohort: np.ndarray,
                 top_n: int = COHORT_TOP_N) -> np.ndarray:
    """AS-norm of many trials at once: ``raw[i]`` is the score of ``enrol[i]`` against ``tests[i]``
    (rows), each side compared with ``cohort`` (rows) as :func:`as_norm` does."""
    enrol_stats = top_stats(matmul(cohort, enrol.T), top_n)
    test_stats = top_stats(matmul(cohort, tests.T), top_n)
    return np.asarray(symmetric_z(raw, enrol_stats, test_stats), dtype=np.float64)


Stats = tuple[np.ndarray | float, np.ndarray | float]
"""(mean, standard deviation) of one side's top cohort scores."""


def symmetric_z(raw: np.ndarray | float, enrol: Stats, test: Stats) -> np.ndarray | float:
    """The AS-norm formula: the mean of the score's z-values against the enrolment side's and
    the test side's cohort statistics (elementwise, so many trials can be normalised at once)."""
    return 0.5 * ((raw - enrol[0]) / enrol[1] + (raw - test[0]) / test[1])



