"""Live-call benchmark: how soon genuine callers are AUTHENTICATED, how rarely impostors are,
how long ``feed()`` takes, and how many real-time calls the machine sustains.

    python benchmarks/streaming.py            # writes results/streaming.json and streaming.png

Corpora (phone channel: 8 kHz, 300-3400 Hz, G.711 mu-law, fed as 20 ms frames):

* LibriSpeech test-other: 10 speakers enrolled on 3 files; a call is two further files of
  one speaker; every call is also claimed as each of the 9 other speakers (impostors);
  spliced calls are ~8 s of one speaker's call followed by another speaker's call.
* speakerbox council meetings: speakers enrolled in the meeting where most of them talk,
  calls are up to 20 s pieces of their speech in the other meetings.

Accuracy part: calls are fed faster than real time with deep queues (nothing dropped);
an embedding cache shares the model's work between sessions fed the same audio (one call
claimed as several customers), so every session still runs the whole live pipeline.
Capacity part: N calls fed in real time by one IVR thread (a 20 ms frame per call every
20 ms) on the default pool and the real model without cache; a level is sustained when
the decision latency p95 is under 1 s and no audio or speech was dropped.
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
from pathlib import Path

import numpy as np

from voiceauth.audio import load_audio, mulaw_encode, telephone_channel
from voiceauth.embedding import EcapaEmbedder
from voiceauth.facade import VoiceAuth
from voiceauth.samples import enrolment_meeting, meeting_speech, meetings
from voiceauth.session import CallResult, CallStatus, SessionPool, SessionSettings
from voiceauth.store.base import Consent

ROOT = Path(__file__).resolve().parents[1]
LIBRI = ROOT.parent / "shared" / "corpora" / "librispeech-samples" / "test-other"
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


def enrol_all(va: VoiceAuth, enrol: dict[str, list[np.ndarray]]) -> list[str]:
    consent = Consent.now(channel="benchmark", notice_version="v1", captured_by="benchmarks/streaming.py")
    done = []
    for s, pieces in enrol.items():
        progress = va.enroll(s, list(pieces), consent=consent, sample_rate=8000)
        if progress.complete:
            done.append(s)
    return done


def run_sessions(va: VoiceAuth, claims: Sequence[str], frames: list[bytes]) -> list[CallResult]:
    """One call's audio fed to one session per claimed customer, faster than real time."""
    calls = [va.start_call(c) for c in claims]
    for i, frame in enumerate(frames):
        for call in calls:
            call.feed(frame)
        if i % 50 == 49:
            time.sleep(0.002)
    for call in calls:
        call.close()
    return [call.result(wait=300) for call in calls]


def first_accept(result: CallResult) -> float:
    hits = [r.speech_s for r in result.revisions if r.status is CallStatus.AUTHENTICATED]
    return hits[0] if hits else float("inf")


def ever(result: CallResult, status: CallStatus) -> bool:
    return any(r.status is status for r in result.revisions)


def accuracy(va: VoiceAuth, name: str, enrolled: list[str], calls: list[tuple[str, np.ndarray]],
             splice: bool) -> tuple[dict[str, object], list[float]]:
    genuine: list[CallResult] = []
    impostor: list[CallResult] = []
    spliced: list[CallResult] = []
    for index, (speaker, x) in enumerate(calls):
        if speaker not in enrolled:
            continue
        others = [s for s in enrolled if s != speaker]
        results = run_sessions(va, [speaker, *others], mulaw_frames(x))
        genuine.append(results[0])
        impostor += results[1:]
        if splice:
            other_speaker, y = next(c for c in calls[index + 1 :] + calls if c[0] != speaker)
            head = mulaw_frames(x)[: int(SPLICE_S * 50)]
            spliced += run_sessions(va, [speaker], head + mulaw_frames(y))
        print(f"  {name}: {index + 1}/{len(calls)} calls", flush=True)
    times = [first_accept(r) for r in genuine]
    finite = np.array([t for t in times if np.isfinite(t)])
    out: dict[str, object] = {
        "genuine_calls": len(genuine),
        "genuine_speech_s_median": round(float(np.median([r.speech_s for r in genuine])), 1),
        "net_speech_to_authenticated_s": {
            "median": float(np.median(times)),
            "p90": float(np.percentile(times, 90)) if len(finite) else None,
            "mean_of_authenticated": round(float(finite.mean()), 2) if len(finite) else None,
            "within_10s": round(float(np.mean(np.array(times) <= 10.0)), 3),
            "ever_authenticated": round(float(np.mean(np.isfinite(times))), 3),
        },
        "genuine_final_status": _counts(genuine),
        "genuine_false_speaker_change": round(float(np.mean([_changed(r) for r in genuine])), 3),
        "impostor_sessions": len(impostor),
        "impostor_ever_authenticated": round(float(np.mean([ever(r, CallStatus.AUTHENTICATED) for r in impostor])), 4),
        "impostor_ever_authenticated_count": int(sum(ever(r, CallStatus.AUTHENTICATED) for r in impostor)),
        "impostor_authenticated_at_end": round(float(np.mean([r.authenticated for r in impostor])), 4),
        "impostor_final_status": _counts(impostor),
    }
    if spliced:
        authed = [r for r in spliced if ever(r, CallStatus.AUTHENTICATED)]
        out["spliced"] = {
            "calls": len(spliced),
            "speaker_change_flagged": round(float(np.mean([_changed(r) for r in spliced])), 3),
            "authenticated_before_change": len(authed),
            "authentication_withdrawn": round(float(np.mean([not r.authenticated for r in authed])), 3)
            if authed else None,
            "final_status": _counts(spliced),
        }
    return out, times


