"""Bulk enrolment from a manifest of recordings, in-process or as a Ray Data job.

The manifest is a CSV file, one recording per row::

    customer_id,path,consent_channel,consent_notice,consent_by
    c-1001,calls/c-1001-a.flac,ivr,notice-v3,ivr-flow-7
    c-1001,calls/c-1001-b.flac,ivr,notice-v3,ivr-flow-7

(the header is optional; the consent columns may be left out with ``legacy_migration``;
relative paths are relative to the manifest). Each recording is decoded, its speech
found and embedded — by Ray Data actors that each hold a model when a Ray address is
given, else in this process. The driver pools a customer's embeddings as soon as all of
their recordings are in and writes the voiceprint through the store (one transaction with
its consent and audit records), exactly as :meth:`VoiceAuth.enroll` would. Customers who
opted out are skipped: they can only be enrolled one by one, with fresh consent.
``voiceauth enroll-batch`` (voiceauth.cli) runs it from the command line.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from voiceauth.errors import CorpusError, VoiceAuthError
from voiceauth.ids import canonical_id

if TYPE_CHECKING:
    from voiceauth.results import EnrolmentProgress
    from voiceauth.services.core import Services

COLUMNS = ("customer_id", "path", "consent_channel", "consent_notice", "consent_by")


@dataclass(frozen=True)
class ManifestRow:
    customer_id: str
    path: str
    consent_channel: str = ""
    consent_notice: str = ""
    consent_by: str = ""


def read_manifest(manifest: str | os.PathLike[str]) -> list[ManifestRow]:
    """Rows of a manifest CSV, with paths made absolute (relative to the manifest's folder)."""
    source = Path(manifest)
    try:
        lines = list(csv.reader(source.read_text(encoding="utf-8").splitlines()))
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusError(f"cannot read manifest {source} ({exc}); pass a UTF-8 CSV file") from exc
    lines = [line for line in lines if any(cell.strip() for cell in line)]
    if lines and lines[0] and lines[0][0].strip() == "customer_id":
        lines = lines[1:]
    rows = []
    for number, cells in enumerate(lines, start=1):
        cells = [c.strip() for c in cells]
        if len(cells) < 2 or len(cells) > len(COLUMNS) or not cells[0] or not cells[1]:
            raise CorpusError(
                f"manifest {source}, data row {number}: expected customer_id,path"
                "[,consent_channel,consent_notice,consent_by], got {cells!r}"
            )
        path = Path(cells[1]).expanduser()
        if not path.is_absolute():
            path = source.resolve().parent / path
        rows.append(ManifestRow(cells[0], str(path), *cells[2:]))
    if not rows:
        raise CorpusError(f"manifest {source} lists no recordings; add customer_id,path rows")
    return rows


class SampleEmbedder:
    """Decode, find the speech in, and embed a batch of manifest rows.

    Used as is in-process, and as the Ray Data actor class (one model per actor).
    Returns per row: ``embedding`` (zeros when unused), ``speech_s``, ``used``, ``flags``
    (comma-separated) and ``error`` (empty when the recording decoded).
    """

    def __init__(self, model_dir: str | None = None, torch_threads: int | None = None,
                 embedder: Any | None = None) -> None:
        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        if embedder is None:
            from voiceauth.embedding.ecapa import EcapaEmbedder

            embedder = EcapaEmbedder(model_dir).load()
        self.embedder = embedder

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        from voiceauth.audio.decode import load_audio
        from voiceauth.services.enrolment import MIN_SAMPLE_SPEECH_S
        from voiceauth.speech.activity import analyse

        paths = [str(p) for p in batch["path"]]
        speech_s = np.zeros(len(paths), dtype=np.float64)
        flags, errors, kept, signals = [""] * len(paths), [""] * len(paths), [], []
        for i, path in enumerate(paths):
            try:
                analysis = analyse(load_audio(path))
            except VoiceAuthError as exc:
                errors[i] = str(exc)
                continue
            speech_s[i] = analysis.report.speech_s
            names = [f.value for f in analysis.report.flags]
            if speech_s[i] == 0:
                names.append("no_speech")
            elif speech_s[i] < MIN_SAMPLE_SPEECH_S and "too_short" not in names:
                names.append("too_short")
            flags[i] = ",".join(names)
            if speech_s[i] >= MIN_SAMPLE_SPEECH_S:
                kept.append(i)
                signals.append(analysis.trimmed.samples)
        embeddings = np.zeros((len(paths), self.embedder.dim), dtype=np.float32)
        if signals:
            embeddings[kept] = self.embedder.embed(signals)
        used = np.zeros(len(paths), dtype=bool)
        used[kept] = True
        return {
            "customer_id": np.asarray([str(c) for c in batch["customer_id"]]),
            "path": np.asarray(paths),
            "embedding": embeddings,
            "speech_s": speech_s,
            "used": used,
            "flags": np.asarray(flags),
            "error": np.asarray(errors),
            "model_id": np.asarray([self.embedder.model_id] * len(paths)),
        }


def _unbatch(batch: Mapping[str, np.ndarray]) -> Iterator[dict[str, Any]]:
    for i in range(len(batch["path"])):
        yield {key: values[i] for key, values in batch.items()}


def embed_in_process(rows: list[ManifestRow], embedder: Any, batch_size: int = 4) -> Iterator[dict[str, Any]]:
    """Embedded rows, one at a time, computed by ``embedder`` in this process."""
    worker = SampleEmbedder(embedder=embedder)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        yield from _unbatch(worker({"customer_id": [r.customer_id for r in chunk], "path": [r.path for r in chunk]}))


def embed_with_ray(rows: list[ManifestRow], *, address: str = "ray://local", workers: int = 2, batch_size: int = 4,
                   model_dir: str | None = None) -> Iterator[dict[str, Any]]:
    """Embedded rows, streamed back as a Ray Data job finishes them (actor pool of ``workers`` models)."""
    from voiceauth.embedding.remote import connect

    connect(address)
    import ray

    items = [{"customer_id": r.customer_id, "path": r.path} for r in rows]
    blocks = max(1, -(-len(items) // batch_size))
    dataset = ray.data.from_items(items, override_num_blocks=blocks)
    dataset.context.enable_progress_bars = False
    embedded = dataset.map_batches(
        SampleEmbedder,
        fn_constructor_kwargs={"model_dir": model_dir, "torch_threads": 1},
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=(1, max(1, workers)),
        num_cpus=1,
    )
    for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
        yield from _unbatch(batch)


@dataclass(frozen=True)
class CustomerOutcome:
    customer_id: str
    status: str
    """``complete``, ``in_progress``, ``failed`` or ``skipped``."""
    files: int
    progress: EnrolmentProgress | None = None
    error: str | None = None


@dataclass
class BulkReport:
    engine: str
    files: int
    seconds: float = 0.0
    customers: list[CustomerOutcome] = field(default_factory=list)

    @property
    def files_per_s(self) -> float:
        return self.files / self.seconds if self.seconds > 0 else 0.0

    @property
    def failed(self) -> list[CustomerOutcome]:
        return [c for c in self.customers if c.status in ("failed", "skipped")]

    def as_dict(self) -> dict[str, Any]:
        from voiceauth.results import as_dict

        customers = [{**asdict(c), "progress": None if c.progress is None else as_dict(c.progress)}
                     for c in self.customers]
        return {"engine": self.engine, "files": self.files, "seconds": round(self.seconds, 3),
                "files_per_s": round(self.files_per_s, 3), "customers": customers}


class _Enroller:
    """Writes one customer's voiceprint once all of their embedded recordings are in."""

    def __init__(self, services: Services, *, mode: str, legacy_migration: bool) -> None:
        self.services = services
        self.mode = mode
        self.legacy_migration = legacy_migration

    def _consent(self, rows: list[ManifestRow]) -> Any:
        from voiceauth.store.base import Consent

        for row in rows:
            if row.consent_channel and row.consent_notice and row.consent_by:
                return Consent.now(channel=row.consent_channel, notice_version=row.consent_notice,
                                   captured_by=row.consent_by)
        return None

    def enrol(self, customer_id: str, rows: list[ManifestRow], embedded: list[dict[str, Any]]) -> CustomerOutcome:
        from voiceauth.results import Flag, SampleReport
        from voiceauth.services.enrolment import EnrolMode, consent_gate, pool, progress, write
        from voiceauth.store.base import Namespace

        files = len(rows)
        try:
            consent = self._consent(rows)
            if self.services.store.is_opted_out(customer_id):
                return CustomerOutcome(customer_id, "skipped", files, error=(
                    f"{customer_id} opted out of voice biometrics; enrol them individually with fresh consent"))
            consent_gate(self.services, customer_id, consent, legacy_migration=self.legacy_migration)
            bad = [e for e in embedded if e["error"]]
            if bad:
                raise VoiceAuthError(f"{Path(str(bad[0]['path'])).name}: {bad[0]['error']}")
            reports = [SampleReport(Path(str(e["path"])).name, round(float(e["speech_s"]), 2), bool(e["used"]),
                                    tuple(Flag(f) for f in str(e["flags"]).split(",") if f)) for e in embedded]
            used = [e for e in embedded if e["used"]]
            if not used:
                raise VoiceAuthError(f"no usable speech in {files} recording(s) of {customer_id}")
            model_ids = {str(e["model_id"]) for e in used}
            if len(model_ids) != 1:
                raise VoiceAuthError(f"recordings of {customer_id} were embedded by different models {model_ids}")
            model_id = model_ids.pop()
            new = pool(np.stack([np.asarray(e["embedding"], dtype=np.float32) for e in used]),
                       [float(e["speech_s"]) for e in used])
            voiceprint = write(self.services, Namespace.CUSTOMER, customer_id, new, model_id=model_id,
                               mode=EnrolMode(self.mode), required_s=self.services.enrol_speech_s,
                               detail={"source": "bulk"}, consent=consent)
        except VoiceAuthError as exc:
            return CustomerOutcome(customer_id, "failed", files, error=str(exc))
        result = progress(voiceprint, self.services.enrol_speech_s, reports)
        return CustomerOutcome(customer_id, result.status.value, files, progress=result)


def enroll_manifest(
    services: Services,
    manifest: str | os.PathLike[str] | Iterable[ManifestRow],
    *,
    ray_address: str | None = None,
    workers: int = 2,
    batch_size: int = 4,
    model_dir: str | None = None,
    replace: bool = False,
    update: bool = False,
    legacy_migration: bool = False,
    on_file: Callable[[int], None] | None = None,
) -> BulkReport:
    """Enrol every customer of ``manifest`` into ``services.store`` (``va.services`` of a VoiceAuth).

    ``ray_address`` (``ray://local``, ``ray://auto``, ``ray://HOST:PORT``) runs the
    embedding as a Ray Data job with up to ``workers`` model actors; without it the rows
    are embedded by ``services.embedder`` in this process. ``on_file`` is called with the number
    of recordings finished since the last call (for progress bars). A customer whose
    recordings fail is reported and the others go on.
    """
    from voiceauth.services.enrolment import mode_of

    mode = mode_of(replace, update).value
    rows = list(manifest) if not isinstance(manifest, (str, os.PathLike)) else read_manifest(manifest)
    rows = [dataclasses.replace(r, customer_id=canonical_id(r.customer_id)) for r in rows]
    by_customer: dict[str, list[ManifestRow]] = {}
    for row in rows:
        by_customer.setdefault(row.customer_id, []).append(row)
    enroller = _Enroller(services, mode=mode, legacy_migration=legacy_migration)
    report = BulkReport("ray-data" if ray_address else "in-process", len(rows))
    start = time.perf_counter()
    stream = (embed_with_ray(rows, address=ray_address, workers=workers, batch_size=batch_size, model_dir=model_dir)
              if ray_address else embed_in_process(rows, services.embedder, batch_size))
    pending: dict[str, list[dict[str, Any]]] = {}
    for item in stream:
        customer = str(item["customer_id"])
        pending.setdefault(customer, []).append(item)
        if on_file is not None:
            on_file(1)
        if len(pending[customer]) == len(by_customer[customer]):
            report.customers.append(enroller.enrol(customer, by_customer[customer], pending.pop(customer)))
    report.seconds = time.perf_counter() - start
    report.customers.sort(key=lambda c: c.customer_id)
    return report
