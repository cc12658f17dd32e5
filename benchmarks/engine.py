"""Speaker-engine benchmark: every model and front end next to plain SpeechBrain, one run.

    python benchmarks/engine.py          # writes results/engine.json, engine.md and engine.png
    python benchmarks/engine.py --quick  # clean channel only, fewer impostors (a smoke run)
    python benchmarks/engine.py --speed-only  # re-measure only the speed part into engine.json
    python benchmarks/engine.py --no-speed --scores-out S.npz  # trial scores for engine_cascade.py
    python benchmarks/engine.py --map-channels clean,mulaw,alaw,noise --conditions amr-3s,gsm-3s
        # the channel map fitted without the mobile codecs: results/engine-map-channels.json

About 45 minutes on 2 idle cores (accuracy part on 1 thread; 4 of them fit the channel map). The
speed part runs first and needs the machine to itself; ``--speed-only`` re-measures it alone.

Corpora: LibriSpeech test-other (10 speakers x 10 files, in ``FOLDS`` = 5 enrolment folds: in
fold k each speaker is enrolled on files 2k and 2k+1, every other file is a genuine trial for
them and an impostor trial for the 9 others; the folds' trials are pooled, 400 genuine a
condition) plus ``--impostors`` train-clean files drawn with a fixed seed (impostor trials for
every enrolled speaker); and, for the ``meet-`` conditions, the speakerbox council-meeting
speech (9 speakers enrolled on their files of one meeting, tested on their files of the
others: cross-session, spontaneous speech with long pauses; files under 1 s left out).
Enrolment files go through the condition's channel at full length; test files through the
channel and then, for ``<n>s`` conditions, cut to the shortest prefix holding ``n`` seconds of
net speech (as benchmarks/accuracy.py).

Channels: ``clean``; ``mulaw`` / ``alaw`` (8 kHz, 300-3400 Hz, G.711 round trip); ``dtx``
(every frame the VAD calls a pause set to exact zeros, as VoIP DTX without comfort noise);
``noise`` (white noise at ``NOISE_SNR_DB``); ``amr`` (AMR-NB 12.2 kbit/s) and ``gsm``
(GSM-FR) through SoX on the narrowband signal, skipped when SoX cannot encode them.

Systems, all scored by cosine against the mean enrolment embedding:

* ``baseline``: SpeechBrain ``EncoderClassifier.encode_batch`` on the whole (degraded) file;
* ``ecapa``: voiceauth's front end (``speech.analyse(...).trimmed``: long non-speech out, short
  pauses and word edges kept) + ECAPA on ONNX (the embedding space of
  :class:`voiceauth.embedding.EcapaEmbedder`; parity is checked);
* ``campplus``: the same front end + CAM++ on ONNX;
* ``campplus_mapped``: the same embeddings through a channel map
  (:mod:`voiceauth.embedding.channel_map`) fitted in this run by ``benchmarks/train_channel_map.py``
  on the train-clean speakers that are not among the impostors (``--map-channels``: on some of its
  training channels only);
* ``ecapa_asnorm``: the same cosines AS-normalised as voiceauth scores a new deployment's
  trials: against the public cohort shipped in ``voiceauth/data`` for ECAPA and the channel
  (``phone`` rows for the G.711 and mobile-codec channels, ``clean`` rows otherwise; top 100),
  less the rows of any speaker among the train-clean impostors;
* ``*_centred``: the cosine after subtracting the mean of the split's voiceprints (10 LibriSpeech
  or 9 meeting speakers, enrolled on the condition's channel: as a bank would subtract its store's
  mean) from the enrolment and test embeddings;
* ``fusion``: the mean of the ``ecapa`` and ``campplus`` cosines;
* ``ecapa_spliced`` (``--spliced``): the old front end, speech frames spliced together, + ECAPA.

Speed: embeddings per second of 3 s speech segments, and the real-time factor, for
SpeechBrain, ECAPA ONNX and CAM++ ONNX on 1 and 2 threads (warm models, one segment a call),
and each engine's best layout on the 2 cores: one process on 2 threads, 2 worker processes
on 1 thread each (a service's pool), or one process making 2 calls at once on 1 thread each
(a live pool's 2 model slots).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from voiceauth.audio.channel import TELEPHONE_BAND_HZ, TELEPHONE_RATE, add_noise
from voiceauth.audio.decode import MODEL_RATE, Audio, load_audio, resample
from voiceauth.audio.g711 import alaw_decode, alaw_encode, mulaw_decode, mulaw_encode
from voiceauth.embedding.base import l2_normalise
from voiceauth.embedding.channel_map import ChannelMap
from voiceauth.scoring.statistics import compute_metrics
from voiceauth.speech.activity import analyse, frame_length, speech_mask
from voiceauth.tools.bench import crop_to_speech

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "corpora" / "librispeech-samples"
RESULTS = ROOT / "benchmarks" / "results"
SEED = 14
ENROL_FILES = 2
FOLDS = 5
"""Enrolment folds on LibriSpeech (10 files a speaker, 2 enrolled on per fold)."""
NOISE_SNR_DB = 20.0
SPEED_SEGMENT_S = 3.0
SYSTEMS = ("baseline", "ecapa", "ecapa_asnorm", "ecapa_centred", "campplus", "campplus_centred", "campplus_mapped",
           "campplus_mapped_centred", "fusion")
AS_NORMED = {"ecapa_asnorm": "ecapa"}
"""Systems scored with AS-norm against the shipped public cohort, and the system whose embeddings they use."""
CENTRED = {"ecapa_centred": "ecapa", "campplus_centred": "campplus", "campplus_mapped_centred": "campplus_mapped"}
"""Systems scored by the cosine after subtracting the mean of the split's voiceprints (as a bank would
subtract its store's mean), and the system whose embeddings they use."""
PHONE_CHANNELS = ("mulaw", "alaw", "amr", "gsm")
"""Channels scored against the public cohort's ``phone`` rows (the others: its ``clean`` rows)."""
SPLICED = "ecapa_spliced"
DEFAULT_SYSTEM = "campplus_mapped_centred"
"""The candidate default engine (the fast one) whose accuracy and speed the issue 14 targets are checked on."""
MAP_HELD_OUT = "engine-map-channels.json"
"""Where a ``--map-channels`` run writes its results (results/engine.json is left as it is)."""
PHONE_3S = "mulaw-3s"
CONDITIONS = ("mulaw-3s", "amr-3s", "gsm-3s", "alaw-3s", "dtx-3s", "noise-3s", "clean-3s", "mulaw-2s", "mulaw-1s",
              "clean-1s", "clean-2s", "clean-full", "meet-mulaw-3s", "meet-clean-3s", "meet-mulaw-full")
