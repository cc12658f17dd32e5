"""Service benchmark: real-time calls streamed to `voiceauth serve` over loopback, and a soak run.

    python benchmarks/service.py          # ECAPA on ONNX Runtime: N = 10, 25, 50 (burst; steady 25, 50); soak 200 calls
    python benchmarks/service.py --model campplus --soak-calls 0 --soak-verifies 0 \\
        --calibration benchmarks/results/calibration-campplus.json   # CAM++ (none shipped): service-campplus.json
    python benchmarks/service.py --levels 10 --soak-calls 50 --soak-verifies 20   # quick look

The server runs as its own process (``voiceauth serve --model MODEL`` on a fresh store, real models,
ECAPA or CAM++ and AASIST), so its CPU time and resident memory are measured alone, from /proc. Customers: the
10 LibriSpeech test-other speakers, enrolled over REST on 3 phone-channel files each, plus
30 train-clean speakers as a background population (AS-norm cohort).

Capacity: N Twilio Media Streams clients (one asyncio process) stream N calls at the same
time in real time (a 20 ms mu-law frame per call every 20 ms), each ``--seconds`` of one
speaker's further recordings, claimed as that speaker (genuine) or, every 3rd call, as
another (impostor). Reported per level: the service's decision latency (last frame of a
speech segment fed -> its scored update; the ``voiceauth_decision_latency_seconds``
histogram, p50/p95 interpolated within its buckets: of every update, and apart for calls still
deciding and for settled calls' watch, which waits behind them) and spoof-check latency, the end-of-call
latency (``stop`` sent -> final status received), the seconds from a genuine call's first frame to
AUTHENTICATED on its stream (what the agent waits for: speech, queues and spoof check), audio
dropped, CPU (cores used by the server process, and by this process's clients, which share the same
cores), and outcomes.
Baseline in the same run: one call alone (N = 1).

Steady state (``--steady N ...``): N calls always live, as in a contact centre where calls start and
end at different times: N slots each stream ``--steady-call-s`` calls back to back, slot i's first
call starting at a random moment within one call length (seeded), so new calls reach the server as
callers ring, at random but about N per call length, and, once every slot has joined, the N calls
are at every stage (opening, deciding, decided). Measured over ``--steady-window-s`` from one call
length in (until the evening of 7 December the slots all opened a call at the same instant, part-way
through its audio, and the window began 5 s later: it held a start-up burst of N first decisions):
the same latencies (histogram deltas over the window), CPU, and the calls that ended in the window.
The burst levels above are the worst case (all N calls decide and run their spoof check in the
same seconds); the steady levels are the load a live service sees.

Hand-overs (``--handover-every K``): in the steady levels every K-th genuine call hands the phone to
another speaker ``--handover-at-s`` seconds in (the claimed customer's speech, then the next
speaker's); these calls are left out of the genuine and impostor tallies and reported on their own:
how many were AUTHENTICATED before the hand-over, how many of those were then flagged or lost
AUTHENTICATED, and the seconds from the hand-over to that update on the stream.

Soak: ``--soak-calls`` calls (8 at a time, fed at 4x real time) and ``--soak-verifies`` REST
verifications through the same server process, resident memory sampled every 0.5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
RESULTS = ROOT / "benchmarks" / "results"
LIBRI = ROOT.parent / "shared" / "corpora" / "librispeech-samples"
FRAME_S = 0.02
"""One streamed frame: 160 mu-law samples at 8 kHz."""

from test_serve_support import request, statuses, twilio_call, wav_bytes  # noqa: E402

from voiceauth.audio.channel import telephone_channel  # noqa: E402
from voiceauth.audio.decode import load_audio  # noqa: E402
from voiceauth.audio.g711 import mulaw_encode  # noqa: E402
from voiceauth.serve.auth import KeyRing  # noqa: E402


def phone(path: Path) -> np.ndarray:
    return telephone_channel(load_audio(path)).samples


def frames_of(paths: list[Path], seconds: float) -> list[bytes]:
    codes = mulaw_encode(np.concatenate([phone(p) for p in paths]))[: int(seconds * 8000)]
    return [codes[i:i + 160].tobytes() for i in range(0, len(codes) - 159, 160)]


class Proc:
    """CPU seconds and resident memory of one process, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.tick = os.sysconf("SC_CLK_TCK")

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.tick

    def rss_mb(self) -> float:
        match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{self.pid}/status").read_text())
        return int(match.group(1)) / 1024 if match else 0.0


