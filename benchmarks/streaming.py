"""Live-call benchmark: how soon genuine callers are AUTHENTICATED, how rarely impostors are,
how long ``feed()`` takes, and how many real-time calls the machine sustains.

    python benchmarks/streaming.py            # writes results/streaming.json and streaming.png

Corpora (phone channel: 8 kHz, 300-3400 Hz, G.711 mu-law, fed as 20 ms frames):

* LibriSpeech test-other: 10 speakers enrolled on 3 files; a call is two further files of
  one speaker; every call is also claimed as each of the 9 other speakers (impostors);
  spliced calls are ~8 s of one speaker's call followed by another speaker's call.
* speakerbox council meetings: speakers enrolled in the meeting where most of them talk,
  calls are up to 20 s pieces of their speech in the other meetings.

Each store also holds a background population of customers, as a bank's does: the first
half of LibriSpeech train-clean (125 speakers, phone channel; the same cohort as
accuracy.py), so live calls are scored with AS-norm, never against a SMALL_COHORT.

Accuracy part: calls are fed faster than real time with deep queues (nothing dropped);
an embedding cache and a spoof-verdict cache share the models' work between sessions fed
the same audio (one call claimed as several customers), so every session still runs the
whole live pipeline, spoof check included. Every update of every session is recorded,
so the sequential decision can be replayed offline: that gives the net speech at which a
real-time call would be decided (feeding faster than real time lets more speech in while
the ~0.4 s spoof check runs), and the sweep of ``accept_margin_llr`` that chose the
default (on LibriSpeech; the meetings are held out).
Capacity part: N calls fed in real time by one IVR thread (a 20 ms frame per call every
20 ms) on the default pool and the real models (speaker and spoof) without cache. Two
arrival patterns: *steady*, N call slots whose calls (60 s, and 15 s: ``--seconds``)
start spread out and are replaced as they end, so N calls are always live at different
stages, measured once the slots are full (each call costs one spoof check, so shorter
calls cost more per second); *burst*, N 15 s calls starting in the same 20 ms (all N
spoof checks then fall in the same seconds: a worst case). A level is sustained when the
p95 of the decision latency (last frame of a segment fed -> its update published) and of
the spoof-verdict latency (check queued -> verdict published: it gates AUTHENTICATED) are
both under 1 s and no audio or speech was dropped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voiceauth.audio.channel import telephone_channel
from voiceauth.audio.decode import load_audio
from voiceauth.audio.g711 import mulaw_decode, mulaw_encode
from voiceauth.client import VoiceAuth
from voiceauth.embedding.ecapa import EcapaEmbedder
from voiceauth.errors import NoSpeechError
from voiceauth.fraud.spoof import SpoofDetector, SpoofResult
from voiceauth.live import CallResult, CallStatus, SessionPool, SessionSettings
from voiceauth.results import Flag
from voiceauth.scoring.normalisation import Normalisation
from voiceauth.speech.activity import SpeechGate
from voiceauth.store.base import Consent
from voiceauth.tools.samples import enrolment_meeting, meeting_speech, meetings

ROOT = Path(__file__).resolve().parents[1]
LIBRI = ROOT.parent / "shared" / "corpora" / "librispeech-samples" / "test-other"
COHORT = ROOT.parent / "shared" / "corpora" / "librispeech-samples" / "train-clean"
MARGINS = [round(0.5 * i, 1) for i in range(13)]
BARRING = {Flag.SPEAKER_CHANGE, Flag.FRAUDSTER_MATCH, Flag.SPOOF_SUSPECTED}
RESULTS = ROOT / "benchmarks" / "results"
FRAME = 160
CALL_MAX_S = 20.0
SPLICE_S = 9.0
MAX_CALLS_PER_SPEAKER = 4


class CachedEmbedder:
    """Embeds each distinct signal once (sessions fed the same call share segments)."""

    def __init__(self, inner: EcapaEmbedder) -> None:
        self.inner, self.model_id, self.dim = inner, inner.model_id, inner.dim
        self._cache: dict[bytes, np.ndarray] = {}
        self._lock = threading.Lock()

    def embed(self, signals: Sequence[np.ndarray]) -> np.ndarray:
        keys = [hashlib.blake2b(np.ascontiguousarray(s).tobytes(), digest_size=16).digest() for s in signals]
        with self._lock:
            missing = {k: s for k, s in zip(keys, signals, strict=True) if k not in self._cache}
        if missing:
            fresh = self.inner.embed(list(missing.values()))
            with self._lock:
                self._cache.update(zip(missing, fresh, strict=True))
        with self._lock:
            return np.stack([self._cache[k] for k in keys])


class CachedSpoof:
    """Scores each distinct snapshot once (every claim of one call takes the same snapshot)."""

    def __init__(self, inner: SpoofDetector) -> None:
        self.inner, self.threshold = inner, inner.threshold
        self._cache: dict[bytes, SpoofResult] = {}
        self._lock = threading.Lock()

    def score_speech(self, samples: np.ndarray, sample_rate: int) -> SpoofResult:
        key = hashlib.blake2b(np.ascontiguousarray(samples).tobytes(), digest_size=16).digest()
        with self._lock:
            hit = self._cache.get(key)
        if hit is None:
            hit = self.inner.score_speech(samples, sample_rate)
            with self._lock:
                self._cache[key] = hit
        return hit


def phone(path: Path) -> np.ndarray:
    return telephone_channel(load_audio(path)).samples


def mulaw_frames(x: np.ndarray) -> list[bytes]:
    codes = mulaw_encode(x)
    return [codes[i : i + FRAME].tobytes() for i in range(0, len(codes) - FRAME + 1, FRAME)]


def librispeech() -> tuple[dict[str, list[np.ndarray]], list[tuple[str, np.ndarray]]]:
    speakers = {d.name: sorted(d.glob("*.flac")) for d in sorted(LIBRI.iterdir()) if d.is_dir()}
    enrol = {s: [phone(p) for p in files[:3]] for s, files in speakers.items()}
    calls = []
    for s, files in speakers.items():
        tests = files[3:]
        for i in range(0, len(tests) - 1, 2):
            calls.append((s, np.concatenate([phone(tests[i]), np.zeros(2400, np.float32), phone(tests[i + 1])])))
    return enrol, calls


def meeting_calls() -> tuple[dict[str, list[np.ndarray]], list[tuple[str, np.ndarray]]]:
    by_meeting = meetings(meeting_speech())
    home = enrolment_meeting(by_meeting)
    enrol = {s: [phone(p) for p in files] for s, files in by_meeting[home].items()}
    calls: list[tuple[str, np.ndarray]] = []
    for meeting, spk_files in sorted(by_meeting.items()):
        if meeting == home:
            continue
        for s, files in sorted(spk_files.items()):
            if s not in enrol:
                continue
            for f in files:
                x = phone(f)
                step = int(CALL_MAX_S * 8000)
                for start in range(0, len(x), step):
                    piece = x[start : start + step]
                    if len(piece) >= 6 * 8000 and sum(c[0] == s for c in calls) < MAX_CALLS_PER_SPEAKER:
                        calls.append((s, piece))
    return enrol, calls


def enrol_background(va: VoiceAuth) -> int:
    """The bank's other customers: the AS-norm cohort live calls are scored against."""
    files = sorted(COHORT.glob("*.flac"))
    files = files[: len(files) // 2]
    consent = Consent.now(channel="benchmark", notice_version="v1", captured_by="benchmarks/streaming.py")
    required, va.enrol_speech_s = va.enrol_speech_s, 3.0
    enrolled = 0
    try:
        for f in files:
            try:
                va.enroll(f"background-{f.stem}", [phone(f)], consent=consent, sample_rate=8000)
                enrolled += 1
            except NoSpeechError:  # a second of speech: not a usable voiceprint
                continue
    finally:
        va.enrol_speech_s = required
    return enrolled


def enrol_all(va: VoiceAuth, enrol: dict[str, list[np.ndarray]]) -> list[str]:
    consent = Consent.now(channel="benchmark", notice_version="v1", captured_by="benchmarks/streaming.py")
    done = []
    for s, pieces in enrol.items():
        progress = va.enroll(s, list(pieces), consent=consent, sample_rate=8000)
        if progress.complete:
            done.append(s)
    return done


Trajectory = list[CallResult]


def run_sessions(va: VoiceAuth, claims: Sequence[str], frames: list[bytes]) -> list[Trajectory]:
    """One call's audio fed to one session per claimed customer, faster than real time.

    Returns each session's updates (one per scored segment or spoof verdict), ending with
    its final result."""
    trajectories: list[Trajectory] = [[] for _ in claims]
    calls = [va.start_call(c, on_update=t.append) for c, t in zip(claims, trajectories, strict=True)]
    for i, frame in enumerate(frames):
        for call in calls:
            call.feed(frame)
        if i % 50 == 49:
            time.sleep(0.002)
    for call in calls:
        call.close()
    for call, trajectory in zip(calls, trajectories, strict=True):
        trajectory.append(call.result(wait=300))
    return trajectories


def first_accept(result: CallResult) -> float:
    hits = [r.speech_s for r in result.revisions if r.status is CallStatus.AUTHENTICATED]
    return hits[0] if hits else float("inf")


def replay(trajectory: Trajectory, accept_llr: float, decision_s: float, spoof_gate: bool = True) -> float:
    """Net speech at which a real-time call with this accept threshold is first AUTHENTICATED
    (inf: never). Authentication is barred from the first update carrying a barring flag,
    and, with ``spoof_gate``, for the whole call when its spoof check failed."""
    final = trajectory[-1]
    if spoof_gate and Flag.SPOOF_SUSPECTED in final.flags:
        return float("inf")
    for update in trajectory[:-1]:
        if BARRING & (set(update.flags) - {Flag.SPOOF_SUSPECTED}):
            return float("inf")
        if update.speech_s >= decision_s and update.llr >= accept_llr:
            return update.speech_s
    return float("inf")


def sweep(genuine: list[Trajectory], impostor: list[Trajectory], base_llr: float,
          decision_s: float) -> list[dict[str, float]]:
    """Replayed genuine / impostor outcomes for each accept margin (spoof check off: the
    margin is about the speaker evidence)."""
    rows = []
    for margin in MARGINS:
        g = np.array([replay(t, base_llr + margin, decision_s, spoof_gate=False) for t in genuine])
        i = np.array([replay(t, base_llr + margin, decision_s, spoof_gate=False) for t in impostor])
        rows.append({"margin_llr": margin, "genuine_median_s": _finite(np.median(g)),
                     "genuine_within_10s": round(float(np.mean(g <= 10.0)), 3),
                     "impostor_ever_authenticated": round(float(np.mean(np.isfinite(i))), 4)})
    return rows


def ever(result: CallResult, status: CallStatus) -> bool:
    return any(r.status is status for r in result.revisions)


@dataclass
class Runs:
    """Every session's trajectory for one corpus."""

    genuine: list[Trajectory] = field(default_factory=list)
    impostor: list[Trajectory] = field(default_factory=list)
    spliced: list[Trajectory] = field(default_factory=list)
    splice_at_s: list[float] = field(default_factory=list)
    """Net speech the session's speech gate finds in each spliced call's first speaker."""


def run_corpus(va: VoiceAuth, name: str, enrolled: list[str], calls: list[tuple[str, np.ndarray]],
               splice: bool) -> Runs:
    runs = Runs()
    for index, (speaker, x) in enumerate(calls):
        if speaker not in enrolled:
            continue
        others = [s for s in enrolled if s != speaker]
        results = run_sessions(va, [speaker, *others], mulaw_frames(x))
        runs.genuine.append(results[0])
        runs.impostor += results[1:]
        if splice:
            _, y = next(c for c in calls[index + 1 :] + calls if c[0] != speaker)
            head = mulaw_frames(x)[: int(SPLICE_S * 50)]
            runs.spliced += run_sessions(va, [speaker], head + mulaw_frames(y))
            runs.splice_at_s.append(gated_speech_s(head))
        print(f"  {name}: {index + 1}/{len(calls)} calls", flush=True)
    return runs


def gated_speech_s(frames: list[bytes]) -> float:
    """Net speech of some frames as a live session's speech gate counts it."""
    gate = SpeechGate(8000)
    return sum(len(gate.push(mulaw_decode(f))) for f in frames) / 8000


def _finite(value: float) -> float | None:
    """JSON has no infinity: None stands for 'never'."""
    return round(float(value), 2) if np.isfinite(value) else None


def _stats(times: list[float]) -> dict[str, object]:
    t = np.array(times)
    finite = t[np.isfinite(t)]
    return {
        "median": _finite(np.median(t)),
        "p90": _finite(np.percentile(t, 90)) if len(finite) else None,
        "mean_of_authenticated": round(float(finite.mean()), 2) if len(finite) else None,
        "within_10s": round(float(np.mean(t <= 10.0)), 3),
        "ever_authenticated": round(float(np.mean(np.isfinite(t))), 3),
    }


def summarise(runs: Runs, accept_llr: float, decision_s: float) -> dict[str, object]:
    genuine = [t[-1] for t in runs.genuine]
    impostor = [t[-1] for t in runs.impostor]
    out: dict[str, object] = {"genuine_calls": len(genuine),
                              "genuine_speech_s_median": round(float(np.median([r.speech_s for r in genuine])), 1)}
    for gate in (True, False):
        g = [replay(t, accept_llr, decision_s, gate) for t in runs.genuine]
        i = np.array([replay(t, accept_llr, decision_s, gate) for t in runs.impostor])
        out["real_time_replay" + ("" if gate else "_without_spoof_check")] = {
            "net_speech_to_authenticated_s": _stats(g),
            "impostor_ever_authenticated": round(float(np.mean(np.isfinite(i))), 4),
            "impostor_ever_authenticated_count": int(np.isfinite(i).sum()),
        }
    out["spoof_check"] = {
        "genuine_calls_suspected": int(sum(Flag.SPOOF_SUSPECTED in r.flags for r in genuine)),
        "genuine_spoof_score_median": _median([r.spoof_score for r in genuine]),
    }
    out["pipeline_as_fed"] = {
        "note": "fed faster than real time: decided_at includes speech fed while the spoof check ran",
        "net_speech_to_authenticated_s": _stats([first_accept(r) for r in genuine]),
        "genuine_final_status": _counts(genuine),
        "impostor_sessions": len(impostor),
        "impostor_ever_authenticated": round(float(np.mean([ever(r, CallStatus.AUTHENTICATED) for r in impostor])), 4),
        "impostor_ever_authenticated_count": int(sum(ever(r, CallStatus.AUTHENTICATED) for r in impostor)),
        "impostor_final_status": _counts(impostor),
        "normalisation": sorted({_normalisation(r) for r in genuine + impostor}),
    }
    out["genuine_false_speaker_change"] = round(float(np.mean([_changed(r) for r in genuine])), 3)
    if runs.spliced:
        out["spliced"] = spliced_summary(runs, accept_llr, decision_s)
    return out


def spliced_summary(runs: Runs, accept_llr: float, decision_s: float) -> dict[str, object]:
    """Speaker change: how often and how soon after the hand-over it is flagged."""
    delays, withdrawn, authed = [], 0, 0
    for trajectory, at in zip(runs.spliced, runs.splice_at_s, strict=True):
        flagged = next((u.speech_s for u in trajectory if Flag.SPEAKER_CHANGE in u.flags), None)
        delays.append(float("inf") if flagged is None else max(flagged - at, 0.0))
        first = replay(trajectory, accept_llr, decision_s, spoof_gate=True)
        if first <= at:
            authed += 1
            withdrawn += not trajectory[-1].authenticated
    d = np.array(delays)
    final = [t[-1] for t in runs.spliced]
    return {
        "calls": len(runs.spliced),
        "first_speaker_net_speech_s_median": round(float(np.median(runs.splice_at_s)), 2),
        "speaker_change_flagged": round(float(np.mean(np.isfinite(d))), 3),
        "detection_delay_net_speech_s": {
            "median_of_flagged": round(float(np.median(d[np.isfinite(d)])), 2) if np.isfinite(d).any() else None,
            "p90_of_flagged": round(float(np.percentile(d[np.isfinite(d)], 90)), 2) if np.isfinite(d).any() else None,
            "flagged_within_3s": round(float(np.mean(d <= 3.0)), 3),
            "flagged_within_6s": round(float(np.mean(d <= 6.0)), 3),
        },
        "authenticated_before_change": authed,
        "authentication_withdrawn": round(withdrawn / authed, 3) if authed else None,
        "final_status": _counts(final),
    }


def _median(values: list[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return round(float(np.median(v)), 3) if v else None


def _normalisation(result: CallResult) -> str:
    return Normalisation.RAW.value if Flag.SMALL_COHORT in result.flags else Normalisation.AS_NORM.value


def _changed(result: CallResult) -> bool:
    return any(f.value == "speaker_change" for f in result.flags)


def _counts(results: list[CallResult]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in results:
        out[r.status.value] = out.get(r.status.value, 0) + 1
    return out


def capacity_run(va: VoiceAuth, pairs: list[tuple[str, np.ndarray]], n: int, call_s: float,
                 feed_times: list[float], steady: bool) -> dict[str, object]:
    """``n`` live calls fed one 20 ms frame each every 20 ms by one IVR thread.

    ``steady=False`` (burst): the ``n`` calls start together and last ``call_s``; every
    update counts. ``steady=True``: ``n`` call slots, slot ``i`` starting its first call at
    ``i * call_s / n`` and a new call whenever one ends after ``call_s``, so from ``call_s``
    on there are always ``n`` live calls at different stages (arrivals spread as in a call
    centre); the run lasts ``2 * call_s`` and only the second half counts."""
    pool = SessionPool(va.services, SessionSettings(), watchlist=va.watchlist)
    va._sessions = pool
    call_ticks = int(call_s * 50)
    offsets = [int(round(i * call_ticks / n)) if steady else 0 for i in range(n)]
    ticks = 2 * call_ticks if steady else call_ticks
    live: list[tuple[object, list[bytes]] | None] = [None] * n
    finished = []
    started_calls = 0
    start = time.perf_counter()
    measure_from = time.monotonic() + (call_s if steady else 0.0)
    late = 0
    for tick in range(ticks):
        for slot in range(n):
            age = tick - offsets[slot]
            if age < 0:
                continue
            if age % call_ticks == 0:
                if live[slot] is not None:
                    live[slot][0].close()  # type: ignore[index, union-attr]
                    finished.append(live[slot][0])  # type: ignore[index]
                speaker, x = pairs[started_calls % len(pairs)]
                live[slot] = (pool.start_call(speaker), mulaw_frames(x))
                started_calls += 1
            call, frames = live[slot]  # type: ignore[misc]
            t0 = time.perf_counter()
            call.feed(frames[(age % call_ticks) % len(frames)])  # type: ignore[attr-defined]
            feed_times.append(time.perf_counter() - t0)
        wait = start + (tick + 1) * 0.02 - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        else:
            late += 1
    for entry in live:
        if entry is not None:
            entry[0].close()  # type: ignore[attr-defined]
            finished.append(entry[0])
    results = [c.result(wait=120) for c in finished]  # type: ignore[attr-defined]
    lat = pool.decision_latencies(since=measure_from)
    spoof_lat = pool.spoof_latencies(since=measure_from)
    pool.close()
    dropped = sum(r.dropped_audio_s for r in results)
    p95 = float(np.percentile(lat, 95)) if len(lat) else float("nan")
    spoof_p95 = float(np.percentile(spoof_lat, 95)) if len(spoof_lat) else None
    return {
        "mode": "steady" if steady else "burst",
        "calls": n,
        "call_s": call_s,
        "calls_started": started_calls,
        "updates_measured": int(len(lat)),
        "decision_latency_p50_s": round(float(np.percentile(lat, 50)), 3) if len(lat) else None,
        "decision_latency_p95_s": round(p95, 3),
        "decision_latency_max_s": round(float(lat.max()), 3) if len(lat) else None,
        "dropped_audio_s": round(dropped, 2),
        "mean_batch": round(float(pool.batch_sizes().mean()), 2) if len(pool.batch_sizes()) else None,
        "spoof_checks_measured": int(len(spoof_lat)),
        "spoof_verdict_latency_p50_s": round(float(np.percentile(spoof_lat, 50)), 3) if len(spoof_lat) else None,
        "spoof_verdict_latency_p95_s": None if spoof_p95 is None else round(spoof_p95, 3),
        "feeder_late_ticks": late,
        "authenticated": sum(r.authenticated for r in results),
        "sustained": bool(p95 < 1.0 and dropped == 0 and (spoof_p95 is None or spoof_p95 < 1.0)),
    }


def plot(trajectories: dict[str, Any], path: Path) -> None:
    """Share of genuine calls AUTHENTICATED by net speech, with and without the spoof check."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for (name, data), colour in zip(trajectories.items(), ("tab:blue", "tab:orange"), strict=False):
        genuine = [expand(t) for t in data["genuine"]]
        for gate, style in ((True, "-"), (False, "--")):
            v = np.sort([replay(t, data["accept_llr_in_calls"], data["decision_s"], gate) for t in genuine])
            label = name if gate else f"{name}, spoof check off"
            ax.step(np.where(np.isfinite(v), v, 30.0), np.arange(1, len(v) + 1) / len(v), where="post",
                    color=colour, ls=style, label=label)
    ax.axvline(4.0, color="grey", ls=":", label="target median 4 s")
    ax.axvline(10.0, color="grey", ls="--", label="target 90% by 10 s")
    ax.set_xlabel("net speech until AUTHENTICATED (s)")
    ax.set_ylabel("share of genuine calls")
    ax.set_xlim(0, 20)
    ax.legend(fontsize=8)
    ax.set_title("Live calls, phone channel, default policy (replayed in real time)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compact(trajectory: Trajectory) -> list[list[object]]:
    """[speech_s, llr, status, flags, spoof_score] per update, for re-analysis without a re-run."""
    return [[u.speech_s, u.llr, u.status.value, [f.value for f in u.flags], u.spoof_score] for u in trajectory]


@dataclass(frozen=True)
class Update:
    """What :func:`replay` reads of a CallResult, rebuilt from :func:`compact`."""

    speech_s: float
    llr: float
    status: CallStatus
    flags: tuple[Flag, ...]
    spoof_score: float | None


def expand(rows: list[list[Any]]) -> list[Any]:
    return [Update(r[0], r[1], CallStatus(r[2]), tuple(Flag(f) for f in r[3]), r[4]) for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", type=int, nargs="+", help="concurrent calls to try (default: per pattern)")
    parser.add_argument("--seconds", type=float, default=15.0,
                        help="length of the short capacity calls (the steady pattern also runs 60 s calls)")
    parser.add_argument("--part", choices=["all", "accuracy", "capacity", "plot"], default="all",
                        help="run one part only (the other's figures are kept from streaming.json), or only "
                             "redraw streaming.png from streaming-trajectories.json")
    parser.add_argument("--watch-stride", type=int, metavar="N",
                        help="the accuracy part only, with SessionSettings.watch_stride=N (an AUTHENTICATED call "
                             "embeds every N-th segment), into results/streaming-watchN.json")
    args = parser.parse_args()
    tuning = {} if args.watch_stride is None else {"watch_stride": args.watch_stride}
    if tuning:
        args.part = "accuracy"
    if args.part == "plot":
        plot(json.loads((RESULTS / "streaming-trajectories.json").read_text()), RESULTS / "streaming.png")
        return
    previous = RESULTS / "streaming.json"
    kept = json.loads(previous.read_text()) if args.part != "all" and previous.exists() and not tuning else {}
    started = time.time()
    real = EcapaEmbedder().load()
    spoof = SpoofDetector().load()
    out: dict[str, object] = {**kept, "machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()}}
    trajectories: dict[str, object] = {}
    settings = SessionSettings(**tuning)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("VOICEAUTH_KEY_FILE", str(Path(tmp) / "keyring.json"))
        deep = SessionSettings(max_queued_s=600.0, max_pending_segments=10_000, max_sessions=100_000, **tuning)
        corpora = {"librispeech": librispeech(), "meetings": meeting_calls()}
        for name, (enrol, calls) in corpora.items():
            if args.part == "capacity":
                if name == "librispeech":
                    va = VoiceAuth(Path(tmp) / f"{name}.db", embedder=real, spoof=spoof)
                    enrol_background(va)
                    enrolled = enrol_all(va, enrol)
                    pairs = [(s, x) for s, x in calls if s in enrolled]
                    va.close()
                continue
            va = VoiceAuth(Path(tmp) / f"{name}.db", embedder=CachedEmbedder(real), spoof=CachedSpoof(spoof))  # type: ignore[arg-type]
            va._sessions = SessionPool(va.services, deep, watchlist=va.watchlist)
            background = enrol_background(va)
            enrolled = enrol_all(va, enrol)
            runs = run_corpus(va, name, enrolled, calls, splice=name == "librispeech")
            thresholds = va.thresholds()
            decision_s = max(settings.min_decision_s, va.policy.min_speech_s)
            accept = thresholds.accept_llr + settings.margins.for_(Normalisation.AS_NORM)
            result = summarise(runs, accept, decision_s)
            result["margin_sweep"] = sweep(runs.genuine, runs.impostor, thresholds.accept_llr, decision_s)
            result["enrolled"] = len(enrolled)
            result["background_customers"] = background
            result["thresholds"] = thresholds.describe()
            result["accept_llr_in_calls"] = round(accept, 3)
            trajectories[name] = {"genuine": [compact(t) for t in runs.genuine],
                                  "impostor": [compact(t) for t in runs.impostor],
                                  "spliced": [compact(t) for t in runs.spliced],
                                  "splice_at_s": runs.splice_at_s, "accept_llr": thresholds.accept_llr,
                                  "accept_llr_in_calls": accept, "decision_s": decision_s}
            out[name] = result
            print(name, json.dumps(result, default=str), flush=True)
            if name == "librispeech":
                pairs = [(s, x) for s, x in calls if s in enrolled]
            va.close()
        capacity_va = VoiceAuth(Path(tmp) / "librispeech.db", embedder=real, spoof=spoof)
        feed_times: list[float] = []
        levels: dict[str, list[dict[str, object]]] = {}
        patterns = [("steady", 60.0, [20, 30, 40]), ("steady", args.seconds, [10, 20, 30]),
                    ("burst", args.seconds, [10, 20, 30])]
        for mode, call_s, default_levels in patterns if args.part != "accuracy" else []:
            key = f"{mode}-{call_s:g}s-calls"
            levels[key] = []
            for n in args.levels or default_levels:
                level = capacity_run(capacity_va, pairs, n, call_s, feed_times, steady=mode == "steady")
                levels[key].append(level)
                print("capacity", json.dumps(level), flush=True)
                if not level["sustained"]:
                    break
        capacity_va.close()
    if feed_times:
        ft = np.array(feed_times)
        out["feed_latency_us"] = {"p50": round(float(np.percentile(ft, 50)) * 1e6, 1),
                                  "p99": round(float(np.percentile(ft, 99)) * 1e6, 1),
                                  "max": round(float(ft.max()) * 1e6, 1), "feeds": int(len(ft))}
        out["capacity"] = {
            "levels": levels, "load_avg_after": os.getloadavg(),
            "criterion": "decision latency p95 < 1 s, spoof verdict latency p95 < 1 s, no audio dropped",
            **{f"max_sustained_calls_{mode}": max([lv["calls"] for lv in runs if lv["sustained"]], default=0)
               for mode, runs in levels.items()},
        }
    out["settings"] = {k: v for k, v in vars(settings).items()}
    out[f"seconds_{args.part}"] = round(time.time() - started, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if tuning:
        (RESULTS / f"streaming-watch{args.watch_stride}.json").write_text(json.dumps(out, indent=2, default=str))
        return
    (RESULTS / "streaming.json").write_text(json.dumps(out, indent=2, default=str))
    if trajectories:
        (RESULTS / "streaming-trajectories.json").write_text(json.dumps(trajectories, default=str))
        plot(trajectories, RESULTS / "streaming.png")
    print(json.dumps({k: out.get(k) for k in ("feed_latency_us", "capacity")}, indent=2, default=str))


if __name__ == "__main__":
    main()
