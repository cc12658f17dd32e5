"""The bank's risk appetite as thresholds: ``Policy(target_far=0.01)``.

The accept threshold sits where the calibration trials' false-accept rate is at most the
target (and never below LLR 0, where the evidence would favour an impostor); the reject
threshold is never above :data:`REJECT_LLR` (evidence against the claim); expected
false-accept / false-reject rates come with exact binomial confidence intervals. A target
finer than one calibration impostor trial is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from voiceauth.errors import CalibrationError
from voiceauth.scoring.calibration import _REFIT, Calibration
from voiceauth.scoring.statistics import Interval, clopper_pearson, threshold_for_far, threshold_for_frr

REJECT_LLR = -2.0
"""The highest reject threshold: a confident "this is not the customer" (REJECT, NOT_AUTHENTICATED)
needs evidence at least e^2 (about 7.4) times likelier from an impostor than from the customer.
The policy's ``max_false_reject`` can only lower it; between it and the accept threshold a
verification is INCONCLUSIVE and a call stays PENDING (ask the questions), never a reject on
evidence that leans towards the customer."""


@dataclass(frozen=True)
class Thresholds:
    """Where the policy puts its two thresholds (in calibrated LLR), with expected error rates."""

    accept_llr: float
    reject_llr: float
    expected_far: float
    expected_far_interval: Interval
    expected_frr: float
    """Genuine callers not accepted (rejected or inconclusive)."""
    expected_frr_interval: Interval
    expected_false_reject: float
    """Genuine callers confidently rejected (below the reject threshold)."""
    trials: tuple[int, int]
    """(genuine, impostor) calibration trials behind the figures."""
    claimed_far: float | None = None
    """Of the impostor trials, those that were reported claims of an identity (``fraud_case``):
    the share accepted, when there are enough to hold the target on them too..."""
    claimed_far_interval: Interval | None = None
    claimed_trials: int = 0

    def describe(self) -> str:
        claims = (f"; reported impostor claims accepted {self.claimed_far:.2%} (95% CI {self.claimed_far_interval}, "
                  f"{self.claimed_trials} trials)" if self.claimed_far is not None else "")
        return (
            f"accept when LLR >= {self.accept_llr:.2f}: expected false accepts {self.expected_far:.2%} "
            f"(95% CI {self.expected_far_interval}){claims}, genuine callers not accepted {self.expected_frr:.2%} "
            f"(95% CI {self.expected_frr_interval}); reject below LLR {self.reject_llr:.2f} "
            f"({self.expected_false_reject:.2%} of genuine callers); "
            f"from {self.trials[0]} genuine / {self.trials[1]} impostor trials"
        )


@dataclass(frozen=True)
class Policy:
    """The bank's risk appetite.

    Attributes:
        target_far: the largest acceptable share of impostors accepted.
        max_false_reject: the share of genuine callers the bank accepts to see flatly
            rejected (below the reject threshold); between the thresholds is INCONCLUSIVE.
        min_speech_s: net speech below which a verification is INCONCLUSIVE.
        prior: prior probability that a caller is who they claim, for the confidence.
    """

    target_far: float = 0.01
    max_false_reject: float = 0.02
    min_speech_s: float = 1.0
    prior: float = 0.5

    def __post_init__(self) -> None:
        for name in ("target_far", "max_false_reject", "prior"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise CalibrationError(f"Policy.{name} must be strictly between 0 and 1, got {value}")
        if self.min_speech_s < 0:
            raise CalibrationError("Policy.min_speech_s must be >= 0")

    def thresholds(self, calibration: Calibration) -> Thresholds:
        return _thresholds(self.target_far, self.max_false_reject, calibration)

    def confidence(self, llr: float) -> float:
        """Posterior probability of 'same speaker' given the LLR and this policy's prior."""
        logit = llr + math.log(self.prior / (1.0 - self.prior))
        return 1.0 / (1.0 + math.exp(-max(min(logit, 700.0), -700.0)))


def _thresholds(target_far: float, max_false_reject: float, calibration: Calibration) -> Thresholds:
    llrs = calibration.trial_llrs()
    genuine, impostor = llrs[calibration.labels], llrs[~calibration.labels]
    if 1.0 / len(impostor) > target_far:
        # finer than one impostor trial, the threshold sits above every impostor seen and "0.00 %" is a guess
        raise CalibrationError(
            f"target_far={target_far:g} is finer than the calibration's {len(impostor)} impostor trials resolve "
            f"(they need target_far >= {1.0 / len(impostor):.2g}); raise target_far, or add impostor trials and "
            f"{_REFIT}"
        )
    # Accept only where the FAR target is met AND the evidence favours the claim (LLR >= 0)...
    accept = max(threshold_for_far(impostor, target_far), 0.0)
    # ...and, once the bank has reported enough real claims (fraud cases) to resolve the target, is
    # met on them too: random pairs of customers are easier impostors than callers who claim an identity
    claims = llrs[~calibration.labels & calibration.claimed] if calibration.claimed is not None else llrs[:0]
    resolved = len(claims) > 0 and 1.0 / len(claims) <= target_far
    if resolved:
        accept = max(accept, threshold_for_far(claims, target_far))
    # Reject only on evidence against the claim: at most REJECT_LLR, never at an LLR that favours it.
    reject = min(threshold_for_frr(genuine, max_false_reject), REJECT_LLR, accept)
    n_fa = int((impostor >= accept).sum())
    n_fr = int((genuine < accept).sum())
    n_claims_fa = int((claims >= accept).sum())
    return Thresholds(
        accept_llr=float(accept),
        reject_llr=float(reject),
        expected_far=n_fa / len(impostor),
        expected_far_interval=clopper_pearson(n_fa, len(impostor)),
        expected_frr=n_fr / len(genuine),
        expected_frr_interval=clopper_pearson(n_fr, len(genuine)),
        expected_false_reject=float((genuine < reject).mean()),
        trials=(len(genuine), len(impostor)),
        claimed_far=n_claims_fa / len(claims) if resolved else None,
        claimed_far_interval=clopper_pearson(n_claims_fa, len(claims)) if resolved else None,
        claimed_trials=len(claims) if resolved else 0,
    )



