"""Commands about customers: enrol, verify, identify, list, delete, consent, opt-out, purge."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import click

from voiceauth.cli.options import (
    CUSTOMER_ID,
    EXIT_INCONCLUSIVE,
    EXIT_OK,
    EXIT_OPTED_OUT,
    EXIT_REJECT,
    MAX_TOP_K,
    _refuse_if_misspelt,
    calibration_option,
    cli,
    emit,
    model_option,
    open_client,
    policy_options,
    shadow_option,
    store_options,
)


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
@shadow_option
@store_options
def verify(customer: str, file: str, channel: int | None, target_far: float, calibration: str | None,
           model: str, shadow_model: str | None, store: str, model_dir: str | None, as_json: bool) -> None:
    """Verify that FILE is CUSTOMER speaking. Exit 0 accept, 1 reject, 3 inconclusive, 4 opted out."""
    from voiceauth.decision import Decision
    from voiceauth.results import as_dict

    with open_client(store, model_dir, target_far=target_far, calibration=calibration, model=model,
                     shadow_model=shadow_model) as va:
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
    with open_client(store, model_dir) as va:
        removed = va.purge_unused(unused_days)
    emit(as_json, {"purged": removed}, f"purged {len(removed)} voiceprint(s)")




