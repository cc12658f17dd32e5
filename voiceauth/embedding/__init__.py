"""Speaker embeddings: the Embedder protocol and the models behind it (ECAPA, CAM++, ONNX, Ray)."""

from voiceauth.embedding.base import MIN_SAMPLES, Embedder, checked_signal, l2_normalise, windows
from voiceauth.embedding.ecapa import EcapaEmbedder

__all__ = [
    "EcapaEmbedder",
    "Embedder",
    "MIN_SAMPLES",
    "checked_signal",
    "l2_normalise",
    "windows",
]