def _changed(result: CallResult) -> bool:
    return any(f.value == "speaker_change" for f in result.flags)


def _counts(results: list[CallResult]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in results:
        out[r.status.value] = out.get(r.status.value, 0) + 1
    return out


def capacity_run(va: VoiceAuth, pairs: list[tuple[str, np.ndarray]], n: int, seconds: float,
                 feed_times: list[float]) -> dict[str, object]:
    """``n`` calls fed one 20 ms frame each every 20 ms for ``seconds``."""
    pool = SessionPool(va, SessionSettings())
    va._sessions = pool
    streams = [mulaw_frames(pairs[i % len(pairs)][1]) for i in range(n)]
    calls = [pool.start_call(pairs[i % len(pairs)][0]) for i in range(n)]
    ticks = int(seconds * 50)
    start = time.perf_counter()
    late = 0
    for tick in range(ticks):
        for call, frames in zip(calls, streams, strict=True):
            frame = frames[tick % len(frames)]
            t0 = time.perf_counter()
            call.feed(frame)
            feed_times.append(time.perf_counter() - t0)
        target = start + (tick + 1) * 0.02
        wait = target - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        else:
            late += 1
    for call in calls:
        call.close()
    results = [c.result(wait=60) for c in calls]
    lat = pool.decision_latencies()
    pool.close()
    dropped = sum(r.dropped_audio_s for r in results)
    p95 = float(np.percentile(lat, 95)) if len(lat) else float("nan")
    return {
        "calls": n,
        "seconds": seconds,
        "updates": int(len(lat)),
        "decision_latency_p50_s": round(float(np.percentile(lat, 50)), 3) if len(lat) else None,
        "decision_latency_p95_s": round(p95, 3),
        "decision_latency_max_s": round(float(lat.max()), 3) if len(lat) else None,
        "dropped_audio_s": round(dropped, 2),
        "mean_batch": round(float(pool.batch_sizes().mean()), 2) if len(pool.batch_sizes()) else None,
        "feeder_late_ticks": late,
        "authenticated": sum(r.authenticated for r in results),
        "sustained": bool(p95 < 1.0 and dropped == 0),
    }


def plot(times: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in times.items():
        v = np.sort(np.array(values))
        ax.step(np.where(np.isfinite(v), v, 30.0), np.arange(1, len(v) + 1) / len(v), where="post", label=name)
    ax.axvline(4.0, color="grey", ls=":", label="target median 4 s")
    ax.axvline(10.0, color="grey", ls="--", label="target 90% by 10 s")
    ax.set_xlabel("net speech until AUTHENTICATED (s)")
    ax.set_ylabel("share of genuine calls")
    ax.set_xlim(0, 20)
    ax.legend(fontsize=8)
    ax.set_title("Live calls, phone channel, default policy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", type=int, nargs="+", default=[10, 20, 30, 40])
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each capacity run")
    args = parser.parse_args()
    started = time.time()
    real = EcapaEmbedder().load()
    out: dict[str, object] = {"machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()}}
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("VOICEAUTH_KEY_FILE", str(Path(tmp) / "keyring.json"))
        deep = SessionSettings(max_queued_s=600.0, max_pending_segments=10_000, max_sessions=100_000)
        corpora = {"librispeech": librispeech(), "meetings": meeting_calls()}
        for name, (enrol, calls) in corpora.items():
            va = VoiceAuth(Path(tmp) / f"{name}.db", embedder=CachedEmbedder(real))
            va._sessions = SessionPool(va, deep)
            enrolled = enrol_all(va, enrol)
            result, times[name] = accuracy(va, name, enrolled, calls, splice=name == "librispeech")
            result["enrolled"] = len(enrolled)
            result["thresholds"] = {n.value: va.scorer.thresholds(n).describe()
                                    for n in va.scorer.calibrations.by_normalisation}
            out[name] = result
            print(name, json.dumps(result, default=str), flush=True)
            if name == "librispeech":
                pairs = [(s, x) for s, x in calls if s in enrolled]
                capacity_va = VoiceAuth(Path(tmp) / f"{name}.db", embedder=real)
            va.close()
        feed_times: list[float] = []
        levels = []
        for n in args.levels:
            level = capacity_run(capacity_va, pairs, n, args.seconds, feed_times)
            levels.append(level)
            print("capacity", json.dumps(level), flush=True)
            if not level["sustained"]:
                break
        capacity_va.close()
    ft = np.array(feed_times)
    out["feed_latency_us"] = {"p50": round(float(np.percentile(ft, 50)) * 1e6, 1),
                              "p99": round(float(np.percentile(ft, 99)) * 1e6, 1),
                              "max": round(float(ft.max()) * 1e6, 1), "feeds": int(len(ft))}
    out["capacity"] = {"levels": levels,
                       "max_sustained_calls": max([lv["calls"] for lv in levels if lv["sustained"]], default=0)}
    out["settings"] = {k: v for k, v in vars(SessionSettings()).items()}
    out["seconds"] = round(time.time() - started, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "streaming.json").write_text(json.dumps(out, indent=2, default=str))
    plot(times, RESULTS / "streaming.png")
    print(json.dumps({k: out[k] for k in ("feed_latency_us", "capacity", "seconds")}, indent=2, default=str))


if __name__ == "__main__":
    main()
