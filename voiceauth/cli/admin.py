"""Operations commands: keys, audit trail, watchlist, doctor, bulk enrolment."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import click

from voiceauth.cli.options import (
    CUSTOMER_ID,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_TAMPERED,
    WATCHLIST_LABEL,
    cli,
    emit,
    model_option,
    open_client,
    store_options,
)


@cli.group()
def keys() -> None:
    """Encryption keys."""


@keys.command()
@store_options
def rotate(store: str, model_dir: str | None, as_json: bool) -> None:
    """Re-encrypt every voiceprint under a new key, atomically."""
    with open_client(store, model_dir) as va:
        new_id = va.rotate_key()
    emit(as_json, {"key_id": new_id}, f"every voiceprint is now encrypted under key {new_id}")


@keys.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def retire(as_json: bool) -> None:
    """Delete every key that no store uses any more (after rotations); backups under them become unreadable."""
    from voiceauth.store.crypto import load_keyring

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
        check = va.verify_audit()
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
        events = va.audit_events(customer, last=last)
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
    from voiceauth.client import VoiceAuth
    from voiceauth.services.bulk import enroll_manifest, read_manifest

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




