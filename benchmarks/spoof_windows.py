"""Which audio the spoof check scores: the first raw 4 s window vs every window of the detected speech.

Usage::

    .venv/bin/python benchmarks/spoof_windows.py [--per-speaker 3] [--skip 0] [--channels clean phone]

Bona fide: ``--per-speaker`` LibriSpeech test-other files of each speaker (after the first
``--skip``), clean (16 kHz) and through ``audio.telephone_channel`` (8 kHz G.711). Attacks:
espeak-ng sentences, alone and after 4 s of digital silence, -50 dBFS noise or 50 Hz hum
(the silent lead-in that skipped the old check), on the same channels. For each recording
it records the score of

* ``first_raw``: the first 4.04 s of the raw audio (the old verification check);
* ``speech_windows``: every window covering the voice-activity-detected speech (pauses cut),
  as ``SpoofDetector.score`` scores it.

and reports false alarms / detections at the default threshold for the aggregation rules
``first_raw``, ``speech_min`` (the most spoof-like window, what the check uses) and
``speech_mean`` (``--summarise FILE`` redoes that summary at the threshold in force).
Results go to benchmarks/results/spoof_windows[-SUFFIX].json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpora" / "librispeech-samples" / "test-other"
RESULTS = ROOT / "benchmarks" / "results" / "spoof_windows.json"
SENTENCES = (
    "Hello, I would like to check the balance of my current account, please.",
    "Could you cancel the card I reported lost yesterday afternoon?",
)
VOICES = ("en-us", "en-gb", "en+f3")
FORMER_THRESHOLD = -5.0
"""The threshold of the former check (first raw window)."""


def lead_ins(rate: int) -> dict[str, np.ndarray]:
    """4 s of the non-speech that AASIST scores as bona fide."""
    n = 4 * rate
    t = np.arange(n) / rate
    rng = np.random.default_rng(0)
    return {
        "silence": np.zeros(n, dtype=np.float32),
        "noise-50dBFS": (10 ** (-50 / 20) * rng.standard_normal(n)).astype(np.float32),
        "hum-50Hz": (0.05 * np.sin(2 * np.pi * 50 * t)).astype(np.float32),
    }


def run(args: argparse.Namespace) -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from voiceauth.audio.channel import telephone_channel
    from voiceauth.audio.decode import Audio, load_audio, resample
    from voiceauth.fraud.aasist import repeat_to_length
    from voiceauth.fraud.spoof import MODEL_RATE, WINDOW_SAMPLES, SpoofDetector

    detector = SpoofDetector().load()

    def first_raw(audio: Audio) -> float:
        wave = resample(audio.samples, audio.sample_rate, MODEL_RATE)[:WINDOW_SAMPLES]
        return float(detector.network_scores(repeat_to_length(wave, WINDOW_SAMPLES)[None])[0])

    def record(audio: Audio) -> dict[str, object]:
        from voiceauth.speech.activity import analyse

        speech = analyse(audio).speech
        return {"first_raw": first_raw(audio),
                "speech_windows": [float(s) for s in detector.window_scores(speech.samples, speech.sample_rate)],
                "speech_s": round(speech.duration_s, 2)}

    def channel(audio: Audio, name: str) -> Audio:
        return telephone_channel(audio) if name == "phone" else audio

    started = time.time()
    window = slice(args.skip, args.skip + args.per_speaker)
    files = [p for d in sorted(CORPUS.iterdir()) if d.is_dir() for p in sorted(d.glob("*.flac"))[window]]
    bona: dict[str, list[dict[str, object]]] = {name: [] for name in args.channels}
    for path in files:
        audio = load_audio(path)
        for name in args.channels:
            bona[name].append(record(channel(audio, name)))
    print(f"bona fide: {len(files)} files in {time.time() - started:.0f}s", flush=True)

    attacks: dict[str, list[dict[str, object]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for voice in VOICES:
            for i, text in enumerate(SENTENCES):
                wav = Path(tmp) / f"{voice}_{i}.wav"
                subprocess.run(["espeak-ng", "-v", voice, "-w", str(wav), text], check=True)
                for ch in args.channels:
                    tts = channel(load_audio(wav), ch)
                    attacks.setdefault(f"espeak/{ch}", []).append(record(tts))
                    for name, lead in lead_ins(tts.sample_rate).items():
                        mixed = Audio(np.concatenate([lead, tts.samples]), tts.sample_rate)
                        attacks.setdefault(f"{name}+espeak/{ch}", []).append(record(mixed))
    print(f"all scored in {time.time() - started:.0f}s", flush=True)

    report = {
        "files_per_speaker": args.per_speaker,
        "skipped_per_speaker": args.skip,
        "scores": {"bona_fide": bona, "attacks": attacks},
    }
    out = RESULTS.with_name(f"{RESULTS.stem}-{args.suffix}.json") if args.suffix else RESULTS
    write(out, report, detector.threshold)


def summarise(rows: list[dict[str, object]], threshold: float) -> dict[str, float]:
    """Share of ``rows`` flagged by each rule: the former check at ``FORMER_THRESHOLD``, the
    speech windows at ``threshold``."""
    values = {
        "first_raw": [float(r["first_raw"]) for r in rows],  # type: ignore[arg-type]
        "speech_min": [min(r["speech_windows"]) for r in rows],  # type: ignore[type-var]
        "speech_mean": [float(np.mean(r["speech_windows"])) for r in rows],  # type: ignore[arg-type]
    }
    return {name: round(float(np.mean(np.asarray(v) < (FORMER_THRESHOLD if name == "first_raw" else threshold))), 4)
            for name, v in values.items()}


def write(out: Path, report: dict, threshold: float) -> None:  # type: ignore[type-arg]
    scores = report["scores"]
    report = {**report, "threshold": threshold, "former_threshold": FORMER_THRESHOLD,
              "bona_fide_false_alarm": {ch: summarise(rows, threshold) for ch, rows in scores["bona_fide"].items()},
              "attacks_flagged": {name: summarise(rows, threshold) for name, rows in scores["attacks"].items()}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("bona_fide_false_alarm", "attacks_flagged")}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-speaker", type=int, default=3)
    parser.add_argument("--skip", type=int, default=0, help="files of each speaker to skip first")
    parser.add_argument("--channels", nargs="+", choices=["clean", "phone"], default=["clean", "phone"])
    parser.add_argument("--suffix", default="", help="write spoof_windows-SUFFIX.json")
    parser.add_argument("--summarise", type=Path, help="only redo the summary of this results file")
    args = parser.parse_args()
    if args.summarise:
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        from voiceauth.fraud.spoof import configured_threshold

        write(args.summarise, json.loads(args.summarise.read_text()), configured_threshold())
    else:
        run(args)


if __name__ == "__main__":
    main()
