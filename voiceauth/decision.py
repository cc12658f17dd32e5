"""The decision rule, in one place: from a calibrated score to what the agent is told.

Two forms of the same rule, both explicit functions of the thresholds (as SpeechBrain's
``verify_batch(threshold=...)``):

* :func:`decide` for one recording (``VoiceAuth.verify``): ACCEPT at or above the policy's
  accept LLR, REJECT under its reject LLR, INCONCLUSIVE between them or on too little speech;
  a watchlist match turns an ACCEPT into a REJECT, a suspected spoof into INCONCLUSIVE.
* :func:`decide_call` for a live call, looked at after every segment: AUTHENTICATED once
  there is enough net speech and the LLR reaches the accept threshold plus a margin (the
  price of looking many times, see :mod:`voiceauth.live`), and only on speech the spoof check
  has passed (or, on a channel whose bona fide reference is calibrated, is checking: its
  verdict then follows and a suspected spoof withdraws the authentication); NOT_AUTHENTICATED
  under the reject threshold or once a screen (speaker change, watchlist, spoof) has barred
  the call; otherwise the call keeps its status (hysteresis).
* :func:`within_reach`, which of a live call's speech the spoof check looks at ahead of a
  decision.

Change a decision rule here; nothing else decides.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from voiceauth.scoring.normalisation import Normalisation
from voiceauth.scoring.policy import Thresholds


class Decision(str, enum.Enum):
    """Outcome of one verification."""

    ACCEPT = "accept"
    REJECT = "reject"
    INCONCLUSIVE = "inconclusive"
    OPTED_OUT = "opted_out"


class CallStatus(str, enum.Enum):
    """Where a live call stands."""

    PENDING = "pending"
    """Not enough evidence yet; see ``CallResult.progress``."""
    AUTHENTICATED = "authenticated"
    """Confident accept: the agent can skip the security questions."""
    NOT_AUTHENTICATED = "not_authenticated"
    """Confident reject (or a withdrawn accept): ask the questions or step up."""
    INCONCLUSIVE = "inconclusive"
    """The call ended without enough speech for a decision."""
    NOT_ENROLLED = "not_enrolled"
    OPTED_OUT = "opted_out"
    ERROR = "error"
    """Processing failed; ``CallResult.error`` says why. Fall back to the questions."""


DECIDED = frozenset({CallStatus.AUTHENTICATED, CallStatus.NOT_AUTHENTICATED})
FINAL = frozenset({CallStatus.NOT_ENROLLED, CallStatus.OPTED_OUT, CallStatus.ERROR})
"""Statuses a call never leaves: no audio is processed and no later result changes them."""


def decide(
    llr: float, speech_s: float, thresholds: Thresholds, *, min_speech_s: float,
    watchlist_hit: bool = False, spoof_suspected: bool = False,
) -> Decision:
    """The one-shot rule for a single recording."""
    if speech_s < min_speech_s:
        decision = Decision.INCONCLUSIVE
    elif llr >= thresholds.accept_llr:
        decision = Decision.ACCEPT
    elif llr < thresholds.reject_llr:
        decision = Decision.REJECT
    else:
        decision = Decision.INCONCLUSIVE
    if watchlist_hit and decision is Decision.ACCEPT:
        decision = Decision.REJECT
    if spoof_suspected and decision is Decision.ACCEPT:
        decision = Decision.INCONCLUSIVE  # fall back to other checks, never accept
    return decision


@dataclass(frozen=True)
class CallMargins:
    """LLR added to the policy's accept threshold in a live call, by how it was scored."""

    as_norm: float = 0.0
    raw: float = 3.0

    def for_(self, normalisation: Normalisation) -> float:
        return self.raw if normalisation is Normalisation.RAW else self.as_norm

    def derived(self, margins: dict[str, float]) -> CallMargins:
        """These margins, with those derived from the bank's own calls (by normalisation value,
        :mod:`voiceauth.scoring.margin`) in their place."""
        if not margins:
            return self
        return CallMargins(as_norm=margins.get(Normalisation.AS_NORM.value, self.as_norm),
                           raw=margins.get(Normalisation.RAW.value, self.raw))


@dataclass(frozen=True)
class CallDecision:
    status: CallStatus
    reason: str
    """Why the status is what it is ("" when it did not change)."""
    awaits_spoof_check: bool = False
    """The voice matches, but some of its speech has not passed the spoof check yet."""


def decide_call(
    current: CallStatus, llr: float, speech_s: float, normalisation: Normalisation, thresholds: Thresholds, *,
    margins: CallMargins, min_speech_s: float, barred: bool, spoof_covered: bool,
) -> CallDecision:
    """The sequential rule for a live call, applied after every update."""
    if barred:
        return CallDecision(CallStatus.NOT_AUTHENTICATED, "authentication withdrawn")
    if speech_s < min_speech_s:
        return CallDecision(current, "")
    accept = thresholds.accept_llr + margins.for_(normalisation)
    if llr >= accept:
        if not spoof_covered:  # never AUTHENTICATED on speech the check has not passed
            return CallDecision(current, "", awaits_spoof_check=current is not CallStatus.AUTHENTICATED)
        return CallDecision(CallStatus.AUTHENTICATED, f"LLR {llr:.2f} >= accept {accept:.2f}")
    if llr < thresholds.reject_llr:
        return CallDecision(CallStatus.NOT_AUTHENTICATED, f"LLR {llr:.2f} < reject {thresholds.reject_llr:.2f}")
    return CallDecision(current, "")


def within_reach(llr: float, thresholds: Thresholds) -> bool:
    """Could a live call with this LLR become AUTHENTICATED without first crossing back over the
    reject threshold? Only such a call's speech is spoof-checked ahead of its decision: the speech
    of a call whose voice does not match (an impostor, mostly) decides nothing while it stays so,
    and checking it would cost the model time that matching calls wait for."""
    return llr >= thresholds.reject_llr
