"""Speaker models by name: the one place that maps ``ecapa`` / ``ecapa-onnx`` / ``campplus`` to an embedder.

* ``ecapa``: SpeechBrain's ECAPA-TDNN on torch (:class:`~voiceauth.embedding.EcapaEmbedder`), the default.
* ``ecapa-onnx``: the same network exported to ONNX: the same embedding space and model id, so its
  voiceprints and the shipped calibration are interchangeable with ``ecapa``'s.
* ``campplus``: CAM++ (3D-Speaker) on ONNX Runtime; its own model id and embedding space.

The ONNX models run without torch from a graph exported by ``voiceauth models pull --model NAME``
(:func:`pull`); a missing graph is a :class:`~voiceauth.errors.ModelUnavailableError`, never an export
at scoring time. Only models with a shipped calibration make decisions out of the box
(:func:`shipped_calibration`); for the others, measure one with ``voiceauth bench`` + ``voiceauth calibrate``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from voiceauth.errors import CalibrationError, ModelChecksumError, ModelError, ModelUnavailableError
from voiceauth.models import CAMPPLUS, ECAPA, ModelSpec

if TYPE_CHECKING:
    from voiceauth.embedding.base import Embedder
    from voiceauth.scoring.calibration import CalibrationSet

DEFAULT_MODEL = "ecapa"
SERVICE_MODEL = "ecapa-onnx"
"""``voiceauth serve``'s default: the default model's network on ONNX Runtime (same model id, voiceprints and
calibration), which a live pool runs one call per core: on 2 cores, 25 steady calls with nothing dropped
against 158 s of audio dropped on torch (README, Service). ``voiceauth models pull`` exports its graph."""
MODEL_ENV = "VOICEAUTH_MODEL"
MODELS: dict[str, ModelSpec] = {"ecapa": ECAPA, "ecapa-onnx": ECAPA, "campplus": CAMPPLUS}
"""Model name -> the pinned weights it is made from."""
ONNX_ENGINES = {"ecapa-onnx": "ecapa", "campplus": "campplus"}
"""Model name -> engine name in :mod:`voiceauth.embedding.onnx`."""


def check_name(name: str) -> str:
    """``name`` if it is a known model; ModelError saying which are, otherwise."""
    if name not in MODELS:
        raise ModelError(f"unknown speaker model {name!r}; choose one of {', '.join(MODELS)}")
    return name


def model_id_of(name: str) -> str:
    """The model id that voiceprints and calibrations made by model ``name`` carry."""
    return MODELS[check_name(name)].model_id


def check_pulled(name: str) -> None:
    """Raise now, with the command that fixes it, if model ``name`` runs on ONNX Runtime and its exported
    graph is missing (:class:`ModelUnavailableError`) or damaged (:class:`ModelChecksumError`)."""
    if check_name(name) in ONNX_ENGINES:
        from voiceauth.embedding.onnx import ENGINES, read_verified

        read_verified(ENGINES[ONNX_ENGINES[name]])


def make_embedder(name: str = DEFAULT_MODEL, model_dir: str | os.PathLike[str] | None = None) -> Embedder:
    """The embedder of model ``name``, loaded lazily on first use.

    ``model_dir`` holds the ``ecapa`` files; the ONNX models read only their exported graph.
    """
    if check_name(name) in ONNX_ENGINES:
        from voiceauth.embedding.onnx import OnnxEmbedder

        return OnnxEmbedder(ONNX_ENGINES[name], model_dir=model_dir)
    from voiceauth.embedding.ecapa import EcapaEmbedder

    return EcapaEmbedder(model_dir)


def pull(name: str, model_dir: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Fetch and verify model ``name``'s weights, and export its ONNX graph if it runs on ONNX.

    Returns what is where. An exported graph that verifies is kept; exporting needs torch.
    """
    from voiceauth.models import resolve

    found = {name: str(resolve(MODELS[check_name(name)], model_dir))}
    if name in ONNX_ENGINES:
        from voiceauth.embedding.onnx import ENGINES, export_onnx, read_verified

        engine = ENGINES[ONNX_ENGINES[name]]
        try:
            read_verified(engine)
        except (ModelUnavailableError, ModelChecksumError):
            export_onnx(engine, model_dir)
        found[f"{name} (onnx graph)"] = str(engine.cache_path())
    return found


def shipped_calibration(model_id: str) -> CalibrationSet | None:
    """The calibration voiceauth ships for ``model_id``, or None where none was measured."""
    from voiceauth.scoring.calibration import default_calibration

    shipped = default_calibration()
    return shipped if shipped.model_id == model_id else None


def missing_calibration(model_id: str) -> CalibrationError:
    """The error for scoring with ``model_id`` without a calibration: it says how to measure one."""
    name = next((n for n, spec in MODELS.items() if spec.model_id == model_id), "NAME")
    return CalibrationError(
        f"no calibration is shipped for speaker model {model_id}, so its scores cannot be turned into "
        f"decisions; measure one on labelled speech from your channel: `voiceauth bench CORPUS --model {name} "
        f"--out DIR`, then `voiceauth calibrate DIR/bench-trials.csv --model {name} -o cal.json`, and pass "
        "it (calibration=... / --calibration cal.json)"
    )
