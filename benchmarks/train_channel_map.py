"""Fit a channel map for CAM++ (:mod:`voiceauth.embedding.channel_map`) on public speech.

    python benchmarks/train_channel_map.py --out map.npz   # ~5 min on 2 cores (all 251 speakers)

Every LibriSpeech train-clean sample in ``../shared`` (251 speakers, one recording each) is cut
into its two halves, and each half is heard through six channels: as recorded; G.711 mu-law and
A-law (8 kHz, 300-3400 Hz); AMR-NB at a random one of its 8 bit rates and GSM-FR (SoX); white
noise at a random 10-30 dB SNR. Each is embedded whole and cut to a random 1, 2 or 3 s of net
speech: 24 embeddings a speaker, through voiceauth's front end (long non-speech out) and CAM++.
:func:`voiceauth.embedding.channel_map.fit_channel_map` then removes the ``DIRECTIONS`` leading
directions of the within-speaker scatter. Seeded per recording (its index in sorted order), so
the same samples give the same map on the same machine.

``benchmarks/engine.py`` fits one this way in every run, on the speakers that are not among its
impostors, and scores CAM++ through it (``campplus_mapped*``). No speaker model applies a map yet
(see the module's docstring).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from voiceauth.audio.channel import add_noise
from voiceauth.audio.decode import Audio, load_audio
from voiceauth.embedding.channel_map import DIRECTIONS, ChannelMap, fit_channel_map
from voiceauth.tools.bench import crop_to_speech

sys.path.insert(0, str(Path(__file__).resolve().parent))
import engine as bench  # noqa: E402  (the benchmark's channels)

CHANNELS = ("clean", "mulaw", "alaw", "amr", "gsm", "noise")
CROPS_S = (1.0, 2.0, 3.0)
LICENCE = "CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)"


def channel(audio: Audio, name: str, rng: np.random.Generator) -> Audio:
    """``audio`` through one training channel; random settings drawn from ``rng``."""
    if name == "noise":
        return add_noise(audio, float(rng.uniform(10, 30)), seed=int(rng.integers(1 << 30)))
    if name == "amr":
        return bench.sox_codec(audio, "amr", ["-C", str(int(rng.integers(0, 8)))])
    return bench.apply_channel(audio, name)


def pieces(audio: Audio, index: int) -> list[Audio]:
    """The 24 training pieces of one recording (seeded by its index)."""
    rng = np.random.default_rng(index)
    half = len(audio.samples) // 2
    out = []
    for part in (audio.samples[:half], audio.samples[half:]):
        for name in CHANNELS:
            heard = channel(Audio(part, audio.sample_rate), name, rng)
            out += [heard, crop_to_speech(heard, float(rng.choice(CROPS_S)))]
    return out


_embedder: Any = None


def _start() -> None:
    global _embedder
    from voiceauth.embedding.onnx import CAMPPLUS_ONNX, OnnxEmbedder

    _embedder = OnnxEmbedder(CAMPPLUS_ONNX, threads=1).load()


def _embed_file(job: tuple[int, str]) -> np.ndarray:
    from voiceauth.speech.activity import analyse

    index, path = job
    rows = []
    for piece in pieces(load_audio(Path(path)), index):
        heard = analyse(piece).trimmed.samples
        rows.append(_embedder.embed([heard if len(heard) else piece.samples])[0])
    return np.stack(rows)


def training_files() -> list[Path]:
    return sorted((bench.SHARED / "train-clean").glob("*.flac"))


def speaker_of(path: Path) -> str:
    return path.name.split("-")[0]


def embed_pieces(files: Sequence[Path], workers: int = 2) -> dict[Path, np.ndarray]:
    """Each file's 24 CAM++ embeddings (its seed: its index among all training files)."""
    index = {p: i for i, p in enumerate(training_files())}
    jobs = [(index[p], str(p)) for p in files]
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_start) as pool:
        return dict(zip(files, pool.map(_embed_file, jobs, chunksize=4), strict=True))


def piece_channels() -> list[str]:
    """The channel of each of a recording's pieces, in the order :func:`pieces` makes them."""
    return [name for _ in range(2) for name in CHANNELS for _ in range(2)]


def fitted_map(embedded: dict[Path, np.ndarray], leave_out: set[str] = frozenset(),
               directions: int = DIRECTIONS, channels: Sequence[str] = CHANNELS) -> ChannelMap:
    """The map fitted on the embedded files of every speaker not in ``leave_out``, on their pieces
    heard through ``channels`` (a channel left out shows whether the map carries over to it)."""
    unknown = set(channels) - set(CHANNELS)
    if unknown:
        raise ValueError(f"unknown training channels {sorted(unknown)}; choose from {', '.join(CHANNELS)}")
    rows_kept = np.array([name in channels for name in piece_channels()])
    kept = [(p, e[rows_kept]) for p, e in embedded.items() if speaker_of(p) not in leave_out]
    rows = np.concatenate([e for _, e in kept])
    speakers = [speaker_of(p) for p, e in kept for _ in range(len(e))]
    return fit_channel_map(rows, speakers, directions)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True, help="where to write the map (.npz, and a .json beside)")
    args = parser.parse_args(argv)
    files = training_files()
    embedded = embed_pieces(files, args.workers)
    fitted = fitted_map(embedded)
    payload = fitted.to_bytes()
    digest = hashlib.sha256(payload).hexdigest()
    args.out.write_bytes(payload)
    manifest = {
        "engine": "campplus", "directions": fitted.nuisance.shape[1], "npz_sha256": digest,
        "speakers": sorted({speaker_of(p) for p in files}), "pieces_per_recording": 4 * len(CHANNELS),
        "channels": list(CHANNELS), "crops_s": list(CROPS_S),
        "source": "LibriSpeech ASR corpus, train-clean subset (V. Panayotov, G. Chen, D. Povey, S. Khudanpur, "
                  "'Librispeech: an ASR corpus based on public domain audio books', ICASSP 2015), "
                  "https://www.openslr.org/12",
        "licence": LICENCE,
    }
    args.out.with_suffix(".json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{args.out}: sha256 {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