"""Most telling first: results are written after each condition, so a cut-short run still reports them.
``meet-`` conditions use the meeting speech; the others LibriSpeech."""
SOX_CODECS = {"amr": ("amr-nb", ["-C", "7"]), "gsm": ("gsm", [])}
"""channel -> (SoX file type, encoder options): AMR-NB mode 7 is 12.2 kbit/s; GSM-FR is 13 kbit/s."""


# -- conditions ----------------------------------------------------------------------------------


def narrowband(audio: Audio) -> np.ndarray:
    """``audio`` at 8 kHz through the 300-3400 Hz telephone band (no codec yet)."""
    from scipy.signal import butter, sosfilt

    narrow = resample(audio.samples, audio.sample_rate, TELEPHONE_RATE)
    sos = butter(4, TELEPHONE_BAND_HZ, btype="bandpass", fs=TELEPHONE_RATE, output="sos")
    return np.clip(sosfilt(sos, narrow), -1.0, 1.0).astype(np.float32)


def _wideband(narrow: np.ndarray) -> Audio:
    return Audio(np.clip(resample(narrow, TELEPHONE_RATE, MODEL_RATE), -1.0, 1.0).astype(np.float32), MODEL_RATE)


def g711(audio: Audio, law: str) -> Audio:
    """8 kHz band-limited G.711 (``"mulaw"`` or ``"alaw"``) round trip, back at 16 kHz."""
    encode, decode = (mulaw_encode, mulaw_decode) if law == "mulaw" else (alaw_encode, alaw_decode)
    return _wideband(decode(encode(narrowband(audio))))


def sox_codec_available(channel: str) -> bool:
    """Can SoX here encode and decode the mobile codec of ``channel``?"""
    if shutil.which("sox") is None:
        return False
    try:
        sox_codec(Audio(np.zeros(MODEL_RATE, dtype=np.float32), MODEL_RATE), channel)
    except (OSError, subprocess.CalledProcessError, RuntimeError):
        return False
    return True


def sox_codec(audio: Audio, channel: str, options: Sequence[str] | None = None) -> Audio:
    """8 kHz band-limited round trip through SoX's encoder of ``channel`` (``amr`` or ``gsm``), 16 kHz out
    (``options``: the encoder's, instead of the benchmark's)."""
    kind, default = SOX_CODECS[channel]
    options = default if options is None else options
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as tmp:
        raw, coded, back = Path(tmp, "in.wav"), Path(tmp, f"coded.{kind}"), Path(tmp, "out.wav")
        sf.write(raw, narrowband(audio), TELEPHONE_RATE, subtype="PCM_16")
        subprocess.run(["sox", "-q", str(raw), *options, "-t", kind, str(coded)], check=True, capture_output=True)
        subprocess.run(["sox", "-q", "-t", kind, str(coded), "-t", "wav", "-e", "signed-integer", "-b", "16",
                        str(back)], check=True, capture_output=True)
        decoded, rate = sf.read(back, dtype="float32")
    if rate != TELEPHONE_RATE or decoded.ndim != 1:
        raise RuntimeError(f"sox {kind} round trip gave {decoded.shape} at {rate} Hz")
    return _wideband(decoded)


