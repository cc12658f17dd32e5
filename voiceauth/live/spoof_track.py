"""Which of a live call's speech the spoof check has passed, and what it still has to check.

The call keeps the voiced speech the gate let through (never the pauses) until a check takes
it. A call may be AUTHENTICATED only on evidence whose every second has passed (see
:meth:`SpoofTrack.covers`; or, once a check passes, on an earlier update that matched on speech now
covered: :meth:`SpoofTrack.covered_accept`), unless the check *follows* (:attr:`SpoofTrack.follows`: the channel's
bona fide reference is calibrated, :mod:`voiceauth.fraud.reference`): then the call is
AUTHENTICATED without waiting, the speech heard up to that moment is still checked, and a
suspected spoof withdraws the authentication.

Speech is checked ahead of a decision only while the call is *within reach* of one
(:func:`voiceauth.decision.within_reach`: its LLR is not under the reject threshold). The speech
of a call whose voice does not match is kept unchecked, up to :attr:`SpoofTrack.backlog`; if the
voice comes to match, it is all checked before the call can be AUTHENTICATED. Past the backlog it
is forgotten, and the call can no longer be AUTHENTICATED (fail closed): it has not matched for
that long. Not thread-safe: the call holds its lock around every method.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import numpy as np


class SpoofState(enum.Enum):
    """Where a call's spoof check stands."""

    OFF = "off"
    WAITING = "waiting"
    """No check queued; the speech checked so far passed."""
    QUEUED = "queued"
    """A check is queued or running (it takes the unchecked speech when it runs)."""
    SUSPECTED = "suspected"
    FAILED = "failed"


ACTIVE = frozenset({SpoofState.WAITING, SpoofState.QUEUED})
"""States in which speech is still checked (nothing suspected, nothing failed)."""
COVER_TOLERANCE_S = 0.01
"""Rounding slack when comparing checked speech with the evidence (speech_s is rounded to 10 ms)."""


