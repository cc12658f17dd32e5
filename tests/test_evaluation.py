"""EER, minDCF, thresholds, intervals and plots on trials with known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from voiceauth.errors import CalibrationError
from voiceauth.scoring.statistics import (
    Interval,
    Metrics,
    OperatingPoint,
    clopper_pearson,
    compute_metrics,
    det_points,
    eer,
    error_rates,
    min_dcf,
    operating_point,
    threshold_for_far,
    threshold_for_frr,
)
from voiceauth.tools.plots import plot_det, plot_score_histograms

pytestmark = pytest.mark.integration  # real model, processes or external tools

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Hand example: 4 genuine, 5 impostor trials.
#   genuine  0.9 0.8 0.6 0.4
#   impostor 0.7 0.5 0.3 0.2 0.1
GENUINE = [0.9, 0.8, 0.6, 0.4]
IMPOSTOR = [0.7, 0.5, 0.3, 0.2, 0.1]
HAND_SCORES = np.array(GENUINE + IMPOSTOR)
HAND_LABELS = np.array([True] * 4 + [False] * 5)


def two_classes(genuine: np.ndarray, impostor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.concatenate([genuine, impostor])
    labels = np.concatenate([np.ones(len(genuine), bool), np.zeros(len(impostor), bool)])
    return scores, labels


# --------------------------------------------------------------------------- error rates


def test_error_rates_hand_example() -> None:
    # threshold 0.5, accept iff score >= 0.5:
    #   impostors accepted: 0.7 and 0.5 (the tie counts as accepted) -> FAR = 2/5 = 0.4
    #   genuine rejected:   0.4                                      -> FRR = 1/4 = 0.25
    assert error_rates(HAND_SCORES, HAND_LABELS, 0.5) == pytest.approx((0.4, 0.25))
    # threshold 0.85: impostors accepted none -> 0; genuine rejected 0.8 0.6 0.4 -> 3/4
    assert error_rates(HAND_SCORES, HAND_LABELS, 0.85) == pytest.approx((0.0, 0.75))


def test_labels_may_be_zero_one_integers() -> None:
    assert error_rates(HAND_SCORES, HAND_LABELS.astype(int), 0.5) == pytest.approx((0.4, 0.25))


def test_det_points_hand_example() -> None:
    thresholds, far, frr = det_points(HAND_SCORES, HAND_LABELS)
    np.testing.assert_allclose(thresholds, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    np.testing.assert_allclose(np.asarray(far) * 5, [5, 4, 3, 2, 2, 1, 1, 0, 0])
    np.testing.assert_allclose(np.asarray(frr) * 4, [0, 0, 0, 0, 1, 1, 2, 2, 3])


def test_det_points_with_ties_match_error_rates() -> None:
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 12, size=400).astype(float)  # many ties, both classes at each score
    labels = rng.random(400) < 0.3
    thresholds, far, frr = det_points(scores, labels)
    assert np.all(np.diff(thresholds) > 0)
    assert np.all(np.diff(far) <= 0) and np.all(np.diff(frr) >= 0)
    for t, a, r in zip(thresholds, far, frr, strict=True):
        assert error_rates(scores, labels, t) == (a, r)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.integers(-5, 5).map(lambda v: v / 2), st.booleans()),
        min_size=2,
        max_size=40,
    ).filter(lambda trials: 0 < sum(g for _, g in trials) < len(trials))
)
def test_det_points_agree_with_brute_force(trials: list[tuple[float, bool]]) -> None:
    scores = np.array([s for s, _ in trials])
    labels = np.array([g for _, g in trials])
    thresholds, far, frr = det_points(scores, labels)
    assert list(thresholds) == sorted(set(scores.tolist()))
    for t, a, r in zip(thresholds, far, frr, strict=True):
        assert (a, r) == error_rates(scores, labels, t)


def test_det_points_on_a_million_trials() -> None:
    rng = np.random.default_rng(0)
    scores, labels = two_classes(rng.normal(2, 1, 100_000), rng.normal(0, 1, 900_000))
    thresholds, far, frr = det_points(scores, labels)
    assert len(thresholds) == len(far) == len(frr) == len(np.unique(scores))
    assert far[0] == 1.0 and frr[0] == 0.0


# --------------------------------------------------------------------------- EER and minDCF


def test_eer_perfect_separation_is_zero() -> None:
    scores, labels = two_classes(np.array([2.0, 3.0, 4.5]), np.array([-1.0, 0.0, 1.0, 1.5]))
    rate, threshold = eer(scores, labels)
    assert rate == 0.0
    assert 1.5 < threshold <= 2.0
    assert error_rates(scores, labels, threshold) == (0.0, 0.0)


def test_eer_reversed_scores_is_one() -> None:
    scores, labels = two_classes(np.array([-1.0, 0.0]), np.array([1.0, 2.0, 3.0]))
    assert eer(scores, labels)[0] == pytest.approx(1.0)


def test_eer_identical_distributions_is_half() -> None:
    rng = np.random.default_rng(42)
    scores, labels = two_classes(rng.normal(0, 1, 50_000), rng.normal(0, 1, 50_000))
    assert eer(scores, labels)[0] == pytest.approx(0.5, abs=0.02)


def test_eer_all_scores_equal_is_half() -> None:
    scores, labels = two_classes(np.zeros(3), np.zeros(5))
    assert eer(scores, labels)[0] == pytest.approx(0.5)


def test_eer_two_gaussians_matches_theory() -> None:
    # N(0,1) impostors vs N(2,1) genuine cross at 1: FAR = FRR = Phi(-1) = 0.1587
    rng = np.random.default_rng(7)
    scores, labels = two_classes(rng.normal(2, 1, 200_000), rng.normal(0, 1, 200_000))
    rate, threshold = eer(scores, labels)
    assert rate == pytest.approx(norm.cdf(-1), abs=0.005)
    assert threshold == pytest.approx(1.0, abs=0.03)


def test_eer_hand_example() -> None:
    # From test_det_points_hand_example: at 0.5 FAR .4 > FRR .25; at 0.6 FAR .2 < FRR .25.
    # FAR - FRR goes .15 -> -.05, so w = .15 / .2 = .75 along that segment:
    # EER = .4 + .75 * (.2 - .4) = .25, threshold = .5 + .75 * .1 = .575
    rate, threshold = eer(HAND_SCORES, HAND_LABELS)
    assert rate == pytest.approx(0.25)
    assert threshold == pytest.approx(0.575)


def test_min_dcf_hand_example() -> None:
    # p_target = 0.25, c_miss = c_fa = 1: DCF = .25 FRR + .75 FAR, normaliser min(.25, .75) = .25,
    # so normalised DCF = FRR + 3 FAR. Over thresholds 0.1 .. 0.9 and reject-all:
    #   t    0.1  0.2  0.3  0.4  0.5   0.6   0.7  0.8  0.9   reject-all
    #   FAR  1    .8   .6   .4   .4    .2    .2   0    0     0
    #   FRR  0    0    0    0    .25   .25   .5   .5   .75   1
    #   nDCF 3    2.4  1.8  1.2  1.45  .85   1.1  .5   .75   1
    # -> minimum 0.5 at threshold 0.8.
    value, threshold = min_dcf(HAND_SCORES, HAND_LABELS, p_target=0.25)
    assert value == pytest.approx(0.5)
    assert threshold == pytest.approx(0.8)
    # p_target = 0.5: normalised DCF = FRR + FAR: 1 .8 .6 .4 .65 .45 .7 .5 .75 1 -> 0.4 at 0.4
    value, threshold = min_dcf(HAND_SCORES, HAND_LABELS, p_target=0.5)
    assert value == pytest.approx(0.4)
    assert threshold == pytest.approx(0.4)
    # c_miss = 3, p_target = .25: DCF = .75 FRR + .75 FAR, normaliser .75 -> FRR + FAR again
    assert min_dcf(HAND_SCORES, HAND_LABELS, p_target=0.25, c_miss=3.0)[0] == pytest.approx(0.4)


def test_min_dcf_is_at_most_one_and_zero_when_separated() -> None:
    rng = np.random.default_rng(1)
    scores, labels = two_classes(rng.normal(0, 1, 500), rng.normal(0, 1, 5000))
    assert 0.0 < min_dcf(scores, labels, 0.01)[0] <= 1.0
    scores, labels = two_classes(np.array([5.0, 6.0]), np.array([1.0, 2.0]))
    assert min_dcf(scores, labels, 0.001)[0] == 0.0


def test_min_dcf_rejects_bad_parameters() -> None:
    for kwargs in ({"p_target": 0.0}, {"p_target": 1.0}, {"p_target": 0.1, "c_miss": 0.0}):
        with pytest.raises(CalibrationError):
            min_dcf(HAND_SCORES, HAND_LABELS, **kwargs)


def test_compute_metrics() -> None:
    m = compute_metrics(HAND_SCORES, HAND_LABELS)
    assert isinstance(m, Metrics)
    assert m.eer == pytest.approx(0.25) and m.eer_threshold == pytest.approx(0.575)
    assert m.min_dcf_01 == pytest.approx(min_dcf(HAND_SCORES, HAND_LABELS, 0.01)[0])
    assert m.min_dcf_001 == pytest.approx(min_dcf(HAND_SCORES, HAND_LABELS, 0.001)[0])
    d = m.to_dict()
    assert d["n_genuine"] == 4 and d["n_impostor"] == 5
    assert set(d) == {"eer", "eer_threshold", "min_dcf_01", "min_dcf_001", "n_genuine", "n_impostor"}
    with pytest.raises(AttributeError):
        m.eer = 0.0  # type: ignore[misc]


# --------------------------------------------------------------------------- thresholds


@pytest.mark.parametrize("target", [0.0, 0.001, 0.01, 0.05, 0.1, 0.3333, 0.5, 0.999])
def test_threshold_for_far_meets_target_and_is_minimal(target: float) -> None:
    impostor = np.random.default_rng(5).normal(0, 1, 1000)  # continuous: no ties
    t = threshold_for_far(impostor, target)
    assert np.mean(impostor >= t) <= target
    below = np.nextafter(t, -np.inf)
    assert np.mean(impostor >= below) > target


def test_threshold_for_far_with_ties() -> None:
    impostor = np.array([0.0, 1.0, 1.0, 1.0, 2.0])
    # 20 % allowed: only the 2.0 may pass; the three tied 1.0s must all be rejected
    t = threshold_for_far(impostor, 0.2)
    assert 1.0 < t <= 2.0
    assert np.mean(impostor >= t) == 0.2
    # 40 % allowed: still only one, since accepting 1.0 lets four through
    assert np.mean(impostor >= threshold_for_far(impostor, 0.4)) == 0.2
    # 100 %: everything may pass
    assert np.mean(impostor >= threshold_for_far(impostor, 1.0)) == 1.0


def test_threshold_for_far_exact_rate_is_allowed() -> None:
    impostor = np.arange(100, dtype=float)
    t = threshold_for_far(impostor, 0.03)  # exactly 3 of 100 may pass: 97, 98, 99
    assert np.count_nonzero(impostor >= t) == 3
    assert 96.0 < t <= 97.0


@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.2, 0.5])
def test_threshold_for_frr_meets_target_and_is_maximal(target: float) -> None:
    genuine = np.random.default_rng(6).normal(2, 1, 1000)
    t = threshold_for_frr(genuine, target)
    assert np.mean(genuine < t) <= target
    above = np.nextafter(t, np.inf)
    assert np.mean(genuine < above) > target


def test_threshold_for_frr_with_ties_and_full_rate() -> None:
    genuine = np.array([1.0, 1.0, 2.0, 3.0])
    # 25 % allowed, but rejecting 1.0 rejects two: threshold stays at 1.0
    assert threshold_for_frr(genuine, 0.25) == 1.0
    assert threshold_for_frr(genuine, 0.5) == 2.0
    assert np.mean(genuine < threshold_for_frr(genuine, 1.0)) == 1.0


def test_threshold_functions_validate() -> None:
    with pytest.raises(CalibrationError, match="empty"):
        threshold_for_far([], 0.01)
    with pytest.raises(CalibrationError, match="empty"):
        threshold_for_frr(np.array([]), 0.01)
    with pytest.raises(CalibrationError, match="NaN"):
        threshold_for_far([0.1, np.nan], 0.01)
    with pytest.raises(CalibrationError, match="target_far"):
        threshold_for_far([0.1, 0.2], 1.5)
    with pytest.raises(CalibrationError, match="target_frr"):
        threshold_for_frr([0.1, 0.2], -0.1)


# --------------------------------------------------------------------------- intervals


def test_clopper_pearson_known_values() -> None:
    zero = clopper_pearson(0, 100)
    assert zero.low == 0.0
    assert zero.high == pytest.approx(0.0362, abs=1e-4)
    five = clopper_pearson(5, 100)
    assert five.low == pytest.approx(0.0164, abs=1e-4)
    assert five.high == pytest.approx(0.1128, abs=1e-4)
    assert clopper_pearson(100, 100).high == 1.0
    assert clopper_pearson(0, 0) == Interval(0.0, 1.0)
    # wider at higher confidence
    wide = clopper_pearson(5, 100, confidence=0.99)
    assert wide.low < five.low and wide.high > five.high


def test_clopper_pearson_validates() -> None:
    for k, n, c in ((5, 3, 0.95), (-1, 10, 0.95), (1, 10, 1.0), (1, 10, 0.0)):
        with pytest.raises(CalibrationError):
            clopper_pearson(k, n, c)


def test_interval_str() -> None:
    assert str(Interval(0.008, 0.019)) == "0.8%–1.9%"
    assert str(Interval(0.0, 0.000362)) == "0.0%–0.036%"


def test_operating_point() -> None:
    op = operating_point(HAND_SCORES, HAND_LABELS, 0.5)
    assert isinstance(op, OperatingPoint)
    assert (op.far, op.frr) == pytest.approx((0.4, 0.25))
    assert (op.n_genuine, op.n_impostor) == (4, 5)
    assert op.far_interval == clopper_pearson(2, 5)
    assert op.frr_interval == clopper_pearson(1, 4)
    assert op.far_interval.low < op.far < op.far_interval.high
    assert "FAR 40.0%" in str(op)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [
        ([], [], "empty"),
        ([0.1, 0.2, 0.3], [True, False], "length"),
        ([0.1, np.nan, 0.3], [True, False, True], "NaN"),
        ([0.1, np.inf, 0.3], [True, False, True], "infinite"),
        ([0.1, 0.2], [True, True], "impostor"),
        ([0.1, 0.2], [False, False], "genuine"),
        ([[0.1, 0.2]], [[True, False]], "1-D"),
        (["a", "b"], [True, False], "numbers"),
        ([0.1, 0.2], [2, 0], "labels"),
    ],
)
def test_bad_trials_raise(scores: list[object], labels: list[object], match: str) -> None:
    funcs = [
        lambda: error_rates(scores, labels, 0.0),
        lambda: det_points(scores, labels),
        lambda: eer(scores, labels),
        lambda: min_dcf(scores, labels, 0.01),
        lambda: operating_point(scores, labels, 0.0),
        lambda: compute_metrics(scores, labels),
    ]
    for func in funcs:
        with pytest.raises(CalibrationError, match=match):
            func()


def test_nan_threshold_raises() -> None:
    with pytest.raises(CalibrationError, match="threshold"):
        error_rates(HAND_SCORES, HAND_LABELS, float("nan"))


# --------------------------------------------------------------------------- plots


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 1000


def test_plot_det(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    good = two_classes(rng.normal(3, 1, 2000), rng.normal(0, 1, 20_000))
    tiny = two_classes(np.array([0.9, 0.4]), np.array([0.5, 0.1, -0.3]))
    separated = two_classes(np.array([5.0, 6.0]), np.array([0.0, 1.0]))
    out = plot_det(
        {"good": good, "tiny": tiny, "separated": separated},
        tmp_path / "nested" / "dir" / "det.png",
        title="test DET",
        operating_points={"good": (0.001, 0.07), "tiny": (0.0, 0.5), "other": (0.2, 0.01)},
    )
    assert out == tmp_path / "nested" / "dir" / "det.png"
    assert_png(out)


def test_plot_det_large_system(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    out = plot_det({"big": two_classes(rng.normal(2, 1, 100_000), rng.normal(0, 1, 400_000))}, tmp_path / "big.png")
    assert_png(out)


def test_plot_det_validates(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError):
        plot_det({}, tmp_path / "none.png")
    with pytest.raises(CalibrationError, match="'broken'"):
        plot_det({"broken": ([0.1, 0.2], [True, True])}, tmp_path / "broken.png")
    with pytest.raises(CalibrationError):
        plot_det({"ok": (HAND_SCORES, HAND_LABELS)}, tmp_path / "op.png", operating_points={"ok": (1.5, 0.1)})
    assert not (tmp_path / "broken.png").exists()


def test_plot_score_histograms(tmp_path: Path) -> None:
    rng = np.random.default_rng(13)
    scores, labels = two_classes(rng.normal(2, 1, 3000), rng.normal(0, 1, 3000))
    out = plot_score_histograms(
        scores, labels, tmp_path / "h" / "scores.png", title="hist", thresholds={"accept": 1.5, "reject": 0.2}
    )
    assert out == tmp_path / "h" / "scores.png"
    assert_png(out)


def test_plot_score_histograms_few_and_degenerate_trials(tmp_path: Path) -> None:
    assert_png(plot_score_histograms(HAND_SCORES, HAND_LABELS, tmp_path / "few.png"))
    assert_png(plot_score_histograms([0.5, 0.5, 0.5], [True, False, True], tmp_path / "same.png"))
    assert_png(plot_score_histograms([0.1, 0.7], [True, True], tmp_path / "one-class.png"))
    with pytest.raises(CalibrationError):
        plot_score_histograms([], [], tmp_path / "empty.png")
    with pytest.raises(CalibrationError):
        plot_score_histograms(HAND_SCORES, HAND_LABELS, tmp_path / "inf.png", thresholds={"x": float("inf")})
