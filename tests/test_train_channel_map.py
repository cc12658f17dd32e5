"""benchmarks/train_channel_map.py: the pieces a recording is heard as, and what the map is fitted on."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from bench_modules import benchmark_module

from voiceauth.audio.decode import Audio, load_audio
from voiceauth.embedding.channel_map import fit_channel_map

pytestmark = pytest.mark.integration  # SoX codecs, real speech


@pytest.fixture(scope="module")
def trainer() -> ModuleType:
    return benchmark_module("train_channel_map")


@pytest.fixture(scope="module")
def clip(speakers: dict[str, list[Path]]) -> Audio:
    audio = load_audio(next(iter(speakers.values()))[0])
    return Audio(audio.samples[: 8 * audio.sample_rate], audio.sample_rate)


def test_pieces_follow_the_documented_channel_order_and_are_seeded(trainer: ModuleType, clip: Audio) -> None:
    if not trainer.bench.sox_codec_available("amr") or not trainer.bench.sox_codec_available("gsm"):
        pytest.skip("SoX cannot encode AMR-NB / GSM here")
    pieces = trainer.pieces(clip, 7)
    names = trainer.piece_channels()
    assert len(pieces) == len(names) == 24
    half = len(clip.samples) // 2
    whole = [p for i, p in enumerate(pieces) if i % 2 == 0]
    for i, name in enumerate(names[::2]):
        expected = clip.samples[:half] if i < len(trainer.CHANNELS) else clip.samples[half:]
        assert np.array_equal(whole[i].samples, expected) == (name == "clean")
    for full, cropped in zip(pieces[::2], pieces[1::2], strict=True):  # each crop is a prefix of its piece
        assert len(cropped.samples) <= len(full.samples)
        assert np.array_equal(cropped.samples, full.samples[: len(cropped.samples)])
    again, other = trainer.pieces(clip, 7), trainer.pieces(clip, 8)
    assert all(np.array_equal(a.samples, b.samples) for a, b in zip(pieces, again, strict=True))
    noisy = names.index("noise")
    assert not np.array_equal(pieces[noisy].samples, other[noisy].samples)


def test_the_map_is_fitted_on_the_chosen_speakers_and_channels(trainer: ModuleType) -> None:
    rng = np.random.default_rng(0)
    files = [Path(f"{speaker}-1-0000.flac") for speaker in ("11", "12", "13", "14", "15")]
    embedded = {p: rng.standard_normal((24, 16)) for p in files}
    names = trainer.piece_channels()
    chosen = ["clean", "mulaw", "noise"]
    got = trainer.fitted_map(embedded, leave_out={"15"}, directions=2, channels=chosen)
    rows = [(p.name.split("-")[0], e[i]) for p, e in embedded.items() if not p.name.startswith("15-")
            for i, name in enumerate(names) if name in chosen]
    expected = fit_channel_map(np.stack([r for _, r in rows]), [s for s, _ in rows], directions=2)
    assert got.to_bytes() == expected.to_bytes()
    assert got.to_bytes() != trainer.fitted_map(embedded, directions=2).to_bytes()
    with pytest.raises(ValueError, match="unknown training channels"):
        trainer.fitted_map(embedded, channels=["clean", "opus"])