def digital_silence(audio: Audio) -> Audio:
    """Every frame the VAD calls a pause (and any trailing partial frame) set to exact zeros."""
    n = frame_length(audio.sample_rate)
    keep = np.repeat(speech_mask(audio.samples, audio.sample_rate), n)
    out = np.zeros_like(audio.samples)
    out[: len(keep)] = np.where(keep, audio.samples[: len(keep)], 0.0)
    return Audio(out, audio.sample_rate, audio.truncated)


def seed_of(path: Path) -> int:
    """A per-file seed that does not depend on the order files are visited."""
    return zlib.crc32(path.name.encode())


def apply_channel(audio: Audio, channel: str, seed: int = 0) -> Audio:
    """``audio`` (16 kHz) through one benchmark channel, 16 kHz out."""
    if channel == "clean":
        return audio
    if channel in ("mulaw", "alaw"):
        return g711(audio, channel)
    if channel == "dtx":
        return digital_silence(audio)
    if channel == "noise":
        return add_noise(audio, NOISE_SNR_DB, seed=seed)
    if channel in SOX_CODECS:
        return sox_codec(audio, channel)
    raise ValueError(f"unknown channel {channel!r}")


def parse_condition(name: str) -> tuple[str, float | None]:
    """``"mulaw-3s"`` -> ("mulaw", 3.0); ``"clean-full"`` -> ("clean", None); a ``meet-`` prefix is the corpus."""
    channel, length = name.removeprefix("meet-").split("-")
    return channel, None if length == "full" else float(length.rstrip("s"))


# -- embedding -----------------------------------------------------------------------------------


class Engines:
    """The three models, each mapping one 16 kHz signal to a unit embedding."""

    spliced = False
    """Also embed the old front end's output (speech frames spliced) with ECAPA."""
    channel_map: ChannelMap | None = None
    """The map that makes ``campplus_mapped`` from ``campplus`` (None: not scored)."""

    def __init__(self, threads: int) -> None:
        import torch

        from voiceauth.embedding.ecapa import EcapaEmbedder
        from voiceauth.embedding.onnx import OnnxEmbedder

        torch.set_num_threads(threads)
        self.speechbrain = EcapaEmbedder().load()._model
        self.onnx = {name: OnnxEmbedder(name, threads=threads).load() for name in ("ecapa", "campplus")}

    def baseline(self, samples: np.ndarray) -> np.ndarray:
        """Plain SpeechBrain: ``encode_batch`` on the whole signal, as a user of SpeechBrain alone would."""
        import torch

        with torch.inference_mode():
            emb = self.speechbrain.encode_batch(torch.from_numpy(np.ascontiguousarray(samples, np.float32))[None])
        return l2_normalise(emb.squeeze().cpu().numpy())

    def embed(self, audio: Audio) -> dict[str, np.ndarray]:
        """Every system's embedding of one (degraded) recording (``fusion`` is scored from the other two)."""
        analysis = analyse(audio)
        heard = analysis.trimmed.samples
        if len(heard) == 0:  # no frame passed the VAD: the front-end systems see the whole file
            heard = audio.samples
        ecapa, campplus = self.onnx["ecapa"], self.onnx["campplus"]
        out = {
            "baseline": self.baseline(audio.samples),
            "ecapa": ecapa.embed([heard])[0],
            "campplus": campplus.embed([heard])[0],
        }
        if self.channel_map is not None:
            out["campplus_mapped"] = self.channel_map.apply(out["campplus"])
        if self.spliced:
            spliced = analysis.speech.samples
            out[SPLICED] = ecapa.embed([spliced if len(spliced) else audio.samples])[0]
        return out


@dataclass(frozen=True)
class Pool:
    enrol: dict[str, list[Path]]
    tests: dict[str, list[Path]]
    impostors: list[Path]


def meeting_pool() -> Pool:
    """The meeting speech: enrol each speaker on their files of the meeting most speakers talk in, test on the rest."""
    from voiceauth.tools.samples import enrolment_meeting, meeting_speech, meetings

    by_meeting = {m: {s: [f for f in files if sf.info(str(f)).duration >= 1.0] for s, files in speakers.items()}
                  for m, speakers in meetings(meeting_speech()).items()}
    enrol_in = enrolment_meeting(by_meeting)
    enrol = dict(sorted(by_meeting[enrol_in].items()))
    tests: dict[str, list[Path]] = {s: [] for s in enrol}
    for meeting, speakers in sorted(by_meeting.items()):
        if meeting != enrol_in:
            for speaker, files in speakers.items():
                if speaker in tests:
                    tests[speaker] += files
    return Pool(enrol, tests, [])


