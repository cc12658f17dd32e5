"""benchmarks/service.py's steady state: new calls reach the server at random moments over a call length,
and the measured window sees no start-up burst (it once opened all N calls in the same instant, 5 s
before measuring)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import service
    finally:
        sys.path.remove(str(BENCHMARKS))
    return service


class FakeService:
    """What ``steady`` needs of a server: metrics, CPU, memory; the calls go to a fake client."""

    ws, keys = "ws://fake", {"ivr": "key"}

    def __init__(self) -> None:
        self.stats = SimpleNamespace(cpu_s=time.process_time, rss_mb=lambda: 1.0)
        self.window: list[float] = []

    def metrics(self) -> str:
        self.window.append(time.monotonic())
        return ""


def test_steady_calls_reach_the_server_evenly_and_the_window_follows_the_ramp(bench, monkeypatch) -> None:  # noqa: ANN001
    starts: list[tuple[float, int]] = []

    async def fake_call(ws, key, claimed, frames, pace, arrivals=None):  # noqa: ANN001, ANN202
        starts.append((time.monotonic(), len(frames)))
        await asyncio.sleep(len(frames) * pace)
        return [], None, 0.0

    monkeypatch.setattr(bench, "twilio_call", fake_call)
    monkeypatch.setattr(bench, "latencies", lambda before, after: {})
    monkeypatch.setattr(bench, "to_authenticated", lambda timed: {})
    n, seconds, pace = 4, 0.8, 0.01
    calls = [(f"c{i}", [b"x"] * 200, True) for i in range(8)]
    service = FakeService()
    t0 = time.monotonic()
    asyncio.run(bench.steady(service, calls, n, seconds, measure_s=0.4, pace=pace))

    first = sorted(starts)[:n]
    offsets = [t - t0 for t, _ in first]
    planned = sorted(bench.arrival_offsets(n, seconds))
    for offset, plan in zip(offsets, planned, strict=True):  # each slot's first call opens at its own moment
        assert offset == pytest.approx(plan, abs=0.08)
    assert all(count == int(seconds / pace) for _, count in starts)  # whole calls: each is new to the server
    window_start = service.window[0] - t0
    assert window_start >= seconds  # measured once every slot has joined and arrived for a whole call length


def test_arrivals_are_random_over_a_call_length_never_all_at_once(bench) -> None:  # noqa: ANN001
    offsets = bench.arrival_offsets(50, 60.0)
    assert offsets == bench.arrival_offsets(50, 60.0)  # seeded: every run sees the same arrivals
    assert all(0.0 <= u < 60.0 for u in offsets) and len(set(offsets)) == 50
    assert max(offsets) - min(offsets) > 50.0  # spread over the call length
    assert 3 <= bench.busiest(offsets, 3.0) < 50  # random: clusters beyond the even spacing, no start-up burst
    assert bench.busiest([0.0] * 5 + [10.0], 3.0) == 5
