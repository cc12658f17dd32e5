"""Commands for calibrating on the bank's own calls: outcome, calibrate --from-store / --rollback / --list, health.

``calibrate`` keeps its file form (``voiceauth calibrate TRIALS.csv``, from :mod:`voiceauth.cli.models`);
this module extends it with the store forms.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from voiceauth.cli import models
from voiceauth.cli.options import EXIT_ERROR, cli, emit, model_option, open_client, store_options

_file_calibrate = models.calibrate


def _tag(value: str | None) -> str | None:
    if value is None:
        return None
    from voiceauth.services.harvest import channel_tag

    return channel_tag(value)


@cli.command()
@click.argument("trial_id")
@click.option("--genuine/--impostor", required=True,
              help="The caller was the customer (passed the questions) / an impostor (confirmed fraud).")
@click.option("--source", required=True, help="Where the outcome comes from: kba, fraud_case, agent...")
@store_options
@model_option
def outcome(trial_id: str, genuine: bool, source: str, store: str, model_dir: str | None, model: str,
            as_json: bool) -> None:
    """Report the outcome of a verification or call by its TRIAL_ID (from the result)."""
    va = open_client(store, model_dir, model=model, spoof=False)
    try:
        trial = va.report_outcome(trial_id, genuine=genuine, source=source)
    finally:
        va.close()
    emit(as_json, {"trial_id": trial.trial_id, "genuine": trial.label, "source": trial.source, "kind": trial.kind},
         f"recorded: trial {trial.trial_id} ({trial.kind}) {'genuine' if trial.label else 'impostor'} "
         f"(source {trial.source})")


def _file_options(command: click.Command) -> list[click.Parameter]:
    """The file form's parameters, with TRIALS optional (the store forms take none)."""
    params = []
    for p in command.params:
        if isinstance(p, click.Argument) and p.name == "trials":
            p = click.Argument(["trials"], nargs=-1, required=False, type=click.Path(exists=True, dir_okay=False))
        params.append(p)
    return params


def _calibrate(trials: Sequence[str], from_store: bool, rollback: bool, version: int | None, list_versions: bool,
               channel: str | None, per_channel: bool, force: bool, store: str, model_dir: str | None,
               **kw: Any) -> None:
    """Fit score calibration on labelled TRIALS CSV files (columns: score,label,speech_s[,normalisation]),
    or on the store's own trials (--from-store); list (--list) or roll back (--rollback) store versions.

    --from-store refits on the labelled in-domain trials (consented enrolments, reported outcomes)
    once there are enough, checks the stated FAR/FRR on 30 % held out, stores the result as a new
    version and activates it (a failed check is stored inactive unless --force). Clients pick it up
    when they open the store (or VoiceAuth.reload_calibrations())."""
    store_forms = from_store or rollback or list_versions
    if not store_forms:
        if not trials:
            raise click.UsageError("pass TRIALS CSV files, or --from-store / --rollback / --list")
        return _file_calibrate.callback(trials=trials, **kw)  # type: ignore[misc]
    if trials:
        raise click.UsageError("TRIALS files and the store forms (--from-store, --rollback, --list) do not mix")
    va = open_client(store, model_dir, model=kw["model"], spoof=False)
    try:
        if list_versions:
            return _list(va, kw["as_json"])
        if rollback:
            return _rollback(va, version, _tag(channel) or "", kw["as_json"])
        return _from_store(va, _tag(channel), per_channel, force, kw["target_far"], kw["as_json"])
    finally:
        va.close()


def _list(va: Any, as_json: bool) -> None:
    versions = va.store.calibration_versions(va.embedder.model_id)
    rows = [{"version": v.version, "channel": v.channel, "active": v.active, "created_at": v.created_at,
             "actor": v.actor, "passed": v.report.get("summary", {}).get("passed")} for v in versions]
    text = "\n".join(f"v{r['version']} channel={r['channel'] or '(default)'} {'ACTIVE' if r['active'] else 'inactive'} "
                     f"check={'passed' if r['passed'] else 'failed'} by {r['actor']}" for r in rows)
    emit(as_json, rows, text or "no store calibrations: the shipped calibration is in force")


