"""Generate the public AS-norm cohorts shipped in ``voiceauth/data/``: embeddings of public speech.

A new deployment has no customers to normalise scores against; until it has enough of its
own (:data:`voiceauth.services.cohort.PUBLIC_UNTIL`), verification uses these. They are the
embeddings of the cohort the shipped calibration was fitted with (``benchmarks/accuracy.py``):
the first half (125 speakers, one recording each) of the LibriSpeech train-clean samples in
``../shared``, once as recorded ("clean") and once through the telephone channel ("phone"),
embedded exactly as the accuracy benchmark embeds its cohort. Only embeddings are shipped,
never audio; LibriSpeech is CC BY 4.0 (Panayotov et al., 2015), credited in the JSON beside.

    python benchmarks/public_cohort.py                 # ecapa -> voiceauth/data/cohort_ecapa.{npz,json}
    python benchmarks/public_cohort.py --model campplus
    python benchmarks/public_cohort.py --evaluate      # results/cohort_decisions.json, from accuracy.py's trials

``--evaluate`` compares, on every trial of the accuracy benchmark (its trials CSVs), the decisions a
new deployment made before (fewer than 20 customers: raw scores) with those it makes now (AS-norm
against the public cohort, the very cohort those trials were normalised with), at the default policy.

Then update the sha256 pin in :data:`voiceauth.services.cohort.PUBLIC_COHORTS` (printed).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from pathlib import Path

import numpy as np

from voiceauth.services.engines import make_embedder, model_id_of
from voiceauth.tools.bench import Bench, BenchSettings

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "corpora" / "librispeech-samples"
DATA = ROOT / "voiceauth" / "data"
CHANNELS = ("clean", "phone")
LICENCE = "CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)"
SOURCE = ("LibriSpeech ASR corpus, train-clean subset (V. Panayotov, G. Chen, D. Povey, S. Khudanpur, "
          "'Librispeech: an ASR corpus based on public domain audio books', ICASSP 2015), https://www.openslr.org/12")


def cohort_files() -> list[Path]:
    """The accuracy benchmark's cohort: the first half of the sorted train-clean samples."""
    files = sorted((SHARED / "train-clean").glob("*.flac"))
    if not files:
        sys.exit(f"no LibriSpeech train-clean samples in {SHARED}")
    return files[: len(files) // 2]


def embed(name: str, files: list[Path]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Per channel, the (n, dim) embeddings of ``files`` that hold speech, and their file stems."""
    embedder = make_embedder(name)
    out: dict[str, np.ndarray] = {}
    kept: list[str] = []
    for channel in CHANNELS:
        bench = Bench(BenchSettings(3, channel, None, None, False), embedder=embedder, progress=False)
        embedded = bench._embed_files(files, f"cohort-{channel}", is_test=False, baseline=False)
        stems = [p.stem for p in files if p in embedded]
        if kept and stems != kept:
            sys.exit("the two channels kept different files; check the corpus")
        kept = stems
        out[channel] = np.stack([embedded[p].ours for p in files if p in embedded]).astype(np.float32)
        print(f"{name} {channel}: {len(stems)} of {len(files)} files", flush=True)
    return out, kept


def evaluate(trials_dir: Path, out: Path) -> dict[str, object]:
    """Decisions per accuracy condition: raw scores (small store, before) vs AS-norm on the public cohort."""
    from voiceauth.scoring.calibration import default_calibration
    from voiceauth.scoring.normalisation import Normalisation
    from voiceauth.scoring.policy import Policy
    from voiceauth.scoring.statistics import compute_metrics
    from voiceauth.tools.bench import read_trials

    cals, policy = default_calibration(), Policy()
    report: dict[str, object] = {"policy_target_far": policy.target_far, "conditions": {}}
    for path in sorted(trials_dir.glob("*-trials.csv")):
        trials = read_trials([path])
        row: dict[str, object] = {}
        for kind, label in ((Normalisation.RAW, "before_raw"), (Normalisation.AS_NORM, "now_public_cohort")):
            if kind not in trials:
                continue
            scores, labels, speech = (np.asarray(x) for x in trials[kind])
            labels = labels.astype(bool)
            cal = cals.get(kind)
            th = policy.thresholds(cal)
            llr = np.asarray(cal.llr(scores, speech))
            accept, reject = llr >= th.accept_llr, llr < th.reject_llr
            row[label] = {
                "eer": round(compute_metrics(llr, labels).eer, 4),
                "genuine_accepted": round(float(accept[labels].mean()), 4),
                "genuine_rejected": round(float(reject[labels].mean()), 4),
                "impostor_accepted": round(float(accept[~labels].mean()), 4),
                "impostor_rejected": round(float(reject[~labels].mean()), 4),
                "trials": [int(labels.sum()), int((~labels).sum())],
            }
        report["conditions"][path.name.removesuffix("-trials.csv")] = row  # type: ignore[index]
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ecapa", help="speaker model name (ecapa, campplus)")
    parser.add_argument("--evaluate", action="store_true", help="compare decisions on accuracy.py's trials")
    args = parser.parse_args(argv)
    if args.evaluate:
        print(json.dumps(evaluate(ROOT / "benchmarks" / "results" / "accuracy",
                                  ROOT / "benchmarks" / "results" / "cohort_decisions.json"), indent=1))
        return 0
    files = cohort_files()
    matrices, stems = embed(args.model, files)
    buffer = io.BytesIO()
    np.savez(buffer, **matrices)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest()
    stem = f"cohort_{args.model.replace('-onnx', '')}"
    (DATA / f"{stem}.npz").write_bytes(payload)
    manifest = {
        "model_id": model_id_of(args.model),
        "channels": {c: int(len(m)) for c, m in matrices.items()},
        "dim": int(next(iter(matrices.values())).shape[1]),
        "npz_sha256": digest,
        "source": SOURCE,
        "licence": LICENCE,
        "speakers": [s.split("-")[0] for s in stems],
        "recordings": stems,
        "how": "benchmarks/public_cohort.py: the first half of ../shared/corpora/librispeech-samples/train-clean, "
               "one recording per speaker, clean and through voiceauth.audio.channel.telephone_channel, "
               "embedded like the accuracy benchmark's cohort (voiceauth.tools.bench); embeddings only, no audio",
    }
    (DATA / f"{stem}.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {DATA / stem}.npz ({len(payload)} bytes), sha256 {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
