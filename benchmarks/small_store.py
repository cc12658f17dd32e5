"""A new deployment vs an established one: are genuine callers authenticated as often with 10 customers as with 125?

    python benchmarks/small_store.py      # writes results/small_store.json

Issue 16: with fewer than 20 customers the store cannot be its own AS-norm cohort; the shipped
public cohort (benchmarks/public_cohort.py) stands in until the bank's voiceprints accumulate.
This plays the same calls against two stores, both on the shipped calibration, phone channel:

* *small*: the 10 LibriSpeech test-other speakers, enrolled on 3 phone-channel files each;
* *large*: the same 10 plus 115 other customers (the second half of LibriSpeech train-clean, one
  recording each, so not the public cohort's speakers): 125 customers.

Calls: each further test-other file with the speaker's next one (7 calls per speaker, two recordings
0.3 s apart, at most 20 s, G.711 mu-law 20 ms frames),
claimed as its speaker and as each of the 9 others, played live (faster than real time, every
update recorded) and replayed as a real-time call would be decided, as in
benchmarks/bank_simulation.py (the same ``measure``): genuine callers AUTHENTICATED within 10 s
of net speech, impostor calls ever AUTHENTICATED, genuine calls NOT_AUTHENTICATED at a positive
LLR. The spoof check is off (benchmarks/spoof.py covers it).

Done when (issue 16): the small store authenticates genuine callers at least as often as the
large one, and neither turns a genuine call NOT_AUTHENTICATED at a positive LLR.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bank_simulation import RATE, TAG, measure  # noqa: E402
from streaming import COHORT, LIBRI, CachedEmbedder, phone  # noqa: E402

from voiceauth.client import VoiceAuth  # noqa: E402
from voiceauth.embedding.ecapa import EcapaEmbedder  # noqa: E402
from voiceauth.errors import NoSpeechError  # noqa: E402
from voiceauth.live import SessionPool, SessionSettings  # noqa: E402
from voiceauth.store.base import Consent  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ENROL_FILES, CALL_S, BACKGROUND = 3, 20.0, 115


def corpus() -> tuple[dict[str, list[np.ndarray]], list[tuple[str, np.ndarray]]]:
    """(enrolment recordings, calls) of the test-other speakers, phone channel."""
    speakers = {d.name: sorted(d.glob("*.flac")) for d in sorted(LIBRI.iterdir()) if d.is_dir()}
    enrol = {s: [phone(p) for p in files[:ENROL_FILES]] for s, files in speakers.items()}
    calls = []
    for s, files in speakers.items():
        tests = [phone(p) for p in files[ENROL_FILES:]]
        for i, x in enumerate(tests):  # two recordings a call (0.3 s apart): a few seconds is not a call
            pair = np.concatenate([x, np.zeros(int(0.3 * RATE), np.float32), tests[(i + 1) % len(tests)]])
            calls.append((s, pair[: int(CALL_S * RATE)]))
    return enrol, calls


def enrol_background(va: VoiceAuth, count: int, consent: Consent) -> int:
    """``count`` other customers from the second half of train-clean (the public cohort is the first)."""
    files = sorted(COHORT.glob("*.flac"))
    required, va.enrol_speech_s = va.enrol_speech_s, 3.0  # one recording each
    enrolled = 0
    try:
        for f in files[len(files) // 2:]:
            if enrolled == count:
                break
            try:
                va.enroll(f"background-{f.stem}", [phone(f)], consent=consent, sample_rate=RATE)
                enrolled += 1
            except NoSpeechError:
                continue
    finally:
        va.enrol_speech_s = required
    return enrolled


def main() -> None:
    started = time.time()
    cached = CachedEmbedder(EcapaEmbedder().load())  # both stores hear the same calls: embed each segment once
    deep = SessionSettings(max_queued_s=600.0, max_pending_segments=10_000, max_sessions=100_000, spoof_check=False)
    consent = Consent.now(channel="benchmark", notice_version="v1", captured_by="benchmarks/small_store.py")
    enrol, calls = corpus()
    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}, "calls": len(calls), "call_max_s": CALL_S}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("VOICEAUTH_KEY_FILE", str(Path(tmp) / "keyring.json"))
        for name, background in (("small", 0), ("large", BACKGROUND)):
            va = VoiceAuth(Path(tmp) / f"{name}.db", embedder=cached, spoof=False, harvest=False)  # type: ignore[arg-type]
            others = enrol_background(va, background, consent)
            enrolled = [s for s, pieces in enrol.items()
                        if va.enroll(s, pieces, consent=consent, sample_rate=RATE, channel_tag=TAG).complete]
            va._sessions = SessionPool(va.services, deep, watchlist=va.watchlist)
            print(f"{name}: {len(enrolled)} + {others} customers", flush=True)
            out[name] = {"customers": len(enrolled) + others, "callers_enrolled": len(enrolled),
                         **measure(va, [(s, x) for s, x in calls if s in enrolled], enrolled)}
            va.close()
            print(json.dumps({k: v for k, v in out[name].items() if k != "thresholds"}), flush=True)
    small, large = out["small"], out["large"]
    out["done_when"] = {
        "small_authenticates_at_least_as_often": small["genuine_authenticated_within_10s"]
        >= large["genuine_authenticated_within_10s"],
        "no_genuine_not_authenticated_at_positive_llr": small["genuine_not_authenticated_at_positive_llr"] == 0
        and large["genuine_not_authenticated_at_positive_llr"] == 0,
    }
    out["seconds"] = round(time.time() - started)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "small_store.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(json.dumps(out["done_when"]), f"{out['seconds']} s")


if __name__ == "__main__":
    main()