def pool(impostors: int, seed: int = SEED, fold: int = 0) -> Pool:
    """Test-other speakers and a seeded draw of train-clean impostors; in ``fold`` k each speaker is
    enrolled on their files ``ENROL_FILES * k`` onwards (``ENROL_FILES`` of them) and tested on the others."""
    speakers = {d.name: sorted(d.glob("*.flac")) for d in sorted((SHARED / "test-other").iterdir()) if d.is_dir()}
    extra = sorted((SHARED / "train-clean").glob("*.flac"))
    chosen = sorted(np.random.default_rng(seed).choice(len(extra), size=min(impostors, len(extra)), replace=False))
    first = ENROL_FILES * fold
    return Pool({s: f[first:first + ENROL_FILES] for s, f in speakers.items()},
                {s: f[:first] + f[first + ENROL_FILES:] for s, f in speakers.items()}, [extra[i] for i in chosen])


def folds(impostors: int, count: int = FOLDS, seed: int = SEED) -> list[Pool]:
    """``count`` LibriSpeech splits with disjoint enrolment files: every file is enrolled on in one
    fold and tested in the others, so the trials use all the speech (5x the genuine trials of one split)."""
    return [pool(impostors, seed, fold) for fold in range(count)]


Cache = dict[tuple[str, float | None, str], dict[str, np.ndarray]]


def embeddings(engines: Engines, files: Sequence[Path], channel: str, test_s: float | None,
               cache: Cache) -> dict[Path, dict[str, np.ndarray]]:
    """Every system's embedding of each file under (channel, crop), computed once per run."""
    out = {}
    for path in files:
        key = (channel, test_s, str(path))
        if key not in cache:
            audio = apply_channel(load_audio(path), channel, seed_of(path))
            if test_s is not None:
                audio = crop_to_speech(audio, test_s)
            cache[key] = engines.embed(audio)
        out[path] = cache[key]
    return out


def score_condition(engines: Engines, splits: Sequence[Pool], name: str, cache: Cache,
                    keep: dict[str, np.ndarray] | None = None) -> dict[str, object]:
    """EER and minDCF(0.01) of every system on one condition, on the trials of all ``splits`` pooled
    (``splits``: the condition's corpus, one split per enrolment fold). ``keep``, if given, receives
    every system's trial scores and the labels (``<condition>/<system>``, ``<condition>/truth``)."""
    channel, test_s = parse_condition(name)
    labels: list[np.ndarray] = []
    parts: dict[str, list[np.ndarray]] = {system: [] for system in systems(engines)}
    for split in splits:
        enrolled = embeddings(engines, [p for f in split.enrol.values() for p in f], channel, None, cache)
        test_files = [p for f in split.tests.values() for p in f] + split.impostors
        tested = embeddings(engines, test_files, channel, test_s, cache)
        owner = {p: s for s, files in split.tests.items() for p in files}
        trials = [(s, p) for p in test_files for s in split.enrol]
        labels.append(np.array([owner.get(p) == s for s, p in trials]))
        for system in systems(engines):
            if system == "fusion" or system in AS_NORMED or system in CENTRED:
                continue
            voiceprint = {s: l2_normalise(np.mean([enrolled[p][system] for p in files], axis=0))
                          for s, files in split.enrol.items()}
            parts[system].append(np.array([float(voiceprint[s] @ tested[p][system]) for s, p in trials]))
            normed = next((n for n, used in AS_NORMED.items() if used == system), None)
            if normed is not None:
                raw = parts[system][-1]
                parts[normed].append(as_normed(engines, system, channel, split, voiceprint, tested, trials, raw))
            centred = next((n for n, used in CENTRED.items() if used == system), None)
            if centred is not None:
                parts[centred].append(centred_cosines(system, split, enrolled, tested, voiceprint, trials))
    truth = np.concatenate(labels)
    out: dict[str, object] = {"trials": {"genuine": int(truth.sum()), "impostor": int((~truth).sum())},
                              "folds": len(splits)}
    scores = {system: np.concatenate(values) for system, values in parts.items() if values}
    scores["fusion"] = (scores["ecapa"] + scores["campplus"]) / 2.0
    if keep is not None:
        keep[f"{name}/truth"] = truth
        keep |= {f"{name}/{system}": values.astype(np.float32) for system, values in scores.items()}
    for system in systems(engines):
        m = compute_metrics(scores[system], truth)
        out[system] = {"eer": round(m.eer, 5), "min_dcf_0.01": round(m.min_dcf_01, 4)}
    return out