@dataclass
class SpoofTrack:
    """The speech of one call, as the spoof check sees it (all counts in input-rate samples)."""

    state: SpoofState
    window: int
    """Samples per check window (whole gate frames)."""
    sample_rate: int
    new: list[np.ndarray] = field(default_factory=list)
    new_len: int = 0
    tail: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    """The last window of speech already taken by a check: context for a short new piece."""
    heard: int = 0
    """Voiced samples heard so far (the evidence's segments are cut from them, in order)."""
    taken: int = 0
    """Voiced samples taken by checks so far..."""
    checked: int = 0
    """...and those that passed: a prefix of the call's speech."""
    wanted: bool = False
    """A matching voice waits for its speech to be checked."""
    accepts: list[float] = field(default_factory=list)
    """Seconds of speech (dropped included) behind each update whose voice matched while its speech
    was not yet checked, oldest first: once a check covers one, the call is AUTHENTICATED on it."""
    gap: bool = False
    """Speech was heard and not kept (after AUTHENTICATED or a bar): no later coverage."""
    queued_at: float = 0.0
    score: float | None = None
    """Lowest bona fide score seen (the most spoof-like window decides)."""
    follows: bool = False
    """The verdict may come after AUTHENTICATED (and withdraw it): authentication does not wait."""
    backlog: int | None = None
    """Most unchecked samples kept while the call is out of reach (None: no bound)."""
    in_reach: bool = False
    """The latest LLR is within reach of a decision: check ahead of it (set by the call)."""
    forgot: bool = False
    """Unchecked speech was forgotten past the backlog: nothing heard can be covered any more."""

    @property
    def listening(self) -> bool:
        return self.state in ACTIVE and not self.gap and not self.forgot

    def hear(self, voiced: np.ndarray, *, decided: bool) -> None:
        """Keep voiced speech for the next check; once the call is decided, stop (and forget)."""
        if decided:
            self.stop_hearing()
            return
        self.new.append(voiced)
        self.new_len += len(voiced)
        self.heard += len(voiced)
        if not self.in_reach and self.backlog is not None and self.new_len > self.backlog:
            self.forgot = True  # out of reach for a whole backlog: never AUTHENTICATED on this call
            self.drop()

    def stop_hearing(self) -> None:
        """The call is decided: later speech is not checked (see voiceauth.live). A following check
        still takes the speech heard before the decision; otherwise it is forgotten."""
        self.gap = True
        if not self.follows:
            self.drop()

    def backlogged(self) -> bool:
        """A check is running and a window of new speech already waits: the front end waits for it."""
        return self.state is SpoofState.QUEUED and self.new_len >= self.window

    def due(self, decision_samples: float, *, blocked: bool) -> bool:
        """Should a check be queued now? The first runs once there is enough speech for a decision."""
        if self.state is not SpoofState.WAITING or self.new_len == 0 or blocked:
            return False
        if self.gap:  # nothing more will come: check what is left (only a following check keeps any)
            return self.follows
        if self.wanted:  # a matching voice waits for its speech
            return True
        if not self.in_reach:  # no decision can depend on this speech yet: keep it unchecked
            return False
        if self.taken == 0 and not self.follows:
            return self.heard >= decision_samples
        # a following check does not hold up the decision: it takes whole windows, and the rest once decided
        return self.new_len >= self.window

    def queue(self) -> None:
        self.state = SpoofState.QUEUED
        self.queued_at = time.monotonic()

    def take(self) -> np.ndarray:
        """The speech heard since the last check, padded to a window with the speech just before it."""
        new = np.concatenate(self.new)
        context = self.tail[len(self.tail) - max(0, self.window - len(new)) :]
        self.tail = np.concatenate((self.tail, new))[-self.window :]
        self.new, self.new_len = [], 0
        self.taken = self.heard
        self.wanted = False
        return np.concatenate((context, new))

    def want(self, seconds: float) -> None:
        """An update whose evidence of ``seconds`` (speech and dropped) matched waits for its check."""
        self.wanted = True
        if not self.accepts or seconds > self.accepts[-1]:
            self.accepts.append(seconds)
            del self.accepts[:-64]  # bounded: only the latest matter once checks catch up

    def covered_accept(self) -> float | None:
        """The latest waiting accept the speech checked so far now covers (its seconds), forgetting
        it and those before it; None when none is covered, or the voice is now out of reach."""
        if self.state not in ACTIVE or self.follows or self.forgot or not self.in_reach:
            return None
        covered = [s for s in self.accepts if self.checked >= (s - COVER_TOLERANCE_S) * self.sample_rate]
        if not covered:
            return None
        self.accepts = self.accepts[len(covered):]
        return covered[-1]

    def covers(self, speech_s: float, dropped_s: float) -> bool:
        """Has all the speech behind an evidence of ``speech_s`` passed? (Segments dropped under
        overload, ``dropped_s``, are counted: the evidence then reaches further.)"""
        if self.state is SpoofState.OFF:
            return True
        if self.forgot:
            return False
        if self.follows:  # the check follows the decision; a suspected spoof withdraws it
            return self.state in ACTIVE
        if not self.listening:
            return False
        return self.checked >= (speech_s + dropped_s - COVER_TOLERANCE_S) * self.sample_rate

    def passed(self, score: float) -> None:
        self._record(score)
        self.state = SpoofState.WAITING
        self.checked = self.taken

    def suspected(self, score: float) -> None:
        self._record(score)
        self.state = SpoofState.SUSPECTED
        self.drop()

    def fail(self) -> None:
        """The check failed or could not run: the call can no longer be authenticated."""
        if self.state in ACTIVE:
            self.state = SpoofState.FAILED

    def drop(self) -> None:
        """Forget the speech kept for the check."""
        self.new, self.new_len = [], 0
        self.tail = np.zeros(0, dtype=np.float32)

    def _record(self, score: float) -> None:
        score = round(float(score), 3)
        self.score = score if self.score is None else min(self.score, score)
