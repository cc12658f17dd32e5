"""Accuracy benchmark: voiceauth vs plain SpeechBrain on real speech, and the shipped calibration.

Corpora: the shared LibriSpeech samples (test-other: 10 speakers, enrol on 3 files, test
on 7; cross-speaker impostors) and the speakerbox council-meeting speech (enrol in one
meeting, test in the others). Conditions: clean / phone channel x full length / 3 s of
net test speech. AS-norm cohort: the first half of LibriSpeech train-clean.

    python benchmarks/accuracy.py                      # measure, write results/accuracy.json + PNGs
    python benchmarks/accuracy.py --write-calibration  # also refit voiceauth/data/calibration_ecapa.json

Held-out check: the calibration is refitted on one corpus's trials and the FAR at
target_far=0.01 is measured on the other corpus's trials, against the interval stated.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from voiceauth.bench import Bench, BenchSettings, Embedded, Split, split_corpus
from voiceauth.embedding import EcapaEmbedder
from voiceauth.evaluation import error_rates, plot_det
from voiceauth.samples import enrolment_meeting, meeting_speech, meetings
from voiceauth.scoring import Calibration, CalibrationSet, Normalisation, Policy

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "corpora" / "librispeech-samples"
RESULTS = ROOT / "benchmarks" / "results"
CONDITIONS = [("clean", None), ("clean", 3.0), ("phone", None), ("phone", 3.0)]


def librispeech_split() -> Split:
    cohort_files = sorted((SHARED / "train-clean").glob("*.flac"))
    split = split_corpus(SHARED / "test-other", enroll_files=3)
    return Split(split.enrol, split.tests, cohort=cohort_files[: len(cohort_files) // 2])


def meeting_split() -> Split:
    by_meeting = meetings(meeting_speech())
    enrol_in = enrolment_meeting(by_meeting)
    speakers = sorted(by_meeting[enrol_in])
    tests: dict[str, list[Path]] = {s: [] for s in speakers}
    for meeting, spk_files in by_meeting.items():
        if meeting != enrol_in:
            for spk, files in spk_files.items():
                if spk in tests:
                    tests[spk] += files
    cohort_files = sorted((SHARED / "train-clean").glob("*.flac"))
    return Split({s: by_meeting[enrol_in][s] for s in speakers}, tests, cohort=cohort_files[: len(cohort_files) // 2])


def run(quick: bool) -> tuple[dict[str, object], dict[str, dict[str, np.ndarray]]]:
    embedder = EcapaEmbedder().load()
    corpora = {"librispeech": librispeech_split(), "meetings": meeting_split()}
    cache: dict[tuple[str, ...], Embedded] = {}
    results: dict[str, object] = {}
    trials: dict[str, dict[str, np.ndarray]] = {}
    for corpus, split in corpora.items():
        for channel, max_s in CONDITIONS[:2] if quick else CONDITIONS:
            name = f"{corpus}-{channel}-{'full' if max_s is None else f'{max_s:.0f}s'}"
            started = time.time()
            bench = Bench(BenchSettings(3, channel, max_s, None, True), embedder=embedder, cache=cache)
            result = bench.run(split)
            result["seconds"] = round(time.time() - started, 1)
            bench.write(result, RESULTS / "accuracy", name)
            results[name] = result
            trials[name] = {k: v for k, v in bench.trials.items() if v is not None}
            ours, base = result["voiceauth"], result["baseline"]
            print(f"{name:<28} voiceauth EER {ours['eer']:.2%}  baseline EER {base['eer']:.2%}  "  # type: ignore[index]
                  f"ratio {ours['eer'] / max(base['eer'], 1e-9):.2f}  far {ours['far']:.2%} frr {ours['frr']:.2%}",  # type: ignore[index]
                  flush=True)
    return results, trials


def fit(trials: dict[str, dict[str, np.ndarray]], names: list[str], source: str) -> CalibrationSet:
    fitted: dict[Normalisation, Calibration] = {}
    for kind in (Normalisation.RAW, Normalisation.AS_NORM):
        parts = [trials[n] for n in names if kind.value in trials[n]]
        if parts:
            fitted[kind] = Calibration.fit(
                np.concatenate([p[kind.value] for p in parts]),
                np.concatenate([p["labels"] for p in parts]),
                np.concatenate([p["speech_s"] for p in parts]),
                kind,
                source,
            )
    return CalibrationSet(EcapaEmbedder.model_id, fitted)


def held_out(trials: dict[str, dict[str, np.ndarray]], target_far: float) -> dict[str, object]:
    """Fit on one corpus, measure FAR/FRR on the other at the policy's accept threshold."""
    out: dict[str, object] = {}
    policy = Policy(target_far=target_far)
    corpora = sorted({n.split("-")[0] for n in trials})
    for train in corpora:
        for test in corpora:
            if test == train:
                continue
            cals = fit(trials, [n for n in trials if n.startswith(train)], f"held-out fit on {train}")
            kind = Normalisation.AS_NORM
            th = policy.thresholds(cals.get(kind))
            test_names = [n for n in trials if n.startswith(test)]
            scores = np.concatenate([trials[n][kind.value] for n in test_names])
            labels = np.concatenate([trials[n]["labels"] for n in test_names])
            speech = np.concatenate([trials[n]["speech_s"] for n in test_names])
            llr = np.asarray(cals.get(kind).llr(scores, speech))
            far, frr = error_rates(llr, labels, th.accept_llr)
            lo, hi = th.expected_far_interval.low, th.expected_far_interval.high
            out[f"fit_{train}_test_{test}"] = {
                "stated_far": round(th.expected_far, 5), "stated_interval": [round(lo, 5), round(hi, 5)],
                "measured_far": round(far, 5), "measured_frr": round(frr, 5),
                "within_interval": bool(far <= hi), "impostor_trials": int((~labels).sum()),
            }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-calibration", action="store_true", help="refit the shipped calibration")
    parser.add_argument("--quick", action="store_true", help="clean channel only (a smoke run)")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    results, trials = run(args.quick)
    summary = {
        name: {
            "voiceauth_eer": r["voiceauth"]["eer"], "baseline_eer": r["baseline"]["eer"],  # type: ignore[index]
            "eer_ratio": round(r["voiceauth"]["eer"] / max(r["baseline"]["eer"], 1e-9), 3),  # type: ignore[index]
            "voiceauth_far": r["voiceauth"]["far"], "voiceauth_frr": r["voiceauth"]["frr"],  # type: ignore[index]
            "inconclusive": r["voiceauth"]["inconclusive"],  # type: ignore[index]
        }
        for name, r in results.items()
    }
    report: dict[str, object] = {"summary": summary, "held_out_calibration": held_out(trials, 0.01), "runs": results}
    if args.write_calibration:
        cals = fit(trials, list(trials), "benchmarks/accuracy.py: LibriSpeech test-other + speakerbox meetings, "
                   "clean/phone x full/3 s")
        cals.save(ROOT / "voiceauth" / "data" / "calibration_ecapa.json")
        report["calibration_written"] = True
    (RESULTS / "accuracy.json").write_text(json.dumps(report, indent=2))
    systems = {}
    for name in trials:
        if name.endswith("phone-3s"):
            systems[f"voiceauth {name}"] = (trials[name]["as-norm"] if "as-norm" in trials[name] else trials[name]["raw"],
                                            trials[name]["labels"])
            systems[f"baseline {name}"] = (trials[name]["baseline"], trials[name]["labels"])
    if systems:
        plot_det(systems, RESULTS / "accuracy-det-phone-3s.png", title="Phone channel, 3 s test speech")
    print(json.dumps({"summary": summary, "held_out_calibration": report["held_out_calibration"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