def as_normed(engines: Engines, system: str, channel: str, split: Pool, voiceprint: dict[str, np.ndarray],
              tested: dict[Path, dict[str, np.ndarray]], trials: Sequence[tuple[str, Path]],
              raw: np.ndarray) -> np.ndarray:
    """``raw`` AS-normalised as voiceauth scores a new deployment's trials: against the public cohort
    shipped for the model and channel (clean or phone), less the rows of speakers among this split's
    impostors (the cohort and the impostors are both drawn from train-clean)."""
    from voiceauth.scoring.normalisation import as_norm_many
    from voiceauth.services.cohort import public_cohort

    cohort_channel = "phone" if channel in PHONE_CHANNELS else "clean"
    cohort = public_cohort(engines.onnx[system].model_id, cohort_channel)
    assert cohort is not None, f"no public cohort ships for {system}"
    impostor_speakers = {p.name.split("-")[0] for p in split.impostors}
    cohort = cohort[[i for i, s in enumerate(cohort_speakers(system)) if s not in impostor_speakers]]
    enrol = np.stack([voiceprint[s] for s, _ in trials])
    tests = np.stack([tested[p][system] for _, p in trials])
    return as_norm_many(raw, enrol, tests, cohort)


def centred_cosines(system: str, split: Pool, enrolled: dict[Path, dict[str, np.ndarray]],
                    tested: dict[Path, dict[str, np.ndarray]], voiceprint: dict[str, np.ndarray],
                    trials: Sequence[tuple[str, Path]]) -> np.ndarray:
    """Cosines after subtracting the mean of the split's voiceprints (the enrolled speakers: what a
    bank's store holds, on its own channel) from every enrolment and test embedding."""
    mean = np.mean([voiceprint[s] for s in split.enrol], axis=0)
    centred = {s: l2_normalise(np.mean([l2_normalise(enrolled[p][system] - mean) for p in files], axis=0))
               for s, files in split.enrol.items()}
    return np.array([float(centred[s] @ l2_normalise(tested[p][system] - mean)) for s, p in trials])


@functools.cache
def cohort_speakers(system: str) -> tuple[str, ...]:
    """The LibriSpeech speaker of each row of the shipped public cohort (its manifest, read once)."""
    from importlib import resources

    manifest = json.loads(resources.files("voiceauth.data").joinpath(f"cohort_{system}.json").read_text())
    return tuple(manifest["speakers"])


def systems(engines: Engines | None = None) -> tuple[str, ...]:
    mapped = engines is None or engines.channel_map is not None
    names = SYSTEMS if mapped else tuple(s for s in SYSTEMS if not s.startswith("campplus_mapped"))
    return (*names, SPLICED) if engines is not None and engines.spliced else names


def channel_map_without(impostors: Sequence[Path], channels: Sequence[str] | None = None) -> ChannelMap:
    """A channel map fitted by ``benchmarks/train_channel_map.py`` on every train-clean speaker but the
    ``impostors``' (``channels``: only the pieces heard through these training channels; default all)."""
    import train_channel_map

    leave_out = {train_channel_map.speaker_of(p) for p in impostors}
    files = [p for p in train_channel_map.training_files() if train_channel_map.speaker_of(p) not in leave_out]
    return train_channel_map.fitted_map(train_channel_map.embed_pieces(files),
                                        channels=channels or train_channel_map.CHANNELS)


def parity(engines: Engines, files: Sequence[Path]) -> float:
    """Smallest cosine between voiceauth's torch ECAPA embedder and ECAPA ONNX on the same VAD speech."""
    from voiceauth.embedding.ecapa import EcapaEmbedder

    torch_ecapa = EcapaEmbedder()
    worst = 1.0
    for path in files:
        speech = analyse(load_audio(path)).trimmed.samples
        worst = min(worst, float(torch_ecapa.embed([speech])[0] @ engines.onnx["ecapa"].embed([speech])[0]))
    return round(worst, 6)


# -- speed ---------------------------------------------------------------------------------------


def segments(files: Sequence[Path], count: int) -> list[np.ndarray]:
    """``count`` real 3 s speech segments, the first of each file that is long enough."""
    n = int(SPEED_SEGMENT_S * MODEL_RATE)
    out = [s.samples[:n] for s in (load_audio(p) for p in files) if len(s.samples) >= n]
    return out[:count]


