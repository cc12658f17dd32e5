"""Fraud benchmark: watchlist hit rate and false-hit rate on real speech.

Fraudsters: the 10 LibriSpeech test-other speakers, each listed from 2 recordings; their
other 8 recordings are fraudster calls. Genuine customers: the 251 train-clean speakers,
one recording each. Both clean and phone channel.

A bank's store always holds many customers, and the watchlist normalises its scores
against them (AS-norm) once there are enough, so the benchmark enrols a customer
population. To keep the genuine callers out of the cohort they are scored against, the
train-clean speakers are split in two halves (two folds): the customers of one half are
enrolled (from their one recording), and the speakers of the other half call as genuine,
not-enrolled callers (``customer_id=None``); then the halves swap. Every genuine speaker
is thus screened once, against a population they are not part of; the fraudster calls are
screened against both populations (claiming to be one of the enrolled customers, as in an
account takeover), so each population contributes 80 screenings. The same calls are also
screened by the raw score alone (``Watchlist(normalise=False)``, the method before AS-norm
was added) for comparison.

The spoof-detection figures are recomputed from spoof_probe.py's raw scores at the
shipped threshold, and the speaker-change and live-call spoof figures are copied from
streaming.py's results, for one place to read.

    python benchmarks/fraud.py   ->  benchmarks/results/fraud.json
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from voiceauth.audio.channel import telephone_channel
from voiceauth.audio.decode import MODEL_RATE, Audio, load_audio, resample
from voiceauth.client import VoiceAuth
from voiceauth.errors import NoSpeechError
from voiceauth.fraud.spoof import DEFAULT_THRESHOLD
from voiceauth.fraud.watchlist import Watchlist
from voiceauth.results import Probe
from voiceauth.scoring.normalisation import Normalisation
from voiceauth.scoring.statistics import clopper_pearson, eer
from voiceauth.services.enrolment import MIN_SAMPLE_SPEECH_S
from voiceauth.store.base import Consent
from voiceauth.store.crypto import KeyRing
from voiceauth.store.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "corpora" / "librispeech-samples"
RESULTS = ROOT / "benchmarks" / "results"
CONSENT = Consent.now(channel="benchmark", notice_version="fraud-benchmark", captured_by="fraud-benchmark")


def phone(path: Path) -> Audio:
    line = telephone_channel(load_audio(path))
    return Audio(resample(line.samples, line.sample_rate, MODEL_RATE), MODEL_RATE)


def rate(n: int, d: int) -> float:
    return round(n / d, 4) if d else 0.0


def interval(n: int, d: int) -> list[float]:
    ci = clopper_pearson(n, d)
    return [round(ci.low, 4), round(ci.high, 4)]


def run_channel(channel: str) -> dict[str, object]:
    fraudsters = {d.name: sorted(d.glob("*.flac")) for d in sorted((SHARED / "test-other").iterdir()) if d.is_dir()}
    customers = sorted((SHARED / "train-clean").glob("*.flac"))
    halves = [customers[: len(customers) // 2], customers[len(customers) // 2:]]
    prepare = phone if channel == "phone" else load_audio
    audio = {f: prepare(f) for f in customers}
    counts = {method: {"flagged": 0, "fraud": 0, "false_hits": 0, "genuine": 0} for method in ("combined", "raw")}
    by_population: dict[str, list[int]] = {"combined": [], "raw": []}
    enrolled: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        calls: dict[Path, tuple[str, Probe]] | None = None
        genuine: dict[Path, Probe] = {}
        for fold, (population, callers) in enumerate(((halves[0], halves[1]), (halves[1], halves[0]))):
            store = SQLiteStore(Path(tmp) / f"fraud-{fold}.db", keyring=KeyRing.ephemeral())
            with VoiceAuth(store, spoof=False, actor="fraud-benchmark", enrol_speech_s=MIN_SAMPLE_SPEECH_S) as va:
                ids = []
                for f in population:
                    try:
                        va.enroll(f.stem, audio[f], consent=CONSENT)
                        ids.append(f.stem)
                    except NoSpeechError:
                        pass
                enrolled.append(len(ids))
                for name, files in fraudsters.items():
                    va.watchlist.add(f"case-{name}", [prepare(f) for f in files[:2]], reason="benchmark")
                if calls is None:  # the same probes in both folds
                    calls = {f: (f"case-{name}", va.probe(prepare(f))) for name, files in fraudsters.items()
                             for f in files[2:]}
                for f in callers:
                    genuine[f] = va.probe(audio[f])
                raw_only = Watchlist(va.services, normalise=False)
                for method, watchlist in (("combined", va.watchlist), ("raw", raw_only)):
                    c = counts[method]
                    flagged = 0
                    for i, (label, probe) in enumerate(calls.values()):
                        hit = watchlist.screen(probe.embedding, probe.speech_s, ids[i % len(ids)])
                        flagged += hit is not None and hit.label == label
                    c["fraud"] += len(calls)
                    c["flagged"] += flagged
                    by_population[method].append(flagged)
                    for f in callers:
                        c["genuine"] += 1
                        c["false_hits"] += watchlist.screen(genuine[f].embedding, genuine[f].speech_s) is not None
                thresholds = va.watchlist.thresholds(len(fraudsters), normalised=True)
                raw_threshold = raw_only.threshold(len(fraudsters))
    combined, raw = counts["combined"], counts["raw"]
    return {
        "fraudster_calls": combined["fraud"], "flagged": combined["flagged"],
        "hit_rate": rate(combined["flagged"], combined["fraud"]),
        "flagged_by_population": by_population["combined"],
        "genuine_calls": combined["genuine"], "false_hits": combined["false_hits"],
        "false_hit_rate": rate(combined["false_hits"], combined["genuine"]),
        "false_hit_rate_95ci": interval(combined["false_hits"], combined["genuine"]),
        "watchlist_entries": len(fraudsters), "customers_enrolled": enrolled,
        "per_entry_llr_threshold": {k.value: round(v, 3) for k, v in thresholds.items()},
        "raw_score_only": {
            "flagged": raw["flagged"], "hit_rate": rate(raw["flagged"], raw["fraud"]),
            "flagged_by_population": by_population["raw"],
            "false_hits": raw["false_hits"], "false_hit_rate": rate(raw["false_hits"], raw["genuine"]),
            "false_hit_rate_95ci": interval(raw["false_hits"], raw["genuine"]),
            "per_entry_llr_threshold": {Normalisation.RAW.value: round(raw_threshold, 3)},
        },
    }


def spoof_summary(probe: dict[str, object], threshold: float) -> dict[str, object]:
    """Per channel and attack, from spoof_probe.py's raw window scores: EER, and the share
    flagged at the shipped threshold and at 5 % false alarms on bona fide speech."""
    raw = probe["raw_scores"]
    assert isinstance(raw, dict)
    out: dict[str, object] = {"threshold": threshold, "bona_fide_files": len(raw["bona_fide"]["clean"])}
    for channel in ("clean", "phone"):
        bona = np.asarray(raw["bona_fide"][channel], dtype=np.float64)
        at_5pct = float(np.quantile(bona, 0.05))
        attacks = {}
        for attack in (k for k in raw if k != "bona_fide"):
            spoofed = np.asarray(raw[attack][channel], dtype=np.float64)
            scores = np.concatenate([bona, spoofed])
            labels = np.concatenate([np.ones(len(bona), bool), np.zeros(len(spoofed), bool)])
            attacks[attack] = {
                "files": len(spoofed),
                "eer": round(eer(scores, labels)[0], 4),
                "flagged_at_threshold": round(float(np.mean(spoofed < threshold)), 3),
                "flagged_at_5pct_false_alarm": round(float(np.mean(spoofed < at_5pct)), 3),
            }
        out[channel] = {"bona_fide_false_alarm_at_threshold": round(float(np.mean(bona < threshold)), 4),
                        "threshold_at_5pct_false_alarm": round(at_5pct, 3), "attacks": attacks}
    return out


def main() -> int:
    out: dict[str, object] = {
        "watchlist": {ch: run_channel(ch) for ch in ("clean", "phone")},
        "design": ("80 fraudster calls screened against each of 2 enrolled customer populations (the two "
                   "halves of train-clean) = 160 screenings; each of the 251 train-clean speakers calls "
                   "once, screened against the half they are not enrolled in"),
        "targets": {"hit_rate": ">= 0.95", "false_hit_rate": "< 0.01"},
    }
    probe = RESULTS / "spoof_probe.json"
    if probe.exists():
        out["spoof"] = spoof_summary(json.loads(probe.read_text()), DEFAULT_THRESHOLD)
    streaming = RESULTS / "streaming.json"
    if streaming.exists():
        data = json.loads(streaming.read_text())
        out["speaker_change"] = data.get("librispeech", {}).get("spliced")
        out["spoof_in_live_calls"] = {corpus: data.get(corpus, {}).get("spoof_check")
                                      for corpus in ("librispeech", "meetings")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fraud.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out["watchlist"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