def _rollback(va: Any, version: int | None, channel: str, as_json: bool) -> None:
    store, model_id = va.store, va.embedder.model_id
    if version is None:
        mine = [v for v in store.calibration_versions(model_id) if v.channel == channel]
        active = next((v for v in mine if v.active), None)
        older = [v for v in mine if active is not None and v.version < active.version]
        if active is None:
            click.echo(f"no active store calibration for channel {channel or '(default)'}; nothing to roll back",
                       err=True)
            click.get_current_context().exit(EXIT_ERROR)
        if not older:
            store.deactivate_calibrations(model_id, channel, actor=va.actor)
            emit(as_json, {"channel": channel, "active": 0}, f"channel {channel or '(default)'}: back to the "
                 "shipped calibration")
            return
        version = older[-1].version
    target = store.activate_calibration(version, actor=va.actor)
    emit(as_json, {"channel": target.channel, "active": target.version},
         f"channel {target.channel or '(default)'}: calibration v{target.version} active again")


def _from_store(va: Any, channel: str | None, per_channel: bool, force: bool, target_far: float,
                as_json: bool) -> None:
    from voiceauth.errors import CalibrationError
    from voiceauth.scoring.policy import Policy
    from voiceauth.services.engines import shipped_calibration
    from voiceauth.services.recalibrate import needed, payload, refit

    store, model_id = va.store, va.embedder.model_id
    policy = Policy(target_far=target_far)
    tags: list[str | None] = [channel] if not per_channel else [None, *store.trial_channels()]
    results: dict[str, Any] = {"needed": needed(policy), "fits": {}}
    lines, failed = [], False
    base = shipped_calibration(model_id)
    for tag in tags:
        name = "" if tag is None else tag
        rows = store.trials(model_id=model_id, channel=tag, labelled=True)
        try:
            fit = refit(rows, policy, model_id, base, channel=name)
        except CalibrationError as exc:
            results["fits"][name or "(all)"] = {"error": str(exc)}
            lines.append(f"channel {name or '(all)'}: not refitted: {exc}")
            failed = failed or not per_channel
            continue
        activate = fit.passed or force
        assert fit.calibrations is not None
        number = store.save_calibration(model_id, name, payload(fit.calibrations), fit.report(), actor=va.actor,
                                        activate=activate)
        results["fits"][name or "(all)"] = {"version": number, "active": activate, **fit.report()}
        lines.append(f"channel {name or '(all: default)'}: v{number} {'ACTIVE' if activate else 'stored INACTIVE'}"
                     f" (held-out check {'passed' if fit.passed else 'FAILED'})\n{fit.describe()}")
        failed = failed or not activate
    emit(as_json, results, "\n".join(lines))
    if failed:
        click.get_current_context().exit(EXIT_ERROR)


def _store_params() -> list[click.Parameter]:
    """--store, --model-dir and --actor as every store command has them (its --json is the file form's)."""

    @store_options
    def probe() -> None: ...

    return [p for p in reversed(probe.__click_params__) if p.name != "as_json"]  # type: ignore[attr-defined]


calibrate = click.Command(
    "calibrate", callback=_calibrate, help=_calibrate.__doc__,
    params=[
        *_file_options(_file_calibrate),
        click.Option(["--from-store"], is_flag=True, help="Refit on the store's labelled in-domain trials."),
        click.Option(["--channel"], help="Only this channel tag's trials (its own calibration)."),
        click.Option(["--per-channel"], is_flag=True,
                     help="Refit the default on all trials, and each channel tag with enough of its own."),
        click.Option(["--force"], is_flag=True, help="Activate even when the held-out check fails."),
        click.Option(["--list", "list_versions"], is_flag=True, help="List the store's calibration versions."),
        click.Option(["--rollback"], is_flag=True,
                     help="Activate the previous version of --channel (or --version N); the shipped one if none."),
        click.Option(["--version", "version"], type=int, help="With --rollback: the version to activate."),
        *_store_params(),
    ],
)
cli.add_command(calibrate)


