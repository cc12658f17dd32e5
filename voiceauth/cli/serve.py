"""``voiceauth serve`` and ``voiceauth serve-keys``: run the service, manage its API keys.

The key file (``--keys``, ``$VOICEAUTH_SERVE_KEYS``, default
``$XDG_CONFIG_HOME/voiceauth/serve-keys.json``) holds each key's id, scopes and the SHA-256
of its secret, mode 0600; the secret itself is printed once by ``serve-keys create``.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from voiceauth.cli.options import (
    SERVICE_MODEL,
    calibration_option,
    cli,
    emit,
    model_option_defaulting_to,
    open_client,
    shadow_option,
    store_options,
)

SCOPES = ("stream", "verify", "agent", "metrics", "admin")  # voiceauth.serve.auth.Scope, without importing it


def default_keys() -> str:
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(config, "voiceauth", "serve-keys.json")


def keys_option(func):  # noqa: ANN001, ANN201 - click decorator
    return click.option("--keys", "keys_path", envvar="VOICEAUTH_SERVE_KEYS", default=default_keys,
                        show_default="$XDG_CONFIG_HOME/voiceauth/serve-keys.json",
                        help="JSON file of API keys (hashed) the service accepts.")(func)


def _need_serve_extra() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise click.ClickException(f"{exc.name} is not installed; install the service with "
                                   "pip install 'voiceauth[serve]'") from exc


@cli.command()
@store_options
@model_option_defaulting_to(SERVICE_MODEL)
@shadow_option
@calibration_option
@keys_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--max-streams", type=click.IntRange(1), default=200, show_default=True,
              help="Concurrent streaming calls.")
@click.option("--idle-timeout", type=click.FloatRange(min=1), default=30.0, show_default=True,
              help="Seconds without a message before a stream is ended.")
@click.option("--drain-timeout", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="On shutdown, seconds calls in flight may go on.")
@click.option("--audiosocket-port", type=click.IntRange(1, 65535),
              help="Also take Asterisk AudioSocket calls over TCP on this port (same --host; no TLS in that "
                   "protocol: keep it on a private network).")
@click.option("--ssl-certfile", type=click.Path(dir_okay=False, exists=True), help="TLS certificate (PEM).")
@click.option("--ssl-keyfile", type=click.Path(dir_okay=False, exists=True), help="TLS private key (PEM).")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info")
def serve(store: str, model_dir: str | None, as_json: bool, model: str, shadow_model: str | None,
          calibration: str | None, keys_path: str,
          host: str, port: int, max_streams: int, idle_timeout: float, drain_timeout: float,
          audiosocket_port: int | None, ssl_certfile: str | None, ssl_keyfile: str | None, log_level: str) -> None:
    """Serve REST, Twilio / AudioHook (and AudioSocket) streaming, the agent view and /metrics on one VoiceAuth."""
    _need_serve_extra()
    from voiceauth.serve import KeyFile, Limits, create_app
    from voiceauth.serve.server import run

    keys = KeyFile(keys_path)
    if not len(keys):
        raise click.ClickException(f"no API keys in {keys_path}; create one with voiceauth serve-keys create")
    if host not in ("127.0.0.1", "::1", "localhost") and not ssl_certfile:
        click.echo(f"warning: serving plain HTTP on {host}; keys and audio cross the network unencrypted "
                   "(pass --ssl-certfile/--ssl-keyfile or put a TLS proxy in front)", err=True)
    limits = Limits(max_streams=max_streams, idle_timeout_s=idle_timeout, drain_timeout_s=drain_timeout)
    from voiceauth.services import engines

    engines.check_pulled(model)  # a graph that is not exported stops the server here, not in /readyz's log
    va = open_client(store, model_dir, create=True, model=model, calibration=calibration,  # it enrols: may create
                     shadow_model=shadow_model)
    try:
        app = create_app(va, keys, limits, audiosocket=(host, audiosocket_port) if audiosocket_port else None)
        run(app, host=host, port=port, log_level=log_level, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
    finally:
        va.close()


@cli.group("serve-keys")
def serve_keys() -> None:
    """API keys of `voiceauth serve`: create, list, revoke."""


@serve_keys.command("create")
@keys_option
@click.option("--id", "key_id", required=True, help="Key id (letters, digits, _ -): the audit actor is key:<id>.")
@click.option("--scope", "scopes", type=click.Choice(SCOPES), multiple=True, required=True,
              help="What the key may do (repeat for several); admin may do everything.")
@click.option("--json", "as_json", is_flag=True)
def create_key(keys_path: str, key_id: str, scopes: tuple[str, ...], as_json: bool) -> None:
    """Create a key and print it once (only its hash is stored)."""
    from voiceauth.serve import KeyRing

    ring = KeyRing.load(keys_path) if Path(keys_path).exists() else KeyRing()
    token = ring.create(key_id, scopes)
    ring.save(keys_path)
    emit(as_json, {"id": key_id, "scopes": sorted(set(scopes)), "key": token, "keys_file": keys_path},
         f"{token}\n(key {key_id}, scopes {', '.join(sorted(set(scopes)))}; shown once: store it now)")


@serve_keys.command("list")
@keys_option
@click.option("--json", "as_json", is_flag=True)
def list_keys(keys_path: str, as_json: bool) -> None:
    """The key ids and scopes (never the secrets: they are not stored)."""
    from voiceauth.serve import KeyRing

    data = KeyRing.load(keys_path).to_json()["keys"]
    rows = [{"id": k["id"], "scopes": k["scopes"]} for k in data]  # type: ignore[union-attr, index]
    emit(as_json, rows, "\n".join(f"{r['id']}\t{','.join(r['scopes'])}" for r in rows) or "no keys")


@serve_keys.command("revoke")
@keys_option
@click.option("--id", "key_id", required=True)
def revoke_key(keys_path: str, key_id: str) -> None:
    """Remove a key (a running server picks the change up within a second)."""
    from voiceauth.serve import KeyRing

    ring = KeyRing.load(keys_path)
    if not ring.revoke(key_id):
        raise click.ClickException(f"no key {key_id} in {keys_path}")
    ring.save(keys_path)
    click.echo(f"revoked {key_id}")
