"""`classify`, `plan`, `windows`, `label security` end to end: the CLI as a subprocess on real
git repositories, real keys and a real build of the example plugin."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

NOW = "2026-11-24T12:00:00Z"  # a Tuesday; the config's window is Tue+Thu 03:00 Berlin
IN_FREEZE = "2026-12-24T12:00:00Z"


def write_config(directory: Path, security_pub: Path, *, extra: str = "",
                 windows: str = 'days = ["tue", "thu"]\nstart = "03:00"') -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "hotrelease.toml"
    path.write_text(f"""
[plugin]
name = "greeter"

[build]
commands = ["true"]

[trust]
security_keys = ["{security_pub}"]

[[windows]]
name = "maint"
{windows}
duration = "2h"
timezone = "Europe/Berlin"

[[freezes]]
name = "holidays"
start = 2026-12-20
end = 2027-01-03
timezone = "Europe/Berlin"
reason = "holiday events"
{extra}
""")
    return path


@pytest.fixture
def setup(plugin_repo, build_plugin, make_key, tmp_path):
    """Tags v1.2.0 in the plugin repo, builds + signs 1.2.1, and writes a config."""
    plugin_repo.tag("v1.2.0")
    release = build_plugin("1.2.1")
    security = make_key("security")
    config = write_config(tmp_path / "cfg", security.public)
    return plugin_repo, release, security, config


def run(cli, repo, config, *args):
    return cli(*args, "--config", config, "--now", NOW, cwd=repo.path)


def label(cli, repo, release, key, *extra):
    return cli("label", "security", "--manifest", release.manifest, "--advisory",
               "CVE-2026-1234", "--severity", "high", "--key", key.private, "--now", NOW,
               *extra, cwd=repo.path)


def test_classify_patch_from_git_baseline(cli, setup) -> None:
    repo, release, _, config = setup
    r = run(cli, repo, config, "classify", "--manifest", release.manifest, "--json")
    assert r.code == 0, r.stderr
    data = json.loads(r.stdout)
    assert (data["class"], data["baseline"], data["baseline_source"], data["lane"]) == (
        "patch", "1.2.0", "git tag v1.2.0", "scheduled")
    human = run(cli, repo, config, "classify", "--manifest", release.manifest)
    assert "greeter 1.2.1: patch" in human.stdout and "baseline: 1.2.0" in human.stdout


def test_signed_label_sends_it_down_the_urgent_lane(cli, setup, tmp_path) -> None:
    repo, release, security, config = setup
    made = label(cli, repo, release, security)
    assert made.code == 0, made.stderr
    dotenv = tmp_path / "plan.env"
    r = run(cli, repo, config, "plan", "--manifest", release.manifest, "--dotenv", dotenv)
    assert r.code == 0, r.stderr
    assert "class:       security" in r.stdout and "lane:        urgent" in r.stdout
    assert f"not before:  {NOW}" in r.stdout
    env = dict(line.split("=", 1) for line in dotenv.read_text().splitlines())
    assert env["HOTRELEASE_CLASS"] == "security" and env["HOTRELEASE_LANE"] == "urgent"
    assert env["HOTRELEASE_NOT_BEFORE"] == NOW
    assert env["HOTRELEASE_PLAN_DIGEST"].startswith("sha256:")


def test_label_by_unknown_key_is_reported_and_not_obeyed(cli, setup, make_key) -> None:
    repo, release, _, config = setup
    assert label(cli, repo, release, make_key("intruder")).code == 0
    r = run(cli, repo, config, "plan", "--manifest", release.manifest, "--json")
    data = json.loads(r.stdout)
    assert (data["class"], data["lane"]) == ("patch", "scheduled")
    assert any("untrusted key" in rule["message"] and "not treated as security"
               in rule["message"] for rule in data["rules"])


def test_tampered_label_signature_is_reported_and_not_obeyed(cli, setup) -> None:
    repo, release, security, config = setup
    assert label(cli, repo, release, security).code == 0
    sig = Path(f"{release.manifest.parent}/greeter-1.2.1.security.json.sig")
    envelope = json.loads(sig.read_text())
    good = envelope["signatures"][0]["sig"]
    envelope["signatures"][0]["sig"] = ("A" if good[0] != "A" else "B") + good[1:]
    sig.write_text(json.dumps(envelope))
    r = run(cli, repo, config, "classify", "--manifest", release.manifest)
    assert r.code == 0 and ": patch" in r.stdout
    assert "does not verify" in r.stdout and "not treated as security" in r.stdout
    envelope["signatures"][0]["sig"] = good  # the twin: the untouched signature counts
    sig.write_text(json.dumps(envelope))
    assert ": security" in run(cli, repo, config, "classify", "--manifest",
                               release.manifest).stdout


def test_label_cli_cosigns_and_refuses_mismatch(cli, setup, make_key) -> None:
    repo, release, security, _ = setup
    assert label(cli, repo, release, security).code == 0
    again = label(cli, repo, release, make_key("second"), "--json")
    assert again.code == 0 and json.loads(again.stdout)["signatures"] == 2
    bad = label(cli, repo, release, security, "--version", "9.9.9")
    assert bad.code == 2 and "does not match the manifest" in bad.error_line


def test_scheduled_plan_waits_for_window_and_digest_is_clock_free(cli, setup, tmp_path) -> None:
    repo, release, security, config = setup
    first = json.loads(run(cli, repo, config, "plan", "--manifest", release.manifest,
                           "--json").stdout)
    assert first["not_before"] == "2026-11-26T02:00:00Z"  # Thursday 03:00 Berlin
    # A feature release: only the stages the default rollout config gates need approval.
    assert first["window"]["name"] == "maint"
    assert first["stages"] == ["canary", "wave-1", "all"]
    assert first["approval_stages"] == ["wave-1", "all"]
    later = cli("plan", "--manifest", release.manifest, "--config", config, "--json", "--now",
                "2026-11-27T12:00:00Z", cwd=repo.path)
    assert json.loads(later.stdout)["plan_digest"] == first["plan_digest"]
    changed = write_config(tmp_path / "cfg2", security.public,
                           windows='days = ["wed"]\nstart = "03:00"')
    other = json.loads(run(cli, repo, changed, "plan", "--manifest", release.manifest,
                           "--json").stdout)
    assert other["plan_digest"] != first["plan_digest"]


def test_plan_inside_freeze(cli, setup) -> None:
    repo, release, security, config = setup
    patch = cli("plan", "--manifest", release.manifest, "--config", config, "--now", IN_FREEZE,
                "--json", cwd=repo.path)
    assert json.loads(patch.stdout)["not_before"] == "2027-01-05T02:00:00Z"
    # The default expiry (30 days from NOW) ends exactly at IN_FREEZE: the label says so.
    assert label(cli, repo, release, security).code == 0
    expired = cli("plan", "--manifest", release.manifest, "--config", config, "--now",
                  IN_FREEZE, cwd=repo.path)
    assert "lane:        scheduled" in expired.stdout and "expired at" in expired.stdout
    cosign = label(cli, repo, release, security, "--expires-days", "60")
    assert cosign.code == 0 and "keeps its expiry 2026-12-24T12:00:00Z" in cosign.stderr
    assert label(cli, repo, release, security, "--expires-days", "60", "--replace").code == 0
    urgent = cli("plan", "--manifest", release.manifest, "--config", config, "--now",
                 IN_FREEZE, cwd=repo.path)
    assert "lane:        urgent (break-glass)" in urgent.stdout
    assert "pierces freeze holidays" in urgent.stdout


def test_major_needs_approval(cli, setup) -> None:
    repo, _, _, config = setup
    r = run(cli, repo, config, "plan", "--version", "2.0.0")
    assert r.code == 0, r.stderr
    assert "class:       major" in r.stdout and "approval:    wave-1, all" in r.stdout


def test_prerelease_is_canary_only(cli, setup) -> None:
    repo, _, _, config = setup
    data = json.loads(run(cli, repo, config, "plan", "--version", "1.3.0-rc.1",
                          "--json").stdout)
    assert data["canary_only"] and data["stages"] == ["canary"]


def test_downgrade_refused_with_rollback_twin(cli, setup) -> None:
    repo, _, _, config = setup
    refused = run(cli, repo, config, "classify", "--version", "1.1.0", "--from", "1.2.0")
    assert refused.code == 1 and "downgrade refused" in refused.error_line
    as_json = run(cli, repo, config, "classify", "--version", "1.1.0", "--from", "1.2.0",
                  "--json")
    assert json.loads(as_json.stdout)["error"]["code"] == "downgrade"
    ok = run(cli, repo, config, "classify", "--version", "1.1.0", "--from", "1.2.0",
             "--rollback")
    assert ok.code == 0 and "downgrade" in ok.stdout


def test_malformed_version_refused_with_twin(cli, setup) -> None:
    repo, _, _, config = setup
    bad = run(cli, repo, config, "classify", "--version", "1.02.0")
    assert bad.code == 2 and "not a valid SemVer" in bad.error_line
    assert run(cli, repo, config, "classify", "--version", "1.2.0").code == 0


def test_no_change(cli, setup) -> None:
    repo, _, _, config = setup
    r = run(cli, repo, config, "classify", "--version", "1.2.0+rebuild", "--from", "1.2.0")
    assert r.code == 0 and ": no-change" in r.stdout and "build metadata" in r.stdout


def test_classify_without_config(cli, make_git_repo) -> None:
    repo = make_git_repo("bare")
    repo.commit("x")
    repo.tag("v0.3.1")
    r = cli("classify", "--name", "tool", "--version", "0.4.0", "--now", NOW, cwd=repo.path)
    assert r.code == 0 and "tool 0.4.0: major" in r.stdout
    r2 = cli("classify", "--version", "0.4.0", cwd=repo.path)
    assert r2.code == 2 and "--name" in r2.error_line


def test_windows_lists_next_slots(cli, setup) -> None:
    repo, _, _, config = setup
    r = run(cli, repo, config, "windows", "-n", "3", "--json")
    assert r.code == 0, r.stderr
    starts = [w["start"] for w in json.loads(r.stdout)["windows"]]
    assert starts == ["2026-11-26T02:00:00Z", "2026-12-01T02:00:00Z", "2026-12-03T02:00:00Z"]
    frozen = cli("windows", "--config", config, "--now", IN_FREEZE, cwd=repo.path)
    assert "frozen now: holidays" in frozen.stdout and "2027-01-05T02:00:00Z" in frozen.stdout


def test_now_needs_a_zone(cli, setup) -> None:
    repo, _, _, config = setup
    r = cli("windows", "--config", config, "--now", "2026-11-24T12:00:00", cwd=repo.path)
    assert r.code == 2 and "time zone" in r.error_line


@pytest.mark.parametrize("snippet,where", [
    ('[[windows]]\ncron = "0 3 * *"\nduration = "1h"\ntimezone = "UTC"', "windows[1] -> cron"),
    ('[[windows]]\ndays = ["tue"]\nstart = "03:00"\nduration = "1h"\ntimezone = "Mars/X"',
     "windows[1] -> timezone"),
    ('[policy]\nsecurity_on_major = "yolo"', "policy -> security_on_major"),
    ('[policy]\nsecurity_sources = ["gossip"]', "policy -> security_sources[0]"),
    ('[notify]\nwebhook = "ftp://x"', "notify -> webhook"),
    ('[[freezes]]\nstart = 2026-12-20\nend = 2026-12-01\ntimezone = "UTC"', "freezes[1] -> end"),
])
def test_config_errors_name_the_key(cli, setup, tmp_path, snippet: str, where: str) -> None:
    repo, _, security, _ = setup
    bad = write_config(tmp_path / "bad", security.public, extra=snippet)
    r = cli("windows", "--config", bad, "--now", NOW, cwd=repo.path)
    assert r.code == 2 and where in r.error_line, r.stderr
    good = write_config(tmp_path / "good", security.public)
    assert cli("windows", "--config", good, "--now", NOW, cwd=repo.path).code == 0


# --- notification hooks ---------------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    bodies: list[dict] = []
    status = 200

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        length = int(self.headers.get("Content-Length", "0"))
        type(self).bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, type[_Recorder]]]:
    handler = type("Handler", (_Recorder,), {"bodies": [], "status": 200})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_urgent_plan_posts_webhook(cli, setup, tmp_path, webhook) -> None:
    repo, release, security, _ = setup
    url, handler = webhook
    config = write_config(tmp_path / "hook", security.public,
                          extra=f'[notify]\nwebhook = "{url}"\ntimeout = 5')
    assert label(cli, repo, release, security).code == 0
    r = run(cli, repo, config, "plan", "--manifest", release.manifest, "--notify")
    assert r.code == 0, r.stderr
    assert "notified:    posted to" in r.stdout
    (body,) = handler.bodies
    assert (body["event"], body["class"], body["version"]) == ("hotrelease.urgent", "security",
                                                               "1.2.1")


def test_webhook_failure_is_exit_5_and_scheduled_does_not_notify(cli, setup, tmp_path,
                                                                 webhook) -> None:
    repo, release, security, _ = setup
    url, handler = webhook
    handler.status = 500
    config = write_config(tmp_path / "hook", security.public,
                          extra=f'[notify]\nwebhook = "{url}"\ntimeout = 5')
    quiet = run(cli, repo, config, "plan", "--manifest", release.manifest, "--notify")
    assert quiet.code == 0 and handler.bodies == []  # patch: scheduled, nobody is paged
    assert label(cli, repo, release, security).code == 0
    r = run(cli, repo, config, "plan", "--manifest", release.manifest, "--notify")
    assert r.code == 5 and "HTTP 500" in r.error_line


def test_urgent_plan_runs_notify_command(cli, setup, tmp_path) -> None:
    repo, release, security, _ = setup
    out = tmp_path / "notified.json"
    script = tmp_path / "hook.py"
    script.write_text("import os, sys\n"
                      f"open({str(out)!r}, 'w').write(os.environ['HOTRELEASE_LANE'] + "
                      "'\\n' + sys.stdin.read())\n")
    config = write_config(tmp_path / "cmd", security.public,
                          extra=f'[notify]\ncommand = ["{sys.executable}", "{script}"]')
    assert label(cli, repo, release, security).code == 0
    r = run(cli, repo, config, "plan", "--manifest", release.manifest, "--notify")
    assert r.code == 0, r.stderr
    lane, payload = out.read_text().split("\n", 1)
    assert lane == "urgent" and json.loads(payload)["class"] == "security"


def test_documented_example_config_parses() -> None:
    """The example in docs/classify.md is real: it parses, and its policy is the default."""
    import re
    import tomllib

    from hotrelease.config.project import parse_config
    from hotrelease.gate.policy import Policy

    doc = (Path(__file__).resolve().parent.parent / "docs" / "classify.md").read_text()
    (block,) = [b for b in re.findall(r"```toml\n(.*?)```", doc, re.S) if "[[windows]]" in b]
    cfg = parse_config(tomllib.loads(block), Path("/tmp/hotrelease.toml"))
    assert cfg.policy == Policy()
    assert [w.name for w in cfg.schedule.windows] == ["weeknights", "us-early"]
    assert [f.name for f in cfg.schedule.freezes] == ["holidays", "weekend-tournament"]
    assert cfg.notify.command == ["/usr/local/bin/page-ops"] and cfg.notify.timeout == 10


def test_urgent_plan_without_a_notify_target_says_nobody_was_notified(cli, setup) -> None:
    repo, release, security, config = setup
    assert label(cli, repo, release, security).code == 0
    r = run(cli, repo, config, "plan", "--manifest", release.manifest, "--notify")
    assert r.code == 0, r.stderr
    assert "lane:        urgent" in r.stdout
    assert "notified:    nobody (no [notify] webhook or command)" in r.stdout
    assert f"warning: nobody was notified: {config} has no [notify]" in r.stderr
    assert "ops are notified" not in r.stdout, "no rule claims a notification that did not happen"
    doc = json.loads(run(cli, repo, config, "plan", "--manifest", release.manifest,
                         "--notify", "--json").stdout)
    assert doc["lane"] == "urgent" and doc["notified"] == []


def test_config_check_warns_about_an_urgent_lane_nobody_hears_of(cli, setup, tmp_path) -> None:
    _, _, security, config = setup
    r = cli("config", "check", config, "--json")
    assert r.code == 0, r.stderr
    warnings = json.loads(r.stdout)["warnings"]
    assert len(warnings) == 1 and "no notify target" in warnings[0] and str(config) in warnings[0]
    assert "warning:" in r.stderr and "nobody is told" in r.stderr
    told = write_config(tmp_path / "told", security.public,
                        extra='[notify]\nwebhook = "https://chat.example.com/hooks/ops"')
    twin = cli("config", "check", told, "--json")
    assert twin.code == 0 and json.loads(twin.stdout)["warnings"] == []
