"""Shared pieces of the command line: exit codes, id types, store / model / policy options, output."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

EXIT_OK, EXIT_REJECT, EXIT_ERROR, EXIT_INCONCLUSIVE, EXIT_OPTED_OUT, EXIT_TAMPERED = 0, 1, 2, 3, 4, 5
EXIT_INTERNAL = 6
MAX_TOP_K = 100  # the facade's limit (voiceauth.client.MAX_TOP_K), without importing it at start-up
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


MODEL_NAMES = ("ecapa", "ecapa-onnx", "campplus")  # embedding.engines.MODELS, without importing it at start-up
SERVICE_MODEL = "ecapa-onnx"  # services.engines.SERVICE_MODEL, the same way


def model_option_defaulting_to(default: str) -> Callable[[F], F]:
    """--model: the speaker model that embeds (voiceprints record it; scoring with another is refused)."""

    def option(func: F) -> F:
        return click.option(
            "--model", type=click.Choice(MODEL_NAMES), default=default, envvar="VOICEAUTH_MODEL", show_default=True,
            help="Speaker model: ecapa (SpeechBrain), ecapa-onnx (the same model without torch) or campplus (ONNX).",
        )(func)

    return option


model_option = model_option_defaulting_to("ecapa")


def shadow_option(func: F) -> F:
    """--shadow-model: the next speaker model, whose voiceprints grow from accepted speech."""
    return click.option(
        "--shadow-model", type=click.Choice(MODEL_NAMES), envvar="VOICEAUTH_SHADOW_MODEL",
        help="Next speaker model: accepted verifications and authenticated calls also grow each customer's "
             "voiceprint for it, which takes over once --model is switched to it (see `voiceauth models "
             "shadow-status`).",
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
    from voiceauth.client import VoiceAuth
    from voiceauth.scoring.policy import Policy

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


