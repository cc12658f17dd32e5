"""benchmarks/engine_cascade.py: ECAPA is consulted inside the band only, and the shares are counted."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def cascade() -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import engine_cascade
    finally:
        sys.path.remove(str(BENCHMARKS))
    return engine_cascade


def _scores(tmp_path: Path) -> np.lib.npyio.NpzFile:
    # 4 genuine, 4 impostor trials; one genuine trial CAM++ scores like an impostor (0.55, in the band)
    # whose ECAPA cosine rescues it, and one impostor CAM++ rejects outright (0.48, under the band)
    # though ECAPA is fooled (0.99).
    truth = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    camp = np.array([0.9, 0.85, 0.8, 0.55, 0.6, 0.3, 0.48, 0.25], dtype=np.float32)
    ecapa = np.array([0.8, 0.8, 0.8, 0.9, 0.3, 0.2, 0.99, 0.1], dtype=np.float32)
    np.savez(tmp_path / "s.npz", **{"c/truth": truth, "c/campplus": camp, "c/ecapa": ecapa,
                                    "c/baseline": camp})
    return np.load(tmp_path / "s.npz")


def test_ecapa_is_asked_only_inside_the_band(cascade: ModuleType, tmp_path: Path) -> None:
    result = cascade.cascade(_scores(tmp_path), (0.5, 0.75))["c"]
    assert result["genuine_share_ecapa"] == 0.25  # the 0.55 genuine trial
    assert result["impostor_share_ecapa"] == 0.25  # the 0.6 impostor
    # CAM++ alone: the 0.55 genuine trial under the 0.6 impostor, an error; in the band the fusion
    # (0.725 vs 0.45) separates them; the fooled ECAPA outside the band is never asked, while the
    # fusion of every trial lets that impostor (0.735) above the 0.55 genuine trial (0.725)
    assert result["campplus_eer"] > 0
    assert result["fusion_eer"] > 0
    assert result["eer"] == 0


def test_speed_follows_the_worst_genuine_share(cascade: ModuleType) -> None:
    rates = {"campplus_onnx": 40.0, "ecapa_onnx": 10.0, "speechbrain": 8.0}
    per = {"a": {"eer": 1.0, "baseline_eer": 2.0, "genuine_share_ecapa": 0.1},
           "b": {"eer": 3.0, "baseline_eer": 2.0, "genuine_share_ecapa": 0.5}}
    out = cascade.summary(per, rates)
    assert out["worse_than_baseline"] == ["b"]
    assert out["worst_genuine_share_ecapa"] == 0.5
    assert out["segments_per_s_at_that_share"] == pytest.approx(1 / (1 / 40 + 0.5 / 10), abs=0.05)
