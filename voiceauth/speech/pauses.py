"""What the speaker model hears: the recording with only LONG non-speech taken out.

The voice activity detector (:mod:`voiceauth.speech.activity`) decides, frame by frame, what
is speech; that measures net speech. The embedder gets more than those frames: splicing
the words together and trimming their edges removes what speaker models rely on (the
onsets and decays of words, the short pauses between them) and costs them several times
their error rate on short phone speech. So the front end keeps

* every speech frame;
* all non-speech shorter than ``LONG_PAUSE_S``, whole: breaths, pauses between words, a DTX
  burst of exact zeros inside a sentence, the lead-in before the first word and the tail
  after the last;
* ``PAD_S`` of whatever comes before and after each stretch of speech (word onsets the
  detector only notices late, the decay of the last word);

and drops only the middle of long non-speech: silence, hold music, tones, dead air. A
constant DC offset is removed from what is kept (:func:`remove_dc`). The same rule runs on
a whole recording (:func:`keep_mask`) and on a live stream (:class:`PauseTrimmer`).
"""

from __future__ import annotations

import numpy as np

LONG_PAUSE_S = 0.8
"""Non-speech at least this long is dropped, but for ``PAD_S`` at each end; shorter pauses are kept whole."""
PAD_S = 0.3
"""Non-speech kept before and after every stretch of speech."""
DC_LIMIT = 1e-3
"""A mean sample value (over the non-zero samples) beyond this (-60 dBFS) is a DC offset and is removed."""


def pause_frames(frame_s: float) -> tuple[int, int]:
    """(long pause, pad) in frames of ``frame_s`` seconds; the long pause always exceeds two pads."""
    pad = max(1, int(round(PAD_S / frame_s)))
    return max(2 * pad + 1, int(round(LONG_PAUSE_S / frame_s))), pad


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8), [0]))))
    return edges[::2], edges[1::2]


def keep_mask(voiced: np.ndarray, long_frames: int, pad_frames: int) -> np.ndarray:
    """Which frames to keep, given which are speech: speech, short pauses and the pads of long ones.

    Nothing is kept when nothing is speech.
    """
    voiced = np.asarray(voiced, dtype=bool)
    keep = voiced.copy()
    if not voiced.any():
        return keep
    for start, end in zip(*_runs(~voiced), strict=True):
        leading, trailing = start == 0, end == len(voiced)
        if end - start < long_frames:
            keep[start:end] = True
            continue
        if not leading:
            keep[start : start + pad_frames] = True
        if not trailing:
            keep[max(start, end - pad_frames) : end] = True
    return keep


class PauseTrimmer:
    """:func:`keep_mask` on a stream: push judged frames, get back the kept ones, in order.

    No look-ahead, so what a pause keeps is released late: the first ``pad`` frames after
    speech at once, the rest of a pause when speech resumes before it grows long (all of it)
    or when it has (only its last ``pad`` frames, as the onset of the next speech). A short
    tail after the last speech is released by :meth:`flush` only. Memory: at most
    ``long_frames`` frames.
    """

    def __init__(self, long_frames: int, pad_frames: int) -> None:
        if long_frames <= 2 * pad_frames or pad_frames < 1:
            raise ValueError(f"need long_frames > 2 * pad_frames >= 2, got {long_frames}, {pad_frames}")
        self.long_frames = long_frames
        self.pad_frames = pad_frames
        self._spoke = False
        """Speech seen, and the pause since is still short."""
        self._short = True
        """The current non-speech run (or the lead-in) is still short of ``long_frames``."""
        self._pause = 0
        self._held: list[np.ndarray] = []

    def push(self, frames: np.ndarray, voiced: np.ndarray) -> tuple[list[np.ndarray], list[bool]]:
        """Judged frames in (one row per frame); the frames kept so far and whether each is speech."""
        out: list[np.ndarray] = []
        flags: list[bool] = []
        for frame, is_speech in zip(frames, voiced, strict=True):
            if is_speech:
                released = self._held if self._short else self._held[-self.pad_frames :]
                out.extend(released)
                flags.extend([False] * len(released))
                out.append(frame)
                flags.append(True)
                self._held, self._spoke, self._short, self._pause = [], True, True, 0
                continue
            self._pause += 1
            if self._spoke and self._pause <= self.pad_frames:
                out.append(frame)  # the pad after speech: kept whatever follows
                flags.append(False)
                continue
            self._held.append(frame)
            if self._pause >= self.long_frames:
                self._short = False  # a long pause: only its last pad frames will be kept
            if not self._short:
                del self._held[: -self.pad_frames]
        return out, flags

    def flush(self) -> list[np.ndarray]:
        """At the end of the stream: the held tail when it is short and follows speech (else nothing)."""
        tail = self._held if self._spoke and self._short else []
        self._held, self._spoke, self._short, self._pause = [], False, True, 0
        return tail


def remove_dc(samples: np.ndarray) -> np.ndarray:
    """``samples`` less their mean over the non-zero samples when that is a DC offset (``DC_LIMIT``).

    Exact zeros (digital silence, DTX) stay exact zeros; a signal without an offset is returned as is.
    """
    signal = np.asarray(samples, dtype=np.float32)
    live = (signal != 0) & np.isfinite(signal)  # infinite samples would make the mean NaN
    if not live.any():
        return signal
    offset = float(np.mean(signal[live], dtype=np.float64))
    if not np.isfinite(offset) or abs(offset) <= DC_LIMIT:
        return signal
    out = signal.copy()
    out[live] -= np.float32(offset)
    return out
