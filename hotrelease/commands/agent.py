"""`hotrelease agent ...`: run the node agent, and helpers for its config.

Heavy imports (fastapi, uvicorn) happen inside the command functions so `hotrelease --help`
stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from hotrelease.commands._common import JSON_OPTION, emit_json, info

agent_app = typer.Typer(help="The node agent: verifies, stores, activates and rolls back "
                             "plugin releases on a game-server node.", no_args_is_help=True)


@agent_app.command("serve")
def serve(
    config: Path = typer.Option(..., "--config", "-c", metavar="FILE", dir_okay=False,
                                help="agent.toml"),
    port: int = typer.Option(None, "--port", help="Override [agent] port."),
) -> None:
    """Recover from any interrupted switch, then serve the agent API."""
    import dataclasses
    import ssl
    from typing import Any

    import uvicorn

    from hotrelease.agent.app import create_app
    from hotrelease.agent.config import load_agent_config
    from hotrelease.agent.server import fit_connections, protocol_for
    from hotrelease.agent.service import Agent

    cfg = load_agent_config(config)
    if port is not None:
        cfg.port = port
    agent = Agent(cfg)
    for record in agent.recover():
        info(f"hotrelease agent: recovered {record['name']}: {record['reason']}")
    app = create_app(agent)
    ssl_options: dict[str, object] = {}
    if cfg.tls is not None:
        ssl_options = {"ssl_certfile": str(cfg.tls.cert), "ssl_keyfile": str(cfg.tls.key)}
        if cfg.tls.client_ca is not None:
            ssl_options.update(ssl_ca_certs=str(cfg.tls.client_ca),
                               ssl_cert_reqs=ssl.CERT_REQUIRED)
    cap, note = fit_connections(cfg.http_limits.max_connections)
    if note:
        info(f"hotrelease agent: {note}")
    limits = dataclasses.replace(cfg.http_limits, max_connections=cap)
    scheme = "https" if cfg.tls else "http"
    info(f"hotrelease agent: serving {scheme}://{cfg.listen}:{cfg.port} "
         f"(data dir {cfg.data_dir}, at most {cap} connections)")
    # httptools with the bounds of server.py (uvicorn's own limit_concurrency is not set:
    # the cap is enforced when a connection is accepted, not once its headers are in).
    options: dict[str, Any] = {
        "timeout_keep_alive": limits.keep_alive_timeout,
        "timeout_graceful_shutdown": limits.shutdown_timeout, **ssl_options}
    uvicorn.run(app, host=cfg.listen, port=cfg.port, http=protocol_for(limits), ws="none",
                log_level="warning", access_log=False, server_header=False, **options)


@agent_app.command("hash-token")
def hash_token_cmd(
    name: str = typer.Option("ci", "--name", help="Token name recorded in history."),
    token: str = typer.Option(None, "--token", envvar="HOTRELEASE_TOKEN",
                              help="Hash this token instead of generating a new one."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Generate (or hash) a bearer token and print the [[tokens]] entry for agent.toml."""
    from hotrelease.agent.auth import MIN_TOKEN_LENGTH, hash_token, new_token
    from hotrelease.errors import UsageError

    generated = token is None
    value = new_token() if token is None else token
    if len(value) < MIN_TOKEN_LENGTH or not value.isascii() or not value.isprintable():
        raise UsageError(f"a token must be at least {MIN_TOKEN_LENGTH} printable ASCII "
                         "characters")
    digest = hash_token(value)
    if json_out:
        emit_json({"name": name, "sha256": digest, **({"token": value} if generated else {})})
        return
    if generated:
        info("token (give it to the caller; it is not stored anywhere):")
        print(value)
        info("config entry for agent.toml:")
    print(f'[[tokens]]\nname = "{name}"\nsha256 = "{digest}"')


def register(app: typer.Typer) -> None:
    app.add_typer(agent_app, name="agent")
