"""The evidence of a live call: speech segments and the running call embedding."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from voiceauth.audio.decode import MODEL_RATE, resample
from voiceauth.live.screens import ScreenInput
from voiceauth.scoring.normalisation import Normalisation
from voiceauth.scoring.scorer import Score
from voiceauth.speech.activity import Kept, frame_length
from voiceauth.speech.pauses import remove_dc
from voiceauth.store.trials import MAX_TRAJECTORY


def unit(x: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(x))
    return (x / norm).astype(np.float32) if norm > 0 else np.zeros_like(x, dtype=np.float32)



@dataclass(frozen=True)
class Segment:
    samples: np.ndarray = field(repr=False)
    """16 kHz float32 speech with its short pauses."""
    speech_s: float
    """Net speech in it (seconds of speech frames)."""
    fed_at: float
    """Monotonic time the last chunk of this segment was fed (for decision latency)."""


@dataclass
class Evidence:
    """The running call embedding and the ring of recent segment embeddings."""

    ring_size: int
    total: np.ndarray
    seconds: float = 0.0
    ring: deque[tuple[np.ndarray, float]] = field(default_factory=deque)

    def add(self, embedding: np.ndarray, seconds: float) -> None:
        self.total = self.total + embedding.astype(np.float64) * seconds
        self.seconds += seconds
        self.ring.append((embedding, seconds))
        while len(self.ring) > self.ring_size:
            self.ring.popleft()

    def restart_from_recent(self) -> None:
        self.total = sum((e.astype(np.float64) * s for e, s in self.ring), np.zeros_like(self.total))
        self.seconds = sum(s for _, s in self.ring)

    def screen_input(self, customer_id: str) -> ScreenInput:
        recent = sum((e.astype(np.float64) * s for e, s in self.ring), np.zeros_like(self.total))
        recent_s = sum(s for _, s in self.ring)
        return ScreenInput(
            customer_id, unit(self.total), self.seconds, unit(recent), recent_s,
            unit(self.total - recent), max(self.seconds - recent_s, 0.0),
        )


class Segmenter:
    """Cuts what a call's speaker model hears (input rate) into segments, resampled to 16 kHz.

    A segment closes once it holds ``segment_s`` seconds of speech frames; the short pauses and
    pads the gate kept (:meth:`~voiceauth.speech.activity.SpeechGate.push_kept`) stay in it, so
    ``Segment.speech_s`` is net speech while the samples are longer. A DC offset is removed
    per segment.
    """

    def __init__(self, sample_rate: int, segment_s: float, min_flush_s: float) -> None:
        self.sample_rate = sample_rate
        self.frame = frame_length(sample_rate)
        self.per_segment = max(1, int(round(segment_s * sample_rate / self.frame)))
        """Speech frames in one segment."""
        self.min_flush = min_flush_s * sample_rate / self.frame
        self._frames: list[np.ndarray] = []
        self._voiced: list[np.ndarray] = []
        self._held = 0
        """Speech frames held."""

    def push(self, kept: Kept, fed_at: float) -> list[Segment]:
        """Add what the gate kept; returns the whole segments it completes (the rest waits for more)."""
        if len(kept.voiced) == 0:
            return []
        self._frames.append(kept.samples.reshape(-1, self.frame))
        self._voiced.append(kept.voiced)
        self._held += int(kept.voiced.sum())
        if self._held < self.per_segment:
            return []
        frames, voiced = np.concatenate(self._frames), np.concatenate(self._voiced)
        count = np.cumsum(voiced)
        out, start = [], 0
        for k in range(self.per_segment, int(count[-1]) + 1, self.per_segment):
            end = int(np.searchsorted(count, k)) + 1  # just after the k-th speech frame
            out.append(self._segment(frames[start:end], self.per_segment, fed_at))
            start = end
        self._frames, self._voiced = [frames[start:]], [voiced[start:]]
        self._held = int(voiced[start:].sum())
        return out

    def flush(self) -> list[Segment]:
        """At the end of the call: the left-over speech as a last, shorter segment when long enough."""
        long_enough = self._held > 0 and self._held >= self.min_flush
        held = [self._segment(np.concatenate(self._frames), self._held, time.monotonic())] if long_enough else []
        self.clear()
        return held

    def clear(self) -> None:
        self._frames, self._voiced, self._held = [], [], 0

    def _segment(self, frames: np.ndarray, speech_frames: int, fed_at: float) -> Segment:
        samples = remove_dc(frames.reshape(-1))
        return Segment(resample(samples, self.sample_rate, MODEL_RATE), speech_frames * self.frame / self.sample_rate,
                       fed_at)


class ShadowSpeech:
    """A call's scored speech, kept in memory (at most ``limit_s`` of net speech) to grow the customer's
    shadow voiceprint if the call ends AUTHENTICATED (:mod:`voiceauth.services.shadow`)."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.segments: list[Segment] = []

    def add(self, segment: Segment) -> None:
        if sum(s.speech_s for s in self.segments) < self.limit_s:
            self.segments.append(segment)


@dataclass
class CallTrajectory:
    """What a finished call records as its trial: its latest score and net speech, and the
    (score, net speech) of every update once the call had enough speech for a decision, all in one
    normalisation (a store whose cohort grows past the bound mid-call starts it again)."""

    last: tuple[Score, float] | None = None
    points: list[tuple[float, float]] = field(default_factory=list)
    normalisation: Normalisation | None = None

    def add(self, score: Score, seconds: float, *, decidable: bool) -> None:
        self.last = (score, seconds)
        if score.normalisation is not self.normalisation:
            self.points, self.normalisation = [], score.normalisation
        if decidable and len(self.points) < MAX_TRAJECTORY:
            self.points.append((float(score.value), float(seconds)))


class Thinning:
    """Which segments of a settled call are embedded: every ``stride``-th of a run of settled
    segments. The speech of those left out is kept as heard (``take_unscored``) for the next update;
    ``pressed_s`` is the part left out while the stride was raised because the model was pressed."""

    def __init__(self) -> None:
        self.run = 0
        self.stride = 0
        self.pressed = False
        self.unscored_s = 0.0
        self.pressed_s = 0.0

    def settle(self, stride: int, pressed_stride: int, pressed: Callable[[], bool]) -> None:
        """The stride for the next segments: ``stride`` (0: the call is not settled, the run restarts),
        raised to ``pressed_stride`` while ``pressed()`` says the model is pressed."""
        self.pressed = stride > 0 and pressed_stride > stride and pressed()
        self.stride = pressed_stride if self.pressed else stride
        if stride == 0:
            self.run = 0

    def leave_out(self, segment: Segment) -> bool:
        """Whether to skip ``segment`` at the stride last settled."""
        if self.stride < 2:
            return False
        self.run += 1
        if self.run % self.stride == 0:
            return False
        self.unscored_s += segment.speech_s
        if self.pressed:
            self.pressed_s += segment.speech_s
        return True

    def skip(self, segment: Segment) -> None:
        """Leave ``segment`` out whatever the stride: it waited too long behind calls still deciding."""
        self.unscored_s += segment.speech_s
        self.pressed_s += segment.speech_s

    def take_unscored(self) -> float:
        """The speech left out since it was last taken, now to be counted as heard."""
        seconds, self.unscored_s = self.unscored_s, 0.0
        return seconds