def speed(segs: Sequence[np.ndarray], rounds: int = 2) -> dict[str, object]:
    """Embeddings/s and real-time factor of 3 s segments on 1 and 2 threads, ratios vs SpeechBrain.

    Calls are interleaved (segment by segment, every engine and thread count in turn) and the
    median call time is used, so load from other processes on a shared machine hits all alike.
    """
    import torch

    engines = {threads: Engines(threads) for threads in (1, 2)}
    calls: dict[tuple[int, str], Callable[[np.ndarray], object]] = {}
    for threads, e in engines.items():
        calls[threads, "speechbrain"] = e.baseline
        for name, onnx in e.onnx.items():
            calls[threads, f"{name}_onnx"] = _single(onnx)
    times: dict[tuple[int, str], list[float]] = {key: [] for key in calls}
    for index, seg in enumerate([*segs[:2], *list(segs) * rounds]):
        for (threads, name), call in calls.items():
            torch.set_num_threads(threads)
            started = time.perf_counter()
            call(seg)
            if index >= 2:  # the first two are warm-up
                times[threads, name].append(time.perf_counter() - started)
    out: dict[str, object] = {}
    per_config: dict[int, dict[str, float]] = {}
    for threads in engines:
        rates = {name: 1.0 / float(np.median(t)) for (th, name), t in times.items() if th == threads}
        per_config[threads] = rates
        out[f"{threads}_thread{'s' if threads > 1 else ''}"] = {
            name: {"embeddings_per_s": round(r, 2), "rtf": round(1.0 / (r * SPEED_SEGMENT_S), 4),
                   "vs_speechbrain": round(r / rates["speechbrain"], 2)}
            for name, r in rates.items()
        }
    del engines
    out["2_cores_best"] = two_cores(segs, per_config[2])
    return out


def _engine_call(name: str) -> Callable[[np.ndarray], object]:
    """One engine on one thread, warm, in this process."""
    if name == "speechbrain":
        return Engines(1).baseline
    from voiceauth.embedding.onnx import OnnxEmbedder

    return _single(OnnxEmbedder(name.removesuffix("_onnx"), threads=1).load())


TWO_CORE_MIN_S = 15.0
"""Each engine's 2-process run lasts at least this long (CAM++ embeds the 32 segments in about 1 s)."""


def _worker(name: str, segs: Sequence[np.ndarray], min_s: float, start_at: float) -> tuple[int, float]:
    """Load ``name``, warm it, wait for the common start, embed the segments round after round for at
    least ``min_s`` seconds; (count, end)."""
    call = _engine_call(name)
    for seg in segs[:2]:
        call(seg)
    time.sleep(max(0.0, start_at - time.time()))
    done = 0
    while time.time() - start_at < min_s:
        for seg in segs:
            call(seg)
            done += 1
    return done, time.time()


def _shared(name: str, segs: Sequence[np.ndarray], min_s: float) -> float:
    """Embeddings/s of one model on 1 thread a call, called from 2 threads at once in this process (as
    a live pool with 2 model slots runs an ONNX model: one session, its weights in memory once)."""
    import threading

    import torch

    torch.set_num_threads(1)
    call = _engine_call(name)
    for seg in segs[:2]:
        call(seg)
    counts = [0, 0]

    def loop(index: int) -> None:
        while time.perf_counter() - started < min_s:
            for seg in segs:
                call(seg)
                counts[index] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


