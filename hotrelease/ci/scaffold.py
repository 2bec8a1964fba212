"""`hotrelease init`: write a plugin repository's release setup from the shipped templates.

The templates live in the `hotrelease.templates` package (templates/ in the checkout), so init
works after a plain `pip install`. Nothing is overwritten without `force`; keys and the
agent token are never overwritten (a new release key would orphan every signed release), they
are reused when present. Imports `config`, `trust` and `agent.auth`; `commands.init` calls it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from hotrelease import __version__
from hotrelease.errors import UsageError

KINDS = ("python", "go")
PRIVATE_DIR = ".hotrelease"
DEFAULT_NODE = ("node-1", "http://127.0.0.1:7701")
DEFAULT_WINDOW = "tue,thu 03:00 2h Europe/Berlin"


@dataclass
class Window:
    days: list[str]
    start: str
    duration: str
    timezone: str


@dataclass
class InitOptions:
    directory: Path
    kind: str = "python"
    name: str | None = None
    nodes: list[tuple[str, str]] = field(default_factory=list)
    window: str = DEFAULT_WINDOW
    bake_seconds: int = 60
    urgent_bake_seconds: int = 30
    force: bool = False
    security_key: Path | None = None  # the security team's public key (PEM)


@dataclass
class InitResult:
    directory: Path
    name: str
    written: list[Path] = field(default_factory=list)
    updated: list[Path] = field(default_factory=list)  # merged into an existing file
    kept: list[Path] = field(default_factory=list)  # keys / token reused as they were
    signing_key: Path | None = None
    agent_token: Path | None = None
    keyid: str = ""
    security_keyid: str = ""
    security_signing_key: Path | None = None  # generated here: hand it to the security team


def template_root() -> Path:
    return Path(str(resources.files("hotrelease.templates")))


def _template(rel: str) -> str:
    return (template_root() / rel).read_text()


def _fill(text: str, values: dict[str, str]) -> str:
    def sub(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"template placeholder {key!r} has no value")
        return values[key]

    return re.sub(r"\{\{(\w+)\}\}", sub, text)


def plugin_name_for(directory: Path) -> str:
    name = re.sub(r"[^a-z0-9_-]+", "-", directory.resolve().name.lower()).strip("-_")
    return name or "plugin"


def parse_window(text: str) -> Window:
    """`DAYS HH:MM DURATION [TZ]`, e.g. `tue,thu 03:00 2h Europe/Berlin`, `mon-sun 00:00 1d
    UTC`."""
    parts = text.split()
    if len(parts) not in (3, 4):
        raise UsageError(f"--window {text!r}: expected DAYS HH:MM DURATION [TIMEZONE], e.g. "
                         f"{DEFAULT_WINDOW!r}")
    days = [d for d in parts[0].lower().split(",") if d]
    if not re.fullmatch(r"\d{1,2}:\d{2}", parts[1]):
        raise UsageError(f"--window {text!r}: start {parts[1]!r} is not HH:MM")
    return Window(days, parts[1], parts[2], parts[3] if len(parts) == 4 else "UTC")


def parse_node(text: str) -> tuple[str, str]:
    name, sep, url = text.partition("=")
    if not sep or not name or not url.startswith(("http://", "https://")):
        raise UsageError(f"--node {text!r}: expected NAME=URL, e.g. "
                         "node-1=http://10.0.0.5:7701")
    return name.strip(), url.strip().rstrip("/")


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def _nodes_toml(nodes: list[tuple[str, str]]) -> str:
    out = []
    for name, url in nodes:
        out.append(f'[[nodes]]\nname = {json.dumps(name)}\nurl = {json.dumps(url)}\n'
                   f'token_env = "HOTRELEASE_AGENT_TOKEN"\ngroups = []\n')
    return "\n".join(out)


def render_files(opts: InitOptions, name: str, token_sha256: str) -> dict[str, str]:
    """Relative path -> content of every text file init writes (keys excluded)."""
    window = parse_window(opts.window)
    go = opts.kind == "go"
    if go:
        build_command = json.dumps(
            "go build -trimpath -buildvcs=false -buildmode=plugin -gcflags=-p={plugin_path} "
            "'-ldflags=-pluginpath={plugin_path} -X main.Version={version}' "
            "-o {out}/{name}.so .")
        entry = ["Handle", "Health", "Version"]
        build_env = ('\n[build.env]\nCGO_ENABLED = "1"\nGOTOOLCHAIN = "local"\n')
        variables = ("\nvariables:\n"
                     "  # Go plugins build with cgo: golang:*-bookworm has Go and gcc; the jobs "
                     "add Python 3\n  # (apt) for hotrelease. Use the Go version your game "
                     "server is built with:\n  # plugin.Open refuses a plugin built by "
                     "another.\n  HOTRELEASE_IMAGE: \"golang:1.22-bookworm\"\n")
    else:
        build_command = json.dumps("python3 build.py --version {version} --out {out}")
        entry = ["handle", "health", "VERSION"]
        build_env = ""
        variables = ""
    values = {
        "name": name, "kind": opts.kind, "entry_symbols": _toml_list(entry),
        "build_command": build_command, "build_env": build_env,
        "window_name": "maintenance", "window_days": _toml_list(window.days),
        "window_start": window.start, "window_duration": window.duration,
        "window_timezone": window.timezone,
        "nodes": _nodes_toml(opts.nodes or [DEFAULT_NODE]),
        "bake_seconds": str(opts.bake_seconds),
        "urgent_bake_seconds": str(opts.urgent_bake_seconds),
        "hotrelease_version": __version__, "variables": variables,
        "token_sha256": token_sha256,
    }
    files = {
        "hotrelease.toml": _fill(_template("hotrelease.toml.tmpl"), values),
        ".gitlab-ci.yml": _fill(_template("gitlab-ci.yml.tmpl"), values),
        ".gitlab/hotrelease.gitlab-ci.yml": _template("gitlab/hotrelease.gitlab-ci.yml"),
        ".gitignore": _template("gitignore.tmpl"),
        "deploy/agent.toml": _fill(_template("deploy/agent.toml.tmpl"), values),
        "deploy/hotrelease-agent.service": _template("deploy/hotrelease-agent.service"),
    }
    if go:
        files["main.go"] = _template("go-plugin/main.go")
        files["go.mod"] = _fill(_template("go-plugin/go.mod.tmpl"), values)
    else:
        files["build.py"] = _template("python-plugin/build.py")
        files["src/plugin.py"] = _template("python-plugin/src/plugin.py")
        files["src/greetings.txt"] = _template("python-plugin/src/greetings.txt")
    return files


def _check_config(text: str, directory: Path) -> None:
    """Parse the rendered hotrelease.toml the way every command will (before writing)."""
    from hotrelease.config.project import parse_config
    from hotrelease.config.reader import load_toml

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hotrelease.toml"
        path.write_text(text)
        parse_config(load_toml(path), directory / "hotrelease.toml")


def _write_private(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(data)
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)


def _merge_gitignore(path: Path, template: str, result: InitResult) -> None:
    if not path.exists():
        path.write_text(template)
        result.written.append(path)
        return
    text = path.read_text()
    have = {line.strip() for line in text.splitlines()}
    missing = [line for line in template.splitlines()
               if line.strip() and not line.startswith("#") and line.strip() not in have]
    if missing:
        sep = "" if text.endswith("\n") or not text else "\n"
        path.write_text(text + sep + "# hotrelease\n" + "\n".join(missing) + "\n")
        result.updated.append(path)


def _security_key(opts: InitOptions, directory: Path, result: InitResult) -> None:
    """Agents raise their security floor only on labels signed by the security team's key,
    so the project and the agent config trust it from the start: the team's public key
    (--security-key), else the one already there, else a new pair whose private half waits
    in .hotrelease/ for the security team."""
    from hotrelease.trust.keys import generate_keypair, load_public_key

    public = directory / "keys" / "security.pub"
    private = directory / PRIVATE_DIR
    if opts.security_key is not None:
        key = load_public_key(opts.security_key)
        public.write_bytes(opts.security_key.read_bytes())
        result.written.append(public)
    elif public.is_file():
        key = load_public_key(public)
        result.kept.append(public)
    else:
        private.mkdir(parents=True, exist_ok=True)
        os.chmod(private, 0o700)
        key = generate_keypair(private / "security")
        (private / "security.pub").replace(public)
        result.written.append(public)
    if (private / "security.key").is_file():
        result.security_signing_key = private / "security.key"
    result.security_keyid = key.keyid
    deploy_pub = directory / "deploy" / "security.pub"
    deploy_pub.write_bytes(public.read_bytes())
    result.written.append(deploy_pub)


def init_project(opts: InitOptions) -> InitResult:
    from hotrelease.agent.auth import hash_token
    from hotrelease.trust.keys import generate_keypair, load_public_key

    if opts.kind not in KINDS:
        raise UsageError(f"kind must be one of {', '.join(KINDS)}")
    directory = opts.directory
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory}: not a directory")
    name = opts.name or plugin_name_for(directory)
    from hotrelease.trust.manifest import check_name

    try:
        check_name(name)
    except Exception as exc:  # noqa: BLE001 - becomes a usage error with the reason
        raise UsageError(f"plugin name {name!r}: {exc} (give --name)") from None
    private = directory / PRIVATE_DIR
    token_file = private / "agent-token"
    token = token_file.read_text().strip() if token_file.is_file() else secrets.token_hex(32)
    files = render_files(opts, name, hash_token(token))
    # .gitignore is merged, never replaced: it is what keeps .hotrelease/ (the secrets) out
    # of git, so the entries are added to an existing file.
    gitignore = files.pop(".gitignore")
    existing = sorted(rel for rel in files if (directory / rel).exists())
    if existing and not opts.force:
        raise UsageError(f"{directory}: would overwrite {', '.join(existing)} "
                         "(use --force to replace them; keys and tokens are always kept)")
    _check_config(files["hotrelease.toml"], directory)
    if opts.security_key is not None:
        try:
            load_public_key(opts.security_key)
        except Exception as exc:  # noqa: BLE001 - becomes a usage error with the reason
            raise UsageError(f"--security-key {opts.security_key}: {exc}") from None

    result = InitResult(directory, name)
    directory.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        target = directory / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()
        target.write_text(content)
        result.written.append(target)

    _merge_gitignore(directory / ".gitignore", gitignore, result)
    public = directory / "keys" / "release.pub"
    key_file = private / "release.key"
    if public.is_file():
        result.kept.append(public)
        key = load_public_key(public)
    else:
        public.parent.mkdir(parents=True, exist_ok=True)
        private.mkdir(parents=True, exist_ok=True)
        os.chmod(private, 0o700)
        key = generate_keypair(private / "release")
        (private / "release.pub").replace(public)
        result.written.append(public)
    result.keyid = key.keyid
    if key_file.is_file():
        result.signing_key = key_file
    deploy_pub = directory / "deploy" / "release.pub"
    deploy_pub.write_bytes(public.read_bytes())
    result.written.append(deploy_pub)
    _security_key(opts, directory, result)
    if token_file.is_file():
        result.kept.append(token_file)
    else:
        _write_private(token_file, token + "\n")
    result.agent_token = token_file
    return result
