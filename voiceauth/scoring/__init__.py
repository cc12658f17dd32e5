"""Scoring: cosine -> AS-norm -> calibrated log-likelihood ratio, the Policy's thresholds, statistics."""

from voiceauth.scoring.calibration import (
    DEFAULT_CALIBRATION,
    DURATION_CEIL_S,
    DURATION_FLOOR_S,
    MIN_TRIALS_PER_CLASS,
    SCHEMA_VERSION,
    Calibration,
    CalibrationSet,
    default_calibration,
    duration_feature,
)
from voiceauth.scoring.normalisation import COHORT_TOP_N, MIN_COHORT, Normalisation, as_norm, top_stats
from voiceauth.scoring.policy import Policy, Thresholds
from voiceauth.scoring.scorer import Score, Scorer

__all__ = [
    "COHORT_TOP_N",
    "Calibration",
    "CalibrationSet",
    "DEFAULT_CALIBRATION",
    "DURATION_CEIL_S",
    "DURATION_FLOOR_S",
    "MIN_COHORT",
    "MIN_TRIALS_PER_CLASS",
    "Normalisation",
    "Policy",
    "SCHEMA_VERSION",
    "Score",
    "Scorer",
    "Thresholds",
    "as_norm",
    "default_calibration",
    "duration_feature",
    "top_stats",
]