def histogram(text: str, name: str, labels: str = "") -> tuple[list[tuple[float, float]], float]:
    """(upper bound, cumulative count) buckets and the count of one histogram in exposition text, summed
    over its series whose labels contain ``labels`` (e.g. ``stage="watch"``)."""
    sums: dict[float, float] = {}
    for m in re.finditer(rf'{name}_bucket{{([^}}]*)}} ([0-9.e+]+)', text):
        le = re.search(r'le="([^"]+)"', m.group(1))
        if le and labels in m.group(1):
            bound = float("inf") if le.group(1) == "+Inf" else float(le.group(1))
            sums[bound] = sums.get(bound, 0.0) + float(m.group(2))
    buckets = sorted(sums.items())
    return buckets, buckets[-1][1] if buckets else 0.0


def delta_quantile(before: list[tuple[float, float]], after: list[tuple[float, float]], q: float) -> float | None:
    """Quantile of the observations between two scrapes, interpolated linearly within a bucket."""
    counts = [(b, a[1] - (before[i][1] if before else 0.0)) for i, (b, a) in enumerate(zip([x[0] for x in after],
                                                                                          after, strict=True))]
    total = counts[-1][1] if counts else 0.0
    if total <= 0:
        return None
    target, low, low_count = q * total, 0.0, 0.0
    for bound, cum in counts:
        if cum >= target:
            if bound == float("inf"):
                return low
            return round(low + (bound - low) * (target - low_count) / max(cum - low_count, 1e-9), 3)
        low, low_count = bound, cum
    return None


def latencies(before: str, after: str) -> dict[str, object]:
    """Decision and spoof-check latency p50 / p95 of the updates between two /metrics scrapes."""
    out: dict[str, object] = {}
    for name, key, labels in (("voiceauth_decision_latency_seconds", "decision_latency", ""),
                              ("voiceauth_decision_latency_seconds", "deciding_latency", 'stage="deciding"'),
                              ("voiceauth_decision_latency_seconds", "watch_latency", 'stage="watch"'),
                              ("voiceauth_spoof_check_latency_seconds", "spoof_check_latency", "")):
        b, _ = histogram(before, name, labels)
        a, total = histogram(after, name, labels)
        out[key] = {"updates": int(total - (b[-1][1] if b else 0)), "p50_s": delta_quantile(b, a, 0.5),
                    "p95_s": delta_quantile(b, a, 0.95)}
    return out