def two_cores(segs: Sequence[np.ndarray], in_process: dict[str, float], min_s: float = TWO_CORE_MIN_S
              ) -> dict[str, object]:
    """Each engine's best throughput on the 2 cores, engines one after another: one process on 2
    threads (``in_process``, measured above), 2 worker processes on 1 thread each (a service's worker
    pool), or one process calling one model of 1 thread from 2 threads (a live pool's 2 model slots);
    ratios against SpeechBrain's best."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    best: dict[str, tuple[float, str]] = {}
    for name in in_process:
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as workers:
            start_at = time.time() + 60.0  # both load and warm up before the clock starts
            results = [f.result() for f in [workers.submit(_worker, name, list(segs), min_s, start_at)
                                            for _ in range(2)]]
        procs = sum(n for n, _ in results) / (max(end for _, end in results) - start_at)
        shared = _shared(name, segs, min_s)
        best[name] = max((in_process[name], "1 process x 2 threads"), (procs, "2 processes x 1 thread"),
                         (shared, "1 process, 2 calls x 1 thread"))
    base = best["speechbrain"][0]
    return {name: {"embeddings_per_s": round(rate, 2), "rtf": round(1.0 / (rate * SPEED_SEGMENT_S), 4),
                   "vs_speechbrain": round(rate / base, 2), "how": how} for name, (rate, how) in best.items()}


def _single(embedder: Any) -> Callable[[np.ndarray], object]:
    return lambda seg: embedder.embed([seg])


# -- report --------------------------------------------------------------------------------------


def summarise(conditions: dict[str, dict[str, object]], speeds: dict[str, object]) -> dict[str, object]:
    """Which systems are at or below the baseline everywhere; the phone 3 s ratio; speed ratios."""
    def value(cond: str, system: str, metric: str = "eer") -> float:
        return float(conditions[cond][system][metric])  # type: ignore[index]

    def ratio(cond: str, system: str) -> float | None:
        base = value(cond, "baseline")
        return round(value(cond, system) / base, 3) if base > 0 else (None if value(cond, system) > 0 else 1.0)

    names = present(conditions)[1:]

    def everywhere(metric: str) -> list[str]:
        return [s for s in names if all(value(c, s, metric) <= value(c, "baseline", metric) for c in conditions)]

    out: dict[str, object] = {
        "at_or_below_baseline_eer_everywhere": everywhere("eer"),
        "at_or_below_baseline_min_dcf_everywhere": everywhere("min_dcf_0.01"),
        "eer_ratio_vs_baseline": {c: {s: ratio(c, s) for s in names} for c in conditions},
        "worse_than_baseline_eer": {s: [c for c in conditions if value(c, s) > value(c, "baseline")] for s in names},
        "speed_vs_speechbrain": {t: {n: v["vs_speechbrain"] for n, v in r.items()}  # type: ignore[union-attr]
                                 for t, r in speeds.items()},
    }
    if PHONE_3S in conditions:
        out["phone_3s_eer_ratio"] = {s: ratio(PHONE_3S, s) for s in names}
        out["phone_3s_target"] = "<= 0.7 x baseline EER"
    return out


def present(conditions: dict[str, dict[str, object]]) -> tuple[str, ...]:
    """The systems measured (the baseline first)."""
    first = next(iter(conditions.values()), {})
    return tuple(s for s in (*SYSTEMS, SPLICED) if s in first)


def markdown(conditions: dict[str, dict[str, object]], speeds: dict[str, object]) -> str:
    """The README table: EER % / minDCF(0.01) per condition and system, then the speed table."""
    names = present(conditions)
    head = "| condition | trials (gen/imp) | " + " | ".join(names) + " |"
    lines = [head, "|" + " --- |" * (len(names) + 2)]
    for cond, res in conditions.items():
        trials = res["trials"]
        cells = [f"{100 * res[s]['eer']:.2f} / {res[s]['min_dcf_0.01']:.3f}" for s in names]  # type: ignore[index]
        lines.append(f"| {cond} | {trials['genuine']}/{trials['impostor']} | " + " | ".join(cells) + " |")  # type: ignore[index]
    lines += ["", "| cores | engine | embeddings/s (3 s) | RTF | vs SpeechBrain |", "| --- | --- | --- | --- | --- |"]
    layout = {"1_thread": "1 thread", "2_threads": "2 threads, 1 process", "2_cores_best": "2 cores, best layout"}
    for threads, rates in speeds.items():
        for name, v in rates.items():  # type: ignore[union-attr]
            how = f" ({v['how']})" if "how" in v else ""
            lines.append(f"| {layout.get(threads, threads)} | {name}{how} | {v['embeddings_per_s']} | {v['rtf']} | "
                         f"{v['vs_speechbrain']}x |")
    return "\n".join(lines) + "\n"


def plot(conditions: dict[str, dict[str, object]], path: Path) -> None:
    """Grouped bars: EER per condition per system, the baseline hatched and drawn as a line across its group."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(8.0, 1.1 * len(conditions)), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    names = present(conditions)
    width = 0.8 / len(names)
    x = np.arange(len(conditions))
    for i, system in enumerate(names):
        values = [100 * float(r[system]["eer"]) for r in conditions.values()]  # type: ignore[index]
        ax.bar(x - 0.4 + (i + 0.5) * width, values, width, label=system,
               color="lightgrey" if system == "baseline" else None, edgecolor="black" if system == "baseline" else None,
               hatch="//" if system == "baseline" else None)
    for xi, r in zip(x, conditions.values(), strict=True):
        ax.hlines(100 * float(r["baseline"]["eer"]), xi - 0.4, xi + 0.4, colors="black", linewidth=1)  # type: ignore[index]
    ax.set_xticks(x, list(conditions), rotation=30, ha="right")
    ax.set_ylabel("EER (%)")
    ax.set_title("Speaker engines vs plain SpeechBrain (black line: baseline EER)")
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, format="png")