@cli.command()
@click.option("--days", type=float, default=30.0, show_default=True, help="How far back 'recent' reaches.")
@click.option("--channel", help="Only this channel tag.")
@click.option("--target-far", type=float, default=0.01, show_default=True)
@store_options
@model_option
def health(days: float, channel: str | None, target_far: float, store: str, model_dir: str | None, model: str,
           as_json: bool) -> None:
    """Drift of recent scores from the calibration's (PSI), trials harvested, refit readiness, spoof references."""
    from voiceauth.live import SessionSettings
    from voiceauth.scoring.policy import Policy
    from voiceauth.services.recalibrate import drift_report, needed

    va = open_client(store, model_dir, model=model, spoof=False)
    try:
        tag = _tag(channel)
        model_id = va.embedder.model_id
        calibrations = va.services.scorer_for(tag).calibrations
        version = va.services.calibration_versions.get(tag or "", va.services.calibration_versions.get("", 0))
        report = drift_report(va.store, calibrations, model_id, channel=tag, days=days)
        labelled = va.store.trials(model_id=model_id, channel=tag, labelled=True)
        counts = {"genuine": sum(t.label is True for t in labelled),
                  "impostor": sum(t.label is False for t in labelled)}
        report.update(calibration_version=version, labelled=counts, refit_needs=needed(Policy(target_far=target_far)))
        margins = SessionSettings().margins.derived(va.services.call_margins_for(tag))
        report["live_accept_margin"] = {"as-norm": margins.as_norm, "raw": margins.raw,
                                        "derived": bool(va.services.call_margins_for(tag))}
        report["spoof_references"] = _spoof_references(va, tag)
    finally:
        va.close()
    emit(as_json, report, _health_text(report))


def _spoof_references(va: Any, tag: str | None) -> list[dict[str, Any]]:
    from voiceauth.fraud.reference import SpoofReferences
    from voiceauth.fraud.spoof import SpoofDetector, configured_threshold

    refs = SpoofReferences(va.store, SpoofDetector.model_id, configured_threshold())
    tags = [tag] if tag is not None else va.store.trial_channels()
    return [refs.for_channel(t).to_dict() for t in tags]


def _health_text(report: dict[str, Any]) -> str:
    version = report["calibration_version"]
    lines = [f"calibration in force: {f'store v{version}' if version else 'shipped'}; {report['trials']} trials in "
             f"the last {report['days']:g} days"]
    for kind, groups in report["by"].items():
        for name, d in groups.items():
            lines.append(f"  {kind} {name}: {d['text']}")
    have, want = report["labelled"], report["refit_needs"]
    ready = have["genuine"] >= want["genuine"] and have["impostor"] >= want["impostor"]
    verdict = "ready (voiceauth calibrate --from-store)" if ready else "not yet"
    lines.append(f"labelled trials: {have['genuine']} genuine / {have['impostor']} impostor; a refit needs "
                 f"{want['genuine']} / {want['impostor']}: {verdict}")
    m = report["live_accept_margin"]
    lines.append(f"live accept margin: AS-norm {m['as-norm']:g}, raw {m['raw']:g} "
                 + ("(derived from reported call trajectories)" if m["derived"] else "(the settings' defaults)"))
    for ref in report["spoof_references"]:
        lines.append(f"spoof reference {ref['channel'] or '(untagged)'}: {ref['mode']}, {ref['scores']} of "
                     f"{ref['needed']} bona fide scores, gating below {ref['threshold']}")
    return "\n".join(lines)
