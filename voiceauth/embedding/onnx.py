"""Speaker embeddings on ONNX Runtime: export once from verified weights, then infer without torch.

:func:`export_onnx` (needs torch; meant to run when the model is pulled) builds the network from
the checksum-verified checkpoint, loads its weights strictly, and writes the graph to
``<cache>/onnx/<engine>-<weights sha256 prefix>.onnx`` with its own sha256 in a ``.sha256`` file
beside it (``sha256sum -c`` format). The filterbank stays outside the graph, in numpy
(:mod:`voiceauth.embedding.fbank`).

:class:`OnnxEmbedder` implements :class:`voiceauth.embedding.Embedder`. It loads only the cached
graph, re-hashing the very bytes it hands to ONNX Runtime, and never imports torch.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voiceauth.audio.decode import MODEL_RATE
from voiceauth.embedding.base import checked_signal, l2_normalise, windows
from voiceauth.embedding.fbank import N_MELS, kaldi_fbank, speechbrain_fbank
from voiceauth.embedding.graph import conv1d_as_conv2d
from voiceauth.errors import ModelChecksumError, ModelError, ModelUnavailableError
from voiceauth.models import CAMPPLUS, ECAPA, ModelSpec, cache_root, resolve, verified_copy

OPSET = 17
_TRACE_FRAMES = 300


@dataclass(frozen=True)
class OnnxEngine:
    """One speaker network that can run on ONNX Runtime."""

    name: str
    spec: ModelSpec
    weights: str
    """The pinned file of ``spec`` the graph is exported from."""
    features: Callable[[np.ndarray], np.ndarray]
    model_id: str
    dim: int = 192
    model: str = ""
    """The name users choose it by (:mod:`voiceauth.services.engines`, ``--model``)."""
    graph: int = 1
    """Revision of the exported graph: raised when the network's code changes how it computes (not
    what), so that a cached graph of an older revision is exported again by `voiceauth models pull`."""

    def cache_path(self) -> Path:
        """Where the exported graph lives; the name binds it to the pinned weights and the graph revision."""
        revision = f"-g{self.graph}" if self.graph > 1 else ""
        return cache_root() / "onnx" / f"{self.name}{revision}-{self.spec.checksums[self.weights][:16]}.onnx"


CAMPPLUS_ONNX = OnnxEngine(
    "campplus", CAMPPLUS, "campplus_cn_en_common.pt", kaldi_fbank, CAMPPLUS.model_id, model="campplus", graph=3
)
"""Graph 2: the context masks computed once per 100-frame segment instead of at every frame.
Graph 3: 1-D convolutions run as 2-D ones (:func:`voiceauth.embedding.graph.conv1d_as_conv2d`)."""
ECAPA_ONNX = OnnxEngine("ecapa", ECAPA, "embedding_model.ckpt", speechbrain_fbank, ECAPA.model_id, model="ecapa-onnx",
                        graph=2)
"""Same embedding space as :class:`voiceauth.embedding.EcapaEmbedder` (cosine >= 0.9999), hence the same id.
Graph 2: 1-D convolutions run as 2-D ones."""
ENGINES = {engine.name: engine for engine in (CAMPPLUS_ONNX, ECAPA_ONNX)}


def _engine(engine: OnnxEngine | str) -> OnnxEngine:
    if isinstance(engine, OnnxEngine):
        return engine
    if engine not in ENGINES:
        raise ModelError(f"unknown speaker engine {engine!r}; choose one of {', '.join(ENGINES)}")
    return ENGINES[engine]


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _torch_network(engine: OnnxEngine, weights: Path) -> Any:
    """The eval-mode torch module mapping ``(batch, frames, 80)`` features to ``(batch, dim)``."""
    import torch

    if engine.name == "campplus":
        from voiceauth.embedding.campplus import load_campplus

        return load_campplus(weights)

    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

    from voiceauth.embedding.campplus import check_state_dict

    ecapa = ECAPA_TDNN(  # as in the pinned hyperparams.yaml of ECAPA
        input_size=N_MELS, channels=[1024, 1024, 1024, 1024, 3072], kernel_sizes=[5, 3, 3, 3, 1],
        dilations=[1, 2, 3, 4, 1], attention_channels=128, lin_neurons=engine.dim,
    )
    state = torch.load(weights, map_location="cpu", weights_only=True)
    check_state_dict(ecapa, state, str(weights))
    ecapa.load_state_dict(state, strict=True)

    class _Flat(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ecapa = ecapa

        def forward(self, feats: torch.Tensor) -> torch.Tensor:
            return self.ecapa(feats).squeeze(1)

    return _Flat().eval()


def export_onnx(engine: OnnxEngine | str, model_dir: str | os.PathLike[str] | None = None) -> Path:
    """Export ``engine`` from its verified checkpoint into the cache; return the graph's path.

    Needs torch and onnx (and SpeechBrain for ECAPA). Replaces any cached graph atomically.
    """
    import onnx
    import torch

    engine = _engine(engine)
    final = engine.cache_path()
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{engine.name}-", suffix=".onnx", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # third-party import and exporter deprecation noise
            with verified_copy(engine.spec, resolve(engine.spec, model_dir)) as private:
                network = _torch_network(engine, private / engine.weights)
            dummy = torch.zeros(1, _TRACE_FRAMES, N_MELS)
            torch.onnx.export(
                network, (dummy,), str(tmp), dynamo=False, opset_version=OPSET,
                input_names=["feats"], output_names=["embedding"],
                dynamic_axes={"feats": {0: "batch", 1: "frames"}, "embedding": {0: "batch"}},
            )
        graph = onnx.load(str(tmp))
        conv1d_as_conv2d(graph)  # the same sums on ONNX Runtime's faster 2-D kernels
        onnx.save(graph, str(tmp))
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        side_tmp = tmp.with_name(tmp.name + ".sha256")
        side_tmp.write_text(f"{digest}  {final.name}\n", encoding="ascii")
        _sidecar(final).unlink(missing_ok=True)  # meanwhile readers see "not exported", never a mismatch
        os.replace(tmp, final)
        os.replace(side_tmp, _sidecar(final))
    finally:
        tmp.unlink(missing_ok=True)
        _sidecar(tmp).unlink(missing_ok=True)
    return final


def read_verified(engine: OnnxEngine | str) -> bytes:
    """The cached graph's bytes, checked against the sha256 recorded beside it.

    Raises:
        ModelUnavailableError: no exported graph (run :func:`export_onnx`, i.e. `voiceauth models pull`).
        ModelChecksumError: the graph does not match its recorded checksum.
    """
    engine = _engine(engine)
    path = engine.cache_path()
    if not path.is_file() or not _sidecar(path).is_file():
        raise ModelUnavailableError(
            f"no ONNX graph of {engine.name} at {path} (or its .sha256 is missing); "
            f"run `voiceauth models pull --model {engine.model}` to export it from the verified weights"
        )
    recorded = _sidecar(path).read_text(encoding="ascii", errors="replace").split()
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if not recorded or recorded[0] != actual:
        raise ModelChecksumError(
            f"{path} has sha256 {actual[:16]}..., not the {recorded[0][:16] if recorded else 'missing'}... "
            f"recorded beside it; the graph is damaged or modified: delete it and run "
            f"`voiceauth models pull --model {engine.model}`"
        )
    return data


class OnnxEmbedder:
    """An :class:`~voiceauth.embedding.Embedder` running an exported graph on ONNX Runtime (no torch).

    Long signals are embedded in windows of at most ``max_window_s`` seconds whose unit
    embeddings are averaged, weighted by length. ``export_missing`` exports the graph (with torch)
    when the cache has none; otherwise a missing graph raises :class:`ModelUnavailableError`.
    Thread-safe (ONNX Runtime sessions may be run concurrently).
    """

    def __init__(
        self,
        engine: OnnxEngine | str = CAMPPLUS_ONNX,
        *,
        model_dir: str | os.PathLike[str] | None = None,
        threads: int = 1,
        max_window_s: float = 20.0,
        export_missing: bool = False,
    ) -> None:
        self.engine = _engine(engine)
        self.model_id = self.engine.model_id
        self.dim = self.engine.dim
        self._model_dir = model_dir
        self._threads = threads
        self._max_len = int(max_window_s * MODEL_RATE)
        self._export_missing = export_missing
        self._session: Any = None
        self._lock = threading.Lock()

    @property
    def threads(self) -> int:
        """Threads one ``embed`` call uses (a live pool runs one call per core: ``model_slots``)."""
        return self._threads

    @property
    def sequential(self) -> bool:
        """``embed`` runs the signals of a batch one after another: a batch saves no time, and its
        first signals wait for its last (a live pool then takes one segment per model call)."""
        return True

    def load(self) -> OnnxEmbedder:
        """Verify and load the graph now instead of on first use."""
        with self._lock:
            if self._session is None:
                if self._export_missing and not self.engine.cache_path().is_file():
                    export_onnx(self.engine, self._model_dir)
                data = read_verified(self.engine)
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.intra_op_num_threads = self._threads
                options.inter_op_num_threads = 1
                self._session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        return self

    def _window(self, window: np.ndarray) -> np.ndarray:
        feats = self.engine.features(window)[None]
        (out,) = self._session.run(["embedding"], {"feats": feats})
        return l2_normalise(out[0])

    def embed(self, signals: Sequence[np.ndarray]) -> np.ndarray:
        self.load()
        out = np.zeros((len(signals), self.dim), dtype=np.float64)
        for row, signal in enumerate(signals):
            for window in windows(checked_signal(signal), self._max_len):
                out[row] += self._window(window) * len(window)
        return l2_normalise(out)
