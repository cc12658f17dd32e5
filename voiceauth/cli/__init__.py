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

import os
from collections.abc import Sequence

import click

from voiceauth.cli import admin, calibration, customers, models, serve  # noqa: F401 - registers their commands
from voiceauth.cli.options import (
    EXIT_ERROR,
    EXIT_INCONCLUSIVE,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_OPTED_OUT,
    EXIT_REJECT,
    EXIT_TAMPERED,
    MODEL_NAMES,
    cli,
)


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


__all__ = [
    "EXIT_ERROR", "EXIT_INCONCLUSIVE", "EXIT_INTERNAL", "EXIT_OK", "EXIT_OPTED_OUT", "EXIT_REJECT", "EXIT_TAMPERED",
    "MODEL_NAMES", "cli", "main",
]
