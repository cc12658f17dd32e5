"""ECAPA-TDNN (SpeechBrain, VoxCeleb) in process with torch, loaded from a checksum-verified private copy."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from voiceauth.audio.decode import MODEL_RATE
from voiceauth.embedding.base import checked_signal, l2_normalise, windows
from voiceauth.embedding.stack import ensure_speech_stack
from voiceauth.errors import ModelChecksumError
from voiceauth.memory import release_freed
from voiceauth.models import ECAPA, resolve, verified_copy

_MODELS: dict[tuple[str, str], Any] = {}
_MODELS_LOCK = threading.Lock()


def _load_speechbrain(model_dir: Path, device: str) -> Any:
    """Load the ECAPA model from a private verified copy of ``model_dir`` (never from ``model_dir`` itself)."""
    key = (str(model_dir), device)
    with _MODELS_LOCK:
        if key in _MODELS:
            return _MODELS[key]
        with verified_copy(ECAPA, model_dir) as private:
            model = _from_private_copy(private, device)
        model.eval()
        _MODELS[key] = model
        return model


def _inside(path: object, root: Path) -> bool:
    return isinstance(path, (str, os.PathLike)) and Path(os.path.realpath(path)).is_relative_to(root)


def _from_private_copy(private: Path, device: str) -> Any:
    """SpeechBrain's ``from_hparams`` steps, refusing any weight path outside ``private``."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from hyperpyyaml import load_hyperpyyaml
        from speechbrain.inference.speaker import EncoderClassifier

        root = Path(os.path.realpath(private))
        with open(root / "hyperparams.yaml", encoding="utf-8") as fh:  # bytes pinned: safe to execute
            hparams = load_hyperpyyaml(fh, {"pretrained_path": str(root)})
        pretrainer = hparams["pretrainer"]
        outside = sorted(name for name, path in pretrainer.paths.items() if not _inside(path, root))
        if outside:
            raise ModelChecksumError(
                f"hyperparams.yaml of model {ECAPA.name} loads {', '.join(outside)} from outside the verified "
                "model files; use the pinned model files (`voiceauth models pull`)"
            )
        hparams["savedir"] = root / "collected"
        pretrainer.set_collect_in(hparams["savedir"])
        pretrainer.collect_files(default_source=str(root))
        pretrainer.load_collected()
        return EncoderClassifier(modules=hparams["modules"], hparams=hparams, run_opts={"device": device})


class EcapaEmbedder:
    """The pretrained SpeechBrain ECAPA-TDNN (VoxCeleb, 192-d) speaker embedder.

    Weights are found by :func:`voiceauth.models.resolve` on first use and loaded from a
    private copy whose bytes match the pinned checksums (:func:`voiceauth.models.verified_copy`).
    Thread-safe: calls are serialised on the model.
    """

    dim = 192
    model_id = ECAPA.model_id

    def __init__(
        self,
        model_dir: str | os.PathLike[str] | None = None,
        *,
        device: str = "cpu",
        max_window_s: float = 20.0,
        max_batch: int = 4,
    ) -> None:
        self._model_dir = model_dir
        self._device = device
        self._max_len = int(max_window_s * MODEL_RATE)
        self._max_batch = max_batch
        self._model: Any = None
        self._lock = threading.Lock()

    def load(self) -> EcapaEmbedder:
        """Resolve and load the weights now instead of on first use."""
        if self._model is None:
            ensure_speech_stack()
            directory = resolve(ECAPA, self._model_dir)
            self._model = _load_speechbrain(directory, self._device)
        return self

    def embed(self, signals: Sequence[np.ndarray]) -> np.ndarray:
        if not signals:
            return np.zeros((0, self.dim), dtype=np.float32)
        pieces: list[np.ndarray] = []
        owner: list[int] = []
        for index, signal in enumerate(signals):
            for window in windows(checked_signal(signal), self._max_len):
                pieces.append(window)
                owner.append(index)
        window_embeddings = self._embed_windows(pieces)
        weights = np.array([len(p) for p in pieces], dtype=np.float64)
        out = np.zeros((len(signals), self.dim), dtype=np.float64)
        np.add.at(out, np.array(owner), window_embeddings * weights[:, None])
        return l2_normalise(out)

    def _embed_windows(self, pieces: list[np.ndarray]) -> np.ndarray:
        import torch

        self.load()
        order = np.argsort([len(p) for p in pieces])
        result = np.zeros((len(pieces), self.dim), dtype=np.float32)
        with self._lock, torch.inference_mode():
            for start in range(0, len(order), self._max_batch):
                idx = order[start : start + self._max_batch]
                longest = max(len(pieces[i]) for i in idx)
                batch = np.zeros((len(idx), longest), dtype=np.float32)
                for row, i in enumerate(idx):
                    batch[row, : len(pieces[i])] = pieces[i]
                lengths = torch.tensor([len(pieces[i]) / longest for i in idx], dtype=torch.float32)
                emb = self._model.encode_batch(torch.from_numpy(batch), lengths)
                result[idx] = emb.squeeze(1).cpu().numpy()
        release_freed()  # every input length leaves freed blocks in glibc's arenas (voiceauth.memory)
        return l2_normalise(result)


