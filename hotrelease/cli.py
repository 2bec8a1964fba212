"""The `hotrelease` command line: parse, call the core, format. No release logic here.

Errors from the core arrive as `HotreleaseError`, are caught once in `main()`, and become a
one-line message on stderr plus a documented exit code (a traceback only with --debug).
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import typer

from hotrelease import __version__
from hotrelease.commands import agent as agent_commands
from hotrelease.commands import classify as classify_commands
from hotrelease.commands import init as init_commands
from hotrelease.commands import publish as publish_commands
from hotrelease.commands import release as release_commands
from hotrelease.errors import EXIT_NOT_NOW, HotreleaseError, InternalError, from_os_error

app = typer.Typer(
    name="hotrelease",
    help="Build, sign, classify and publish hot-reloadable plugins to game-server nodes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    # Plain click help: rich's help formatter costs ~80 ms of imports on every --help.
    rich_markup_mode=None,
)

_debug = False


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"hotrelease {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show a traceback on errors."),
    version: bool = typer.Option(False, "--version", callback=_version_callback,
                                 is_eager=True, help="Print the version and exit."),
) -> None:
    global _debug
    _debug = debug


release_commands.register(app)
classify_commands.register(app)
agent_commands.register(app)
publish_commands.register(app)
init_commands.register(app)
release_commands.register_demo(app)


def _report(exc: HotreleaseError) -> None:
    if _debug or os.environ.get("HOTRELEASE_DEBUG"):
        traceback.print_exc()
    message = str(exc).replace("\n", " ")
    if "--json" in sys.argv[1:]:
        print(json.dumps({"ok": False, "error": {"code": exc.code, "message": message,
                                                  "exit_code": exc.exit_code}}))
    # Exit 3 is no failure: the release is allowed, just not yet.
    kind = "not now" if exc.exit_code == EXIT_NOT_NOW else "error"
    print(f"hotrelease: {kind}: {message}", file=sys.stderr)


def main() -> None:
    try:
        try:
            app(prog_name="hotrelease")
        except OSError as exc:  # a path the user gave: unreadable, unwritable, missing
            raise from_os_error(exc) from exc
        except (HotreleaseError, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - a bug: one line, traceback with --debug
            raise InternalError(f"internal error: {type(exc).__name__}: {exc}") from exc
    except HotreleaseError as exc:
        _report(exc)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("hotrelease: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
