"""Fraud benchmark: watchlist hit rate and false-hit rate on real speech.

Fraudsters: the 10 LibriSpeech test-other speakers, each listed from 2 recordings; their
other 8 recordings are fraudster calls. Genuine customers: the 251 train-clean speakers,
one call each, screened against the whole watchlist. Both clean and phone channel.
The spoof-detection and speaker-change figures come from spoof_probe.py and streaming.py
and are copied into the output for one place to read.

    python benchmarks/fraud.py   ->  benchmarks/results/fraud.json
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from voiceauth.audio import MODEL_RATE, Audio, load_audio, resample, telephone_channel
from voiceauth.crypto import KeyRing
from voiceauth.facade import VoiceAuth
from voiceauth.store.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "corpora" / "librispeech-samples"
RESULTS = ROOT / "benchmarks" / "results"


def phone(path: Path) -> Audio:
    line = telephone_channel(load_audio(path))
    return Audio(resample(line.samples, line.sample_rate, MODEL_RATE), MODEL_RATE)


def run_channel(channel: str) -> dict[str, object]:
    fraudsters = {d.name: sorted(d.glob("*.flac")) for d in sorted((SHARED / "test-other").iterdir()) if d.is_dir()}
    customers = sorted((SHARED / "train-clean").glob("*.flac"))
    prepare = phone if channel == "phone" else load_audio
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "fraud.db", keyring=KeyRing.ephemeral())
        with VoiceAuth(store, spoof=False, actor="fraud-benchmark") as va:
            for name, files in fraudsters.items():
                va.watchlist.add(f"case-{name}", [prepare(f) for f in files[:2]], reason="benchmark")
            hits, calls = 0, 0
            for name, files in fraudsters.items():
                for f in files[2:]:
                    probe = va.probe(prepare(f))
                    hit = va.watchlist.screen(probe.embedding, probe.speech_s)
                    calls += 1
                    hits += hit is not None and hit.label == f"case-{name}"
            false_hits = 0
            for f in customers:
                probe = va.probe(prepare(f))
                false_hits += va.watchlist.screen(probe.embedding, probe.speech_s) is not None
            threshold = va.watchlist.threshold(len(fraudsters))
    return {
        "fraudster_calls": calls, "flagged": hits, "hit_rate": round(hits / calls, 4),
        "genuine_calls": len(customers), "false_hits": false_hits,
        "false_hit_rate": round(false_hits / len(customers), 4),
        "watchlist_entries": len(fraudsters), "per_entry_llr_threshold": round(threshold, 3),
    }


def main() -> int:
    out: dict[str, object] = {"watchlist": {ch: run_channel(ch) for ch in ("clean", "phone")},
                              "targets": {"hit_rate": ">= 0.95", "false_hit_rate": "< 0.01"}}
    for name, key in (("spoof_probe.json", "spoof"), ("streaming.json", "speaker_change")):
        path = RESULTS / name
        if path.exists():
            data = json.loads(path.read_text())
            out[key] = data.get("channels") if key == "spoof" else data.get("librispeech", {}).get("spliced")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fraud.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out["watchlist"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
