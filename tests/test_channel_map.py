"""Channel maps: fitting finds the directions a channel moves every speaker in; applying removes them."""

from __future__ import annotations

import numpy as np
import pytest

from voiceauth.embedding.channel_map import ChannelMap, fit_channel_map

DIM = 24


def heard(seed: int = 0, speakers: int = 40, channels: int = 4) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Speakers, each heard through ``channels`` channels that push every speaker along one shared
    direction by an amount of the channel's (plus a little noise); returns rows, labels, the direction."""
    direction = np.random.default_rng(99).standard_normal(DIM)  # the same channel effect for every draw
    direction /= np.linalg.norm(direction)
    rng = np.random.default_rng(seed)
    voices = rng.standard_normal((speakers, DIM))
    voices /= np.linalg.norm(voices, axis=1, keepdims=True)
    shifts = np.linspace(-1.2, 1.2, channels)
    rows = np.stack([v + s * direction + 0.03 * rng.standard_normal(DIM) for v in voices for s in shifts])
    labels = [f"s{i}" for i in range(speakers) for _ in shifts]
    return rows, labels, direction


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_fit_finds_the_direction_the_channel_moves_every_speaker_in() -> None:
    rows, labels, direction = heard()
    fitted = fit_channel_map(rows, labels, directions=1)
    assert fitted.nuisance.shape == (DIM, 1)
    assert abs(float(fitted.nuisance[:, 0] @ direction)) > 0.95


def test_applying_the_map_brings_one_speakers_channels_together_and_keeps_speakers_apart() -> None:
    rows, labels, _ = heard()
    fitted = fit_channel_map(rows, labels, directions=1)
    test_rows, test_labels, _ = heard(seed=1)  # other speakers, the same kind of channel
    before, after = unit(test_rows), fitted.apply(test_rows)
    same = np.equal.outer(test_labels, test_labels) & ~np.eye(len(test_labels), dtype=bool)
    other = ~np.equal.outer(test_labels, test_labels)
    assert (after @ after.T)[same].min() > 0.9 > (before @ before.T)[same].min()
    assert (after @ after.T)[other].max() < (after @ after.T)[same].min()


def test_apply_returns_unit_rows_for_one_or_many_and_refuses_another_size() -> None:
    rows, labels, _ = heard()
    fitted = fit_channel_map(rows, labels, directions=2)
    many = fitted.apply(rows[:5])
    one = fitted.apply(rows[0])
    assert many.shape == (5, DIM) and one.shape == (DIM,) and many.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(many, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(one, many[0], atol=1e-6)
    assert np.abs(many @ fitted.nuisance).max() < 1e-5  # nothing left along the removed directions
    with pytest.raises(ValueError, match="24-d"):
        fitted.apply(np.ones(DIM + 1))


def test_bytes_round_trip_and_are_deterministic() -> None:
    rows, labels, _ = heard()
    fitted = fit_channel_map(rows, labels, directions=2)
    again = ChannelMap.from_bytes(fitted.to_bytes())
    assert fitted.to_bytes() == fit_channel_map(rows, labels, directions=2).to_bytes()
    np.testing.assert_allclose(again.apply(rows), fitted.apply(rows), atol=1e-5)


@pytest.mark.parametrize(("labels", "directions", "message"), [
    (["a"] * 8, 1, "several speakers"),
    ([f"s{i}" for i in range(8)], 1, "several speakers"),
    (["a", "b"] * 4, 0, "between 1 and"),
    (["a", "b"] * 4, DIM, "between 1 and"),
    (["a", "b"] * 3, 1, "8 embeddings but 6"),
])
def test_fit_refuses_what_cannot_give_a_map(labels: list[str], directions: int, message: str) -> None:
    rows = np.random.default_rng(0).standard_normal((8, DIM))
    with pytest.raises(ValueError, match=message):
        fit_channel_map(rows, labels, directions)
