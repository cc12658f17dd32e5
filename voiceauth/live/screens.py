"""Screens: checks run on every update of a live call with the call's embeddings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Union

import numpy as np

from voiceauth.live.state import SessionSettings
from voiceauth.results import Flag

if TYPE_CHECKING:
    from voiceauth.fraud.watchlist import Watchlist


@dataclass(frozen=True)
class ScreenInput:
    """What a screen sees after each segment. Embeddings are unit length (or zero when absent)."""

    customer_id: str
    call_embedding: np.ndarray = field(repr=False)
    """All of the current evidence."""
    speech_s: float
    recent_embedding: np.ndarray = field(repr=False)
    """The last ``change_window_s`` of speech."""
    recent_s: float
    earlier_embedding: np.ndarray = field(repr=False)
    """The evidence before the recent window."""
    earlier_s: float


@dataclass(frozen=True)
class ScreenVerdict:
    """A screen's finding: a flag, and whether it withdraws (and bars) authentication."""

    flag: Flag
    withdraw: bool
    reason: str


Screen = Callable[[ScreenInput], Union[ScreenVerdict, None]]
"""A check run on a worker after every update; returns a verdict, or None when clean."""


def speaker_change_screen(threshold: float, min_earlier_s: float) -> Screen:
    """Flag SPEAKER_CHANGE when the recent speech stops matching the call's earlier speech."""

    def screen(data: ScreenInput) -> ScreenVerdict | None:
        if data.earlier_s < min_earlier_s or data.recent_s <= 0:
            return None
        similarity = float(data.recent_embedding @ data.earlier_embedding)
        if similarity >= threshold:
            return None
        return ScreenVerdict(
            Flag.SPEAKER_CHANGE, True,
            f"speaker change: last {data.recent_s:.1f} s match earlier speech at {similarity:.2f} < {threshold:.2f}",
        )

    return screen


def watchlist_screen(watchlist: Watchlist) -> Screen:
    """Flag FRAUDSTER_MATCH (and bar authentication) when the caller matches a watchlist entry."""

    def screen(data: ScreenInput) -> ScreenVerdict | None:
        hit = watchlist.screen(data.call_embedding, data.speech_s, data.customer_id)
        if hit is None:
            return None
        return ScreenVerdict(Flag.FRAUDSTER_MATCH, True, f"watchlist match {hit.label} (score {hit.score:.2f})")

    return screen


def default_screens(settings: SessionSettings, watchlist: Watchlist | None = None) -> tuple[Screen, ...]:
    screens: tuple[Screen, ...] = (speaker_change_screen(settings.change_threshold, settings.change_min_earlier_s),)
    return screens + ((watchlist_screen(watchlist),) if watchlist is not None else ())


def run_screens(screens: list[Screen], data: ScreenInput) -> list[ScreenVerdict]:
    """Run the screens still armed; one that fires is removed (its flag stays for the rest of the call)."""
    verdicts = []
    for screen in tuple(screens):
        verdict = screen(data)
        if verdict is not None:
            verdicts.append(verdict)
            screens.remove(screen)
    return verdicts