def write(result: dict[str, object], conditions: dict[str, dict[str, object]], speeds: dict[str, object]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "engine.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "engine.md").write_text(markdown(conditions, speeds))
    plot(conditions, RESULTS / "engine.png")


def speed_only() -> int:
    """Replace the speed part (and summary) of an existing results/engine.json."""
    result = json.loads((RESULTS / "engine.json").read_text())
    split = pool(0)
    speeds = speed(segments([p for f in split.tests.values() for p in f], 16))
    result |= {"speed_3s_segments": speeds, "summary": summarise(result["conditions"], speeds)}
    result["machine"]["speed_remeasured_load_avg"] = os.getloadavg()
    write(result, result["conditions"], speeds)
    print(markdown(result["conditions"], speeds))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="clean channel only, 10 impostor files")
    parser.add_argument("--impostors", type=int, default=30, help="train-clean impostor files (default 30)")
    parser.add_argument("--threads", type=int, default=1, help="threads for the accuracy part (default 1)")
    parser.add_argument("--spliced", action="store_true", help="also the old front end (speech spliced) + ECAPA")
    parser.add_argument("--conditions", help="comma-separated subset of the conditions (default: all)")
    parser.add_argument("--speed-only", action="store_true",
                        help="re-measure only the speed part (e.g. on an idle machine) into the existing engine.json")
    parser.add_argument("--no-speed", action="store_true",
                        help="skip the speed part (accuracy only; results/engine.* are left as they are: "
                             "use it with --scores-out)")
    parser.add_argument("--map-channels",
                        help="fit the channel map on these training channels only (comma-separated, of "
                             "clean,mulaw,alaw,amr,gsm,noise): does it carry over to a codec it never heard? "
                             "Implies --no-speed")
    parser.add_argument("--scores-out", type=Path,
                        help="also write every condition's trial scores and labels to this .npz (for analysis)")
    args = parser.parse_args(argv)
    if args.speed_only:
        return speed_only()
    if args.map_channels:
        args.no_speed = True
    started, load_start = time.time(), os.getloadavg()
    splits = folds(10 if args.quick else args.impostors)
    split = splits[0]
    names = args.conditions.split(",") if args.conditions else [c for c in CONDITIONS
                                                                 if not args.quick or c.startswith("clean")]
    unknown = [c for c in names if c not in CONDITIONS]
    if unknown:
        parser.error(f"unknown conditions {unknown}; choose from {', '.join(CONDITIONS)}")
    meeting = meeting_pool() if any(c.startswith("meet-") for c in names) else None
    skipped = {c: "SoX cannot encode this codec here (apt-get install sox libsox-fmt-all)"
               for c in names if parse_condition(c)[0] in SOX_CODECS and not sox_codec_available(parse_condition(c)[0])}
    speeds = {} if args.no_speed else speed(segments([p for f in split.tests.values() for p in f], 16))
    engines = Engines(args.threads)
    engines.spliced = args.spliced
    map_s = time.time()
    map_channels = args.map_channels.split(",") if args.map_channels else None
    engines.channel_map = channel_map_without(split.impostors, map_channels)
    map_s = round(time.time() - map_s)
    result: dict[str, object] = {
        "settings": {"seed": SEED, "enrol_files": ENROL_FILES, "folds": len(splits), "speakers": len(split.enrol),
                     "train_clean_impostors": len(split.impostors), "noise_snr_db": NOISE_SNR_DB,
                     "meeting_speakers": len(meeting.enrol) if meeting else 0,
                     "front_end": "speech.analyse(...).trimmed: long non-speech out, short pauses and word edges kept",
                     "threads_accuracy": args.threads, "scoring": "cosine vs mean enrolment embedding",
                     "candidate_default_system": DEFAULT_SYSTEM,
                     "channel_map": "fitted in this run on the train-clean speakers not among the impostors "
                                    f"(benchmarks/train_channel_map.py recipe), {map_s} s",
                     "channel_map_channels": map_channels or "all"},
        "skipped_conditions": skipped,
        "ecapa_onnx_vs_torch_min_cosine": parity(engines, [f[0] for f in list(split.tests.values())[:3]]),
        "speed_3s_segments": speeds,
    }
    cache: Cache = {}
    kept: dict[str, np.ndarray] | None = {} if args.scores_out else None
    conditions: dict[str, dict[str, object]] = {}
    for name in (c for c in names if c not in skipped):
        t0 = time.time()
        corpus = [meeting] if name.startswith("meet-") and meeting is not None else splits
        conditions[name] = score_condition(engines, corpus, name, cache, kept)
        if kept is not None:
            np.savez_compressed(args.scores_out, **kept)
        print(f"{name}: {time.time() - t0:.0f} s " + ", ".join(
            f"{s} {100 * conditions[name][s]['eer']:.2f}%" for s in systems(engines)), flush=True)  # type: ignore[index]
        result |= {
            "machine": {"cpus": os.cpu_count(), "load_avg_at_start": load_start, "load_avg_now": os.getloadavg(),
                        "wall_s": round(time.time() - started)},
            "conditions": conditions, "summary": summarise(conditions, speeds),
        }
        if speeds:
            write(result, conditions, speeds)
        elif map_channels:
            (RESULTS / MAP_HELD_OUT).write_text(json.dumps(result, indent=2))
    print(markdown(conditions, speeds))
    print(json.dumps(result["summary"], indent=2))
    print(f"total {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