class Service:
    def __init__(self, workdir: Path, model: str = "ecapa", calibration: Path | None = None) -> None:
        self.workdir = workdir
        ring = KeyRing()
        self.keys = {k: ring.create(k, [s]) for k, s in (("ivr", "stream"), ("ops", "admin"), ("prom", "metrics"),
                                                         ("teller", "verify"))}
        ring.save(workdir / "keys.json")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = dict(os.environ, VOICEAUTH_KEY_FILE=str(workdir / "keyring.json"), HF_HUB_OFFLINE="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "voiceauth", "serve", "--store", str(workdir / "vp.db"), "--keys",
             str(workdir / "keys.json"), "--port", str(self.port), "--log-level", "warning", "--actor", "bench",
             "--model", model, *(["--calibration", str(calibration)] if calibration else [])],
            env=env, stdout=subprocess.DEVNULL, stderr=open(workdir / "server.log", "w"))  # noqa: SIM115
        self.http, self.ws = f"http://127.0.0.1:{self.port}", f"ws://127.0.0.1:{self.port}"
        self.stats = Proc(self.proc.pid)
        deadline = time.monotonic() + 300
        while True:
            try:
                if request("GET", f"{self.http}/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"server did not get ready; see {workdir / 'server.log'}")
            time.sleep(0.5)

    def metrics(self) -> str:
        return request("GET", f"{self.http}/metrics", self.keys["prom"])[1]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def enrol(service: Service, speakers: dict[str, list[Path]]) -> None:
    consent = {"consent_channel": "ivr", "consent_notice_version": "bench"}
    for spk, files in speakers.items():
        audio = [("audio", f"{p.stem}.wav", wav_bytes(phone(p), 8000)) for p in files[:3]]
        status, body = request("POST", f"{service.http}/v1/customers/{spk}/enrol", service.keys["ops"], consent, audio)
        assert status == 201, body
    for p in sorted((LIBRI / "train-clean").glob("*.flac"))[:30]:
        status, body = request("POST", f"{service.http}/v1/customers/bg-{p.stem}/enrol", service.keys["ops"], consent,
                               [("audio", "a.wav", wav_bytes(phone(p), 8000))])
        if isinstance(body, dict) and body.get("error") == "NoSpeechError":  # a short file: not a customer
            print(f"  background {p.stem} skipped: {body['message']}", flush=True)
            continue
        assert status in (201, 202), body


def to_authenticated(runs: list[tuple[list[dict], list[float], float]]) -> dict[str, float | int | None]:
    """Seconds from a call's first frame to its first AUTHENTICATED status on the stream (calls that got
    one): what the agent waits for, spoof check and queues included, next to the speech it took."""
    waits, speech = [], []
    for messages, arrivals, started in runs:
        for message, at in zip(messages, arrivals, strict=True):
            call = message.get("call") if message.get("event") == "voiceauth.status" else None
            if call and call["status"] == "authenticated":
                waits.append(at - started)
                speech.append(call["decided_at_speech_s"] or 0.0)
                break
    if not waits:
        return {"calls": 0, "p50_s": None, "p95_s": None}
    return {"calls": len(waits), "p50_s": round(float(np.percentile(waits, 50)), 2),
            "p95_s": round(float(np.percentile(waits, 95)), 2),
            "speech_at_decision_p50_s": round(float(np.percentile(speech, 50)), 2)}


async def level(service: Service, calls: list[tuple[str, list[bytes], bool]], pace: float,
                stagger_s: float) -> dict[str, object]:
    arrivals: list[list[float]] = [[] for _ in calls]
    starts = [0.0] * len(calls)

    async def one(index: int, claimed: str, frames: list[bytes]) -> tuple[list[dict], int | None, float]:
        await asyncio.sleep(index * stagger_s)
        started = starts[index] = time.monotonic()
        messages, code, _ = await twilio_call(service.ws, service.keys["ivr"], claimed, frames, pace,
                                              arrivals=arrivals[index])
        return messages, code, time.monotonic() - started - len(frames) * pace

    before = service.metrics()
    cpu0, t0, client0 = service.stats.cpu_s(), time.monotonic(), time.process_time()
    rss: list[float] = []

    async def sample() -> None:
        while True:
            rss.append(service.stats.rss_mb())
            await asyncio.sleep(0.5)

    sampler = asyncio.create_task(sample())
    results = await asyncio.gather(*(one(i, c, f) for i, (c, f, _) in enumerate(calls)))
    sampler.cancel()
    wall, cpu = time.monotonic() - t0, service.stats.cpu_s() - cpu0
    client = time.process_time() - client0
    after = service.metrics()
    out: dict[str, object] = {"calls": len(calls), "wall_s": round(wall, 1), "server_cpu_cores": round(cpu / wall, 2),
                              "client_cpu_cores": round(client / wall, 2), "server_rss_mb_max": round(max(rss), 0)}
    out |= latencies(before, after)
    finals = [m[-1]["call"] if m and m[-1].get("event") == "voiceauth.status" else None for m, _, _ in results]
    tails = sorted(t for _, _, t in results)
    out["end_of_call_latency_s"] = {"p50": round(tails[len(tails) // 2], 3),
                                    "p95": round(tails[min(len(tails) - 1, int(0.95 * len(tails)))], 3)}
    out["genuine_to_authenticated"] = to_authenticated(
        [(m, a, s) for (m, _, _), a, s, (_, _, g) in zip(results, arrivals, starts, calls, strict=True) if g])
    out["dropped_audio_s"] = round(sum(f["dropped_audio_s"] for f in finals if f), 2)
    out["thinned_under_load_s"] = round(sum(f["thinned_under_load_s"] for f in finals if f), 2)
    out["clean_closes"] = sum(code == 1000 for _, code, _ in results)
    genuine = [f for f, (_, _, g) in zip(finals, calls, strict=True) if g]
    impostor = [f for f, (_, _, g) in zip(finals, calls, strict=True) if not g]
    out["genuine_authenticated"] = f"{sum(bool(f) and f['status'] == 'authenticated' for f in genuine)}/{len(genuine)}"
    out["impostor_ever_authenticated"] = (
        f"{sum('authenticated' in [s for s, _ in statuses(m)] for (m, _, _), (_, _, g) in zip(results, calls, strict=True) if not g)}"  # noqa: E501
        f"/{len(impostor)}")
    return out


ARRIVAL_SEED = 3
"""Seed of the steady levels' call arrivals (:func:`arrival_offsets`)."""


def arrival_offsets(n: int, seconds: float, seed: int = ARRIVAL_SEED) -> list[float]:
    """When each of ``n`` slots opens its first call: independent, uniform over one call length
    (seeded), as callers ring a contact centre at random: some calls open within a second of each
    other, others are seconds apart. With every call ``seconds`` long, the pattern repeats each call
    length."""
    rng = random.Random(seed)
    return [round(rng.uniform(0.0, seconds), 3) for _ in range(n)]


def busiest(offsets: list[float], span_s: float) -> int:
    """The most calls that open within ``span_s`` of each other."""
    times = sorted(offsets)
    return max((sum(1 for u in times[i:] if u - t < span_s) for i, t in enumerate(times)), default=0)


async def steady(service: Service, calls: list[tuple[str, list[bytes], bool]], n: int, seconds: float,
                 measure_s: float, pace: float = FRAME_S,
                 handovers: dict[int, float] | None = None) -> dict[str, object]:
    """``n`` call slots, each running whole calls back to back; slot ``i``'s first call starts at
    :func:`arrival_offsets` ``[i]`` (random within one call length), so new calls reach the server
    as callers ring, about one every ``seconds / n``, and, once every slot has joined, the live calls
    are at every stage, as in a contact centre.
    Measured over ``measure_s`` from ``seconds`` in (every slot busy, calls arriving as callers ring
    for a whole call length: no start-up burst in the window): latency (histogram deltas), CPU, and every call that
    ended in the window (dropped audio, outcomes)."""
    per_call = int(seconds / pace)
    offsets = arrival_offsets(n, seconds)
    start = time.monotonic()
    window: dict[str, float] = {}
    ended: list[tuple[list[dict], bool]] = []
    timed: list[tuple[list[dict], list[float], float]] = []
    handed: list[tuple[list[dict], list[float], float, float]] = []
    handovers = handovers or {}

    async def slot(i: int) -> None:
        j = 0
        await asyncio.sleep(max(0.0, start + offsets[i] - time.monotonic()))
        while "end" not in window or time.monotonic() < window["end"]:
            index = (i + j * n) % len(calls)
            claimed, frames, genuine = calls[index]
            arrivals: list[float] = []
            started = time.monotonic()
            messages, _, _ = await twilio_call(service.ws, service.keys["ivr"], claimed, frames[:per_call], pace,
                                               arrivals=arrivals)
            if index in handovers:  # neither genuine nor impostor throughout: measured on their own
                if "start" in window and window["start"] <= started <= window["end"]:
                    handed.append((messages, arrivals, started, handovers[index]))
            elif "start" in window and time.monotonic() <= window["end"] + 5.0:
                ended.append((messages, genuine))
            if genuine and "start" in window and window["start"] <= started <= window["end"]:
                timed.append((messages, arrivals, started))  # started under the measured load
            j += 1

    tasks = [asyncio.create_task(slot(i)) for i in range(n)]
    await asyncio.sleep(max(0.0, start + seconds - time.monotonic()))  # every slot has joined, no start-up burst
    before, cpu0, t0, client0 = service.metrics(), service.stats.cpu_s(), time.monotonic(), time.process_time()
    window.update(start=t0, end=t0 + measure_s)
    rss: list[float] = []
    while time.monotonic() < window["end"]:
        rss.append(service.stats.rss_mb())
        await asyncio.sleep(0.5)
    wall, cpu, after = time.monotonic() - t0, service.stats.cpu_s() - cpu0, service.metrics()
    client = time.process_time() - client0
    await asyncio.gather(*tasks)
    out: dict[str, object] = {"calls_live": n, "call_s": seconds, "window_s": round(wall, 1),
                              "server_cpu_cores": round(cpu / wall, 2), "client_cpu_cores": round(client / wall, 2),
                              "server_rss_mb_max": round(max(rss), 0),
                              "arrivals": {"random_phase_seed": ARRIVAL_SEED,
                                           "most_opening_within_3s": busiest(offsets, 3.0),
                                           "even_spacing_s": round(seconds / n, 2)}}
    out |= latencies(before, after)
    finals = [(m[-1]["call"] if m and m[-1].get("event") == "voiceauth.status" else None, g) for m, g in ended]
    out["calls_ended_in_window"] = len(finals)
    out["genuine_to_authenticated"] = to_authenticated(timed)
    out["dropped_audio_s"] = round(sum(f["dropped_audio_s"] for f, _ in finals if f), 2)
    out["thinned_under_load_s"] = round(sum(f["thinned_under_load_s"] for f, _ in finals if f), 2)
    out["genuine_authenticated"] = (f"{sum(bool(f) and f['status'] == 'authenticated' for f, g in finals if g)}"
                                    f"/{sum(g for _, g in finals)}")
    ever = sum("authenticated" in [s for s, _ in statuses(m)] for m, g in ended if not g)
    out["impostor_ever_authenticated"] = f"{ever}/{sum(not g for _, g in finals)}"
    if handovers:
        out["handover"] = handed_over(handed)
    return out


def handed_over(runs: list[tuple[list[dict], list[float], float, float]]) -> dict[str, object]:
    """Calls in which the claimed customer hands the phone to someone else ``at_s`` seconds in (the frames
    are paced in real time): how many were AUTHENTICATED before it, how many of those were then flagged
    (speaker_change) or lost AUTHENTICATED, and the seconds from the hand-over to the first such update
    on the stream."""
    before = caught = 0
    delays: list[float] = []
    for messages, arrivals, started, at_s in runs:
        switch = started + at_s
        calls = [(m["call"], at) for m, at in zip(messages, arrivals, strict=True)
                 if m.get("event") == "voiceauth.status"]
        if not any(c["status"] == "authenticated" and at <= switch for c, at in calls):
            continue
        before += 1
        after = [at for c, at in calls if at > switch
                 and ("speaker_change" in c["flags"] or c["status"] != "authenticated")]
        if after:
            caught += 1
            delays.append(after[0] - switch)
    return {"calls": len(runs), "authenticated_before": before, "caught": caught,
            "delay_p50_s": round(float(np.percentile(delays, 50)), 2) if delays else None,
            "delay_p95_s": round(float(np.percentile(delays, 95)), 2) if delays else None}


def with_handovers(calls: list, speakers: dict[str, list[Path]], every: int, at_s: float,
                   seconds: float) -> tuple[list, dict[int, float]]:
    """Every ``every``-th genuine call made a hand-over: its first ``at_s`` seconds from the claimed
    speaker, the rest from the next speaker (never enrolled under the claimed id)."""
    ids = sorted(speakers)
    out, handovers, seen = list(calls), {}, 0
    tails: dict[str, list[bytes]] = {}
    for k, (claimed, frames, genuine) in enumerate(calls):
        if not genuine:
            continue
        seen += 1
        if seen % every:
            continue
        other = ids[(ids.index(claimed) + 1) % len(ids)]
        if other not in tails:
            tails[other] = frames_of(speakers[other][3:], seconds - at_s)
        out[k] = (claimed, frames[: int(at_s / FRAME_S)] + tails[other], True)
        handovers[k] = at_s
    return out, handovers


def make_calls(speakers: dict[str, list[Path]], n: int, seconds: float, seed: int = 0) -> list:
    rng = random.Random(seed)
    ids = sorted(speakers)
    cache: dict[str, list[bytes]] = {}
    calls = []
    for i in range(n):
        spk = ids[i % len(ids)]
        if spk not in cache:
            cache[spk] = frames_of(speakers[spk][3:], seconds)
        genuine = i % 3 != 2
        claimed = spk if genuine else rng.choice([s for s in ids if s != spk])
        calls.append((claimed, cache[spk], genuine))
    return calls


async def soak(service: Service, speakers: dict[str, list[Path]], n_calls: int, n_verifies: int,
               seconds: float) -> dict[str, object]:
    rss: list[tuple[float, float]] = []
    t0 = time.monotonic()
    done = {"calls": 0, "verifies": 0, "authenticated": 0, "accepted": 0}

    async def sample() -> None:
        while True:
            rss.append((round(time.monotonic() - t0, 1), round(service.stats.rss_mb(), 1)))
            await asyncio.sleep(0.5)

    calls = make_calls(speakers, n_calls, seconds, seed=1)
    sem = asyncio.Semaphore(8)

    async def call(claimed: str, frames: list[bytes]) -> None:
        async with sem:
            messages, _, _ = await twilio_call(service.ws, service.keys["ivr"], claimed, frames, 0.005)
        done["calls"] += 1
        done["authenticated"] += bool(statuses(messages)) and statuses(messages)[-1][0] == "authenticated"

    ids = sorted(speakers)
    samples = {s: wav_bytes(phone(speakers[s][8]), 8000) for s in ids}

    async def verifies() -> None:
        for i in range(n_verifies):
            spk = ids[i % len(ids)]
            status, body = await asyncio.to_thread(request, "POST", f"{service.http}/v1/customers/{spk}/verify",
                                                   service.keys["teller"], None, [("audio", "a.wav", samples[spk])])
            done["verifies"] += 1
            done["accepted"] += status == 200 and body["decision"] == "accept"

    sampler = asyncio.create_task(sample())
    await asyncio.gather(verifies(), *(call(c, f) for c, f, _ in calls))
    sampler.cancel()
    values = [v for _, v in rss]
    quarter = max(1, len(values) // 4)
    return {**done, "wall_s": round(time.monotonic() - t0, 1), "rss_mb_start": values[0],
            "rss_mb_max": max(values), "rss_mb_end": values[-1],
            "rss_mb_first_quarter_max": max(values[:quarter]), "rss_mb_last_quarter_max": max(values[-quarter:]),
            "rss_timeline": rss[:: max(1, len(rss) // 200)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--seconds", type=float, default=12.0, help="audio per capacity call")
    parser.add_argument("--stagger", type=float, default=0.05, help="seconds between call starts")
    parser.add_argument("--steady", type=int, nargs="*", default=[25, 50],
                        help="steady-state levels: N calls always live, at every stage (none: skip)")
    parser.add_argument("--steady-call-s", type=float, default=60.0, help="audio per steady-state call")
    parser.add_argument("--steady-window-s", type=float, default=60.0, help="measured window per steady level")
    parser.add_argument("--soak-calls", type=int, default=200)
    parser.add_argument("--soak-verifies", type=int, default=100)
    parser.add_argument("--model", default="ecapa-onnx", choices=("ecapa", "ecapa-onnx", "campplus"),
                        help="speaker model the server runs (default ecapa-onnx, as `voiceauth serve`)")
    parser.add_argument("--calibration", type=Path, help="calibration file for a model without a shipped one "
                        "(campplus: results/calibration-campplus.json, from accuracy.py)")
    parser.add_argument("--handover-every", type=int, default=0, metavar="K",
                        help="steady levels: every K-th genuine call hands the phone over (0: none)")
    parser.add_argument("--handover-at-s", type=float, default=20.0, help="seconds into a call of the hand-over")
    parser.add_argument("--out", type=Path, help="default results/service.json (ecapa-onnx, the server's default) "
                        "or service-MODEL.json")
    args = parser.parse_args()
    out: Path = args.out or RESULTS / ("service.json" if args.model == "ecapa-onnx" else f"service-{args.model}.json")
    speakers = {d.name: sorted(d.glob("*.flac")) for d in sorted((LIBRI / "test-other").iterdir()) if d.is_dir()}
    with tempfile.TemporaryDirectory() as tmp:
        service = Service(Path(tmp), args.model, args.calibration)
        try:
            enrol(service, speakers)
            report: dict[str, object] = {"machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()},
                                         "model": args.model, "seconds_per_call": args.seconds, "levels": {}}
            rss_ready = service.stats.rss_mb()
            report["server_rss_mb_after_enrolment"] = round(rss_ready, 0)
            for n in [1, *args.levels]:
                result = asyncio.run(level(service, make_calls(speakers, n, args.seconds), FRAME_S, args.stagger))
                report["levels"][str(n)] = result  # type: ignore[index]
                print(f"N={n}: {json.dumps(result)}", flush=True)
            if args.steady:
                report["steady"] = {"call_s": args.steady_call_s, "window_s": args.steady_window_s, "levels": {}}
                for n in args.steady:
                    calls, handovers = make_calls(speakers, 3 * n, args.steady_call_s, seed=2), {}
                    if args.handover_every:
                        calls, handovers = with_handovers(calls, speakers, args.handover_every, args.handover_at_s,
                                                          args.steady_call_s)
                    result = asyncio.run(steady(service, calls, n, args.steady_call_s, args.steady_window_s,
                                                handovers=handovers))
                    report["steady"]["levels"][str(n)] = result  # type: ignore[index]
                    print(f"steady N={n}: {json.dumps(result)}", flush=True)
            if args.soak_calls or args.soak_verifies:
                report["soak"] = asyncio.run(soak(service, speakers, args.soak_calls, args.soak_verifies, 8.0))
                print("soak:", {k: v for k, v in report["soak"].items() if k != "rss_timeline"}, flush=True)  # type: ignore[union-attr]
        finally:
            service.stop()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
