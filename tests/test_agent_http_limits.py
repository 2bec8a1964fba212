"""Bounds at the agent's HTTP layer (issue 11 item 5), against real agents on loopback with
short limits: header size and time, body time (the partial upload removed, the refusal in
history), idle connections, the connection cap and the open-file limit, the token checked
before the body, a bounded graceful stop. Each refusal sits beside a twin that passes."""

from __future__ import annotations

import base64
import json
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import (
    AGENT_TOKEN,
    AgentProcess,
    agent_toml,
    free_port,
    raw_upload,
    wait_until,
    with_active_release,
)

from hotrelease.agent.config import DEFAULT_HTTP_LIMITS, load_agent_config
from hotrelease.errors import ConfigError

LIMITS = {"max_header_bytes": 16384, "header_timeout": 1.0, "body_timeout": 1.0,
          "body_min_rate": 1024, "keep_alive_timeout": 1.0, "shutdown_timeout": 2.0}
AUTH = f"Bearer {AGENT_TOKEN}"


def with_limits(text: str, **overrides: object) -> str:
    lines = "".join(f"{k} = {v}\n" for k, v in {**LIMITS, **overrides}.items())
    return text.replace("[agent]\n", f"[agent]\n{lines}", 1)


def limited_agent(make_agent, **overrides: object) -> AgentProcess:
    agent = make_agent(start=False, max_upload=64 * 1024)
    agent.config.write_text(with_limits(agent.config.read_text(), **overrides))
    return agent.start()


@pytest.fixture
def node(make_agent, build_plugin):
    """A limited agent with greeter 1.0.0 stored and active, a signed 1.1.0 ready."""
    agent = limited_agent(make_agent)
    return with_active_release(agent, build_plugin)


# --- raw HTTP on a socket -------------------------------------------------------------------


def parse(raw: bytes) -> tuple[int, dict[str, str], Any] | None:
    """(status, headers, JSON body) of a complete response in `raw`, else None."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    headers = {k.lower(): v for k, v in headers.items()}
    length = int(headers.get("content-length", "0"))
    if len(body) < length:
        return None
    try:
        payload: object = json.loads(body[:length])
    except ValueError:  # e.g. uvicorn's own text/plain answers
        payload = body[:length]
    return int(lines[0].split()[1]), headers, payload


def exchange(port: int, head: bytes, drip: bytes = b"", *, interval: float = 0.05,
             give_up: float = 8.0) -> tuple[float, tuple | None]:
    """Send `head` at once, then `drip` one byte every `interval` seconds, until the agent
    answers or closes (or `give_up` seconds). Returns the seconds the connection was held
    and the parsed answer (None: closed or reset without one)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=give_up)
    start = time.monotonic()
    got, sent = b"", 0
    try:
        sock.sendall(head)
        while time.monotonic() - start < give_up:
            readable, _, _ = select.select([sock], [], [], interval)
            if readable:
                chunk = sock.recv(65536)
                if not chunk or parse(got + chunk):
                    got += chunk
                    break
                got += chunk
            elif sent < len(drip):
                sock.send(drip[sent:sent + 1])
                sent += 1
    except OSError:  # reset: what was read before stays in `got`
        pass
    finally:
        held = time.monotonic() - start
        sock.close()
    return held, parse(got)


def request_head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1",
             *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def upload_headers(release) -> dict[str, str]:
    return {"Authorization": AUTH,
            "Content-Length": str(release.bundle.stat().st_size),
            "X-Hotrelease-Manifest": base64.b64encode(release.manifest.read_bytes()).decode(),
            "X-Hotrelease-Signature": base64.b64encode(release.signature.read_bytes()).decode()}


def code_of(answer: tuple | None) -> tuple[int, str] | None:
    if answer is None:
        return None
    status, _, body = answer
    return status, body["error"]["code"] if isinstance(body, dict) and "error" in body else ""


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


# --- the request head -----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [{"Content-Length": "5pD[u,>O"}, {"Bad Name": "x"},
                                 {"Content-Length": "-1"}])
def test_a_malformed_head_gets_the_agents_json_400(node, bad) -> None:
    before, n = node.snapshot(), len(node.history())
    _, answer = exchange(node.port, request_head("GET", "/v1/plugins/greeter",
                                                 {"Authorization": AUTH, **bad}))
    assert code_of(answer) == (400, "bad_request")
    assert answer is not None and answer[1]["content-type"] == "application/json"
    assert node.snapshot() == before and len(node.history()) == n
    # twin: the same request, well formed
    _, answer = exchange(node.port, request_head("GET", "/v1/plugins/greeter",
                                                 {"Authorization": AUTH}))
    assert answer is not None and answer[0] == 200


def test_head_over_max_header_bytes_is_431_and_one_under_it_passes(node) -> None:
    before, n = node.snapshot(), len(node.history())
    _, answer = exchange(node.port, request_head("GET", "/v1/health", {"X-Pad": "a" * 20000}))
    assert code_of(answer) == (431, "header_too_large")
    assert answer is not None
    assert answer[1]["connection"] == "close"
    # the same refusal for an upload with a valid token: nothing stored, nothing recorded
    # (the request never got as far as naming a plugin to the app)
    head = request_head("PUT", "/v1/plugins/greeter/releases/1.1.0",
                        {**upload_headers(node.next), "X-Pad": "a" * 20000})
    _, answer = exchange(node.port, head + node.next.bundle.read_bytes())
    assert code_of(answer) == (431, "header_too_large")
    assert node.snapshot() == before and len(node.history()) == n
    # twins: a head under the limit passes, the upload without the padding is stored
    _, answer = exchange(node.port, request_head("GET", "/v1/health", {"X-Pad": "a" * 8000}))
    assert answer is not None and answer[0] == 200 and answer[2]["ok"] is True
    response = raw_upload(node, "greeter", "1.1.0", node.next.manifest, node.next.signature,
                          node.next.bundle)
    assert response.status_code == 201, response.text
    assert node.history()[-1]["result"] == "stored"


def test_32_mib_header_without_a_token_is_not_read_whole(node) -> None:
    """The issue's case: a 32 MiB header from an unauthenticated client used to be read
    whole (+63 MiB) before the 401. Now the agent stops at max_header_bytes."""
    assert node.proc is not None
    peak_before = peak_rss_kib(node.proc.pid)
    head = b"GET /v1/plugins HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (32 * 1024 * 1024)
    held, answer = exchange(node.port, head + b"\r\n\r\n", give_up=10)
    assert code_of(answer) == (431, "header_too_large")
    growth_mib = (peak_rss_kib(node.proc.pid) - peak_before) / 1024
    assert growth_mib < 16, f"agent peak RSS grew {growth_mib:.1f} MiB"
    status = requests.get(f"{node.url}/v1/plugins", headers={"Authorization": AUTH},
                          timeout=5).status_code
    assert status == 200  # twin: the same request with a normal head


def test_header_trickler_is_cut_with_408_and_a_prompt_head_passes(node) -> None:
    head = b"GET /v1/health HTTP/1.1\r\nHost: x\r\n"
    held, answer = exchange(node.port, head, b"X-Slow: " + b"a" * 400 + b"\r\n\r\n")
    assert code_of(answer) == (408, "header_timeout")
    assert 0.9 <= held < 3.5, held  # header_timeout = 1 s
    held, answer = exchange(node.port, head + b"X-Slow: a\r\n\r\n")
    assert answer is not None and answer[0] == 200 and held < 1.0


def test_idle_connection_is_closed_after_keep_alive_timeout(node) -> None:
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=6)
    start = time.monotonic()
    try:
        assert sock.recv(1024) == b""  # closed, without an answer: nothing was asked
    except ConnectionResetError:
        pass
    held = time.monotonic() - start
    sock.close()
    assert 0.9 <= held < 3.5, held  # keep_alive_timeout = 1 s
    # twin: a connection that asks at once is answered
    held, answer = exchange(node.port, request_head("GET", "/v1/health", {}))
    assert answer is not None and answer[0] == 200


# --- the request body -----------------------------------------------------------------------


def test_upload_trickler_is_cut_its_partial_upload_removed_and_recorded(node) -> None:
    before, n = node.snapshot(), len(node.history())
    nxt = node.next
    body = nxt.bundle.read_bytes()
    head = request_head("PUT", "/v1/plugins/greeter/releases/1.1.0", upload_headers(nxt))
    result: dict[str, Any] = {}

    def trickler() -> None:
        result["held"], result["answer"] = exchange(node.port, head + body[:100], body[100:])

    thread = threading.Thread(target=trickler)
    thread.start()
    tmp = node.data_dir / "tmp"
    try:  # the partial upload exists while the body trickles in
        wait_until(lambda: any(tmp.iterdir()), 5, "a partial upload in tmp/")
    finally:
        thread.join(15)
    assert code_of(result["answer"]) == (408, "body_timeout")
    assert result["held"] < 4.0, result["held"]  # body_timeout = 1 s
    assert list(tmp.iterdir()) == []
    assert node.snapshot() == before
    history = node.history()
    assert len(history) == n + 1
    assert history[-1]["result"] == "refused" and history[-1]["code"] == "body_timeout"
    assert history[-1]["action"] == "upload" and history[-1]["who"] == "ci"
    assert history[-1]["version"] == "1.1.0"
    # twin: the same release sent at once is stored
    response = raw_upload(node, "greeter", "1.1.0", nxt.manifest, nxt.signature, nxt.bundle)
    assert response.status_code == 201, response.text
    assert (node.data_dir / "releases" / "greeter" / "1.1.0" / "manifest.json").is_file()


def test_json_body_trickler_is_cut_and_recorded(node) -> None:
    before, n = node.snapshot(), len(node.history())
    body = json.dumps({"version": "1.0.0", "reason": "r" * 200}).encode()
    head = request_head("POST", "/v1/plugins/greeter/activate",
                        {"Authorization": AUTH, "Content-Type": "application/json",
                         "Content-Length": str(len(body))})
    held, answer = exchange(node.port, head, body)
    assert code_of(answer) == (408, "body_timeout")
    assert held < 4.0, held
    assert node.snapshot() == before
    history = node.history()
    assert len(history) == n + 1
    assert history[-1]["code"] == "body_timeout" and history[-1]["action"] == "activate"
    # twin: the same body at once is accepted
    held, answer = exchange(node.port, head + body)
    assert answer is not None and answer[0] == 200, answer


def test_stalled_body_and_a_slow_one_above_the_rate(make_agent) -> None:
    """body_min_rate is a floor, not a deadline: a body above it is never cut however long
    it takes, one that stops is cut within two windows."""
    agent = limited_agent(make_agent, body_min_rate=10)  # 10 B/s over each 1 s window
    body = json.dumps({"version": "1.0.0", "reason": "r" * 40}).encode()  # ~70 bytes
    head = request_head("POST", "/v1/plugins/greeter/activate",
                        {"Authorization": AUTH, "Content-Type": "application/json",
                         "Content-Length": str(len(body))})
    held, answer = exchange(agent.port, head, body, interval=0.04)  # 25 B/s: ~2.8 s
    assert held > 2.0 and code_of(answer) == (404, "not_stored"), (held, answer)
    held, answer = exchange(agent.port, head + body[:30])  # then nothing
    assert code_of(answer) == (408, "body_timeout") and held < 3.5, (held, answer)


def test_client_that_stops_reading_the_answer_is_dropped(node) -> None:
    """The answer is ~10 MB (10,000 history records); a client that asks and never reads
    is dropped body_timeout after the send buffer filled. Its twin reads it whole."""
    history = node.data_dir / "plugins" / "greeter" / "history.jsonl"
    record = json.dumps({"action": "note", "result": "padding", "pad": "p" * 1000})
    with open(history, "a") as fh:
        fh.write((record + "\n") * 10000)
    head = request_head("GET", "/v1/plugins/greeter/history?limit=10000",
                        {"Authorization": AUTH})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", node.port))
    got, ended = b"", False
    try:
        sock.sendall(head)
        time.sleep(3.0)  # not reading: the agent's send buffer fills, then 1 s more
        while len(got) < 20 * 1024 * 1024:
            chunk = sock.recv(1 << 20)
            if not chunk:
                ended = True
                break
            got += chunk
    except (ConnectionResetError, TimeoutError) as exc:
        ended = isinstance(exc, ConnectionResetError)
    finally:
        sock.close()
    assert ended, "the connection was still open"
    declared = int(got.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
    assert len(got.partition(b"\r\n\r\n")[2]) < declared
    response = requests.get(f"{node.url}/v1/plugins/greeter/history?limit=10000",
                            headers={"Authorization": AUTH}, timeout=30)
    assert response.status_code == 200 and len(response.json()["records"]) == 10000


# --- the token before the body --------------------------------------------------------------


JSON_ROUTES = ["/v1/plugins/greeter/activate", "/v1/plugins/greeter/rollback",
               "/v1/plugins/greeter/advisories", "/v1/plugins/greeter/approvals"]
BODIES = {  # what follows the head, the declared length, the answer with a valid token
    "malformed JSON": (b'{"version": ', 12, (422, "bad_request")),
    "oversize": (b"", 2 * 1024 * 1024, (413, "too_large")),
    "never sent": (b"", 100, (408, "body_timeout")),
}


@pytest.fixture(scope="module")
def plain_agent(tmp_path_factory):
    from hotrelease.trust.keys import generate_keypair

    root = tmp_path_factory.mktemp("limits-agent")
    generate_keypair(root / "release")
    port = free_port()
    agent = AgentProcess(root, with_limits(agent_toml(root / "data", port,
                                                      [root / "release.pub"])), port)
    agent.start()
    yield agent
    agent.stop()


@pytest.mark.parametrize("kind", list(BODIES))
@pytest.mark.parametrize("path", JSON_ROUTES)
def test_without_a_token_any_body_gets_401_before_it_is_read(plain_agent, path, kind) -> None:
    sent, declared, with_token = BODIES[kind]
    before, n = plain_agent.snapshot(), len(plain_agent.history())
    headers = {"Content-Type": "application/json", "Content-Length": str(declared)}
    held, answer = exchange(plain_agent.port, request_head("POST", path, headers) + sent)
    assert code_of(answer) == (401, "unauthorized") and held < 0.9, (held, answer)
    assert answer is not None and answer[1]["www-authenticate"] == "Bearer"
    assert plain_agent.snapshot() == before and len(plain_agent.history()) == n
    # twin: the same request with a token gets as far as the body
    head = request_head("POST", path, {**headers, "Authorization": AUTH})
    _, answer = exchange(plain_agent.port, head + sent)
    assert code_of(answer) == with_token


def test_upload_without_a_token_gets_401_before_its_body(plain_agent) -> None:
    head = request_head("PUT", "/v1/plugins/greeter/releases/1.0.0",
                        {"Content-Length": str(128 * 1024 * 1024)})
    held, answer = exchange(plain_agent.port, head)
    assert code_of(answer) == (401, "unauthorized") and held < 0.9
    head = request_head("PUT", "/v1/plugins/greeter/releases/1.0.0",
                        {"Content-Length": str(128 * 1024 * 1024), "Authorization": AUTH})
    _, answer = exchange(plain_agent.port, head)  # twin: with a token, the size is judged
    assert code_of(answer) == (413, "too_large")


# --- connections ----------------------------------------------------------------------------


def open_keep_alive(port: int, count: int) -> list[socket.socket]:
    """`count` connections, each answered once (so the agent has accepted it) and kept."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(request_head("GET", "/v1/health", {}))
        got = b""
        while parse(got) is None:
            chunk = sock.recv(4096)
            assert chunk, "an accepted connection was closed"
            got += chunk
        assert parse(got)[0] == 200  # type: ignore[index]
        socks.append(sock)
    return socks


def assert_refused_at_once(port: int, cap: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    start = time.monotonic()
    got = b""
    try:
        while parse(got) is None:  # nothing sent: the answer comes at connect
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += chunk
    finally:
        sock.close()
    answer = parse(got)
    assert code_of(answer) == (503, "too_many_connections"), got
    assert answer is not None
    assert answer[1]["retry-after"] == "1" and str(cap) in answer[2]["error"]["message"]
    assert time.monotonic() - start < 1.0


def test_connection_cap_refuses_the_excess_at_once_and_health_answers_under_it(
        make_agent) -> None:
    agent = limited_agent(make_agent, max_connections=20, keep_alive_timeout=30)
    socks = open_keep_alive(agent.port, 20)
    try:
        assert_refused_at_once(agent.port, 20)
        response = requests.get(f"{agent.url}/v1/health", timeout=5)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "too_many_connections"
        socks.pop().close()  # twin: one under the cap again -> health answers
        wait_until(lambda: requests.get(f"{agent.url}/v1/health", timeout=5).status_code
                   == 200, 5, "health under the cap")
    finally:
        for sock in socks:
            sock.close()


def test_open_file_limit_lowers_the_connection_cap(make_agent) -> None:
    """An agent whose open-file limit cannot hold max_connections (2048 by default) lowers
    the cap to fit (keeping 256 descriptors), says so, and refuses past it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1024:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1024), hard))
    agent = make_agent(start=False)
    text = with_limits(agent.config.read_text(), keep_alive_timeout=30)
    agent.config.write_text(text)

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (600, 600))

    agent.proc = subprocess.Popen(  # AgentProcess.start, under a low open-file limit
        [sys.executable, "-m", "hotrelease", "agent", "serve", "--config", str(agent.config)],
        stdout=subprocess.DEVNULL, stderr=open(agent.log, "ab"),  # noqa: SIM115
        start_new_session=True, preexec_fn=low_limit)
    agent.wait_ready()
    log = agent.log.read_text()
    assert "max_connections 2048 lowered to 344: the open-file limit is 600" in log, log
    socks = open_keep_alive(agent.port, 344)
    try:
        assert_refused_at_once(agent.port, 344)
    finally:
        for sock in socks:
            sock.close()
    wait_until(lambda: requests.get(f"{agent.url}/v1/health", timeout=5).status_code == 200,
               5, "health under the cap")


def test_graceful_stop_is_bounded_by_shutdown_timeout(make_agent) -> None:
    """A request still arriving (slowly, above body_min_rate) does not hold a stopping
    agent longer than shutdown_timeout."""
    agent = limited_agent(make_agent, shutdown_timeout=1.0, body_min_rate=1)
    body = json.dumps({"version": "1.0.0", "reason": "r" * 400}).encode()
    head = request_head("POST", "/v1/plugins/greeter/activate",
                        {"Authorization": AUTH, "Content-Type": "application/json",
                         "Content-Length": str(len(body))})
    thread = threading.Thread(target=exchange, args=(agent.port, head, body),
                              kwargs={"give_up": 12})
    thread.start()
    try:
        time.sleep(0.5)
        assert agent.proc is not None
        start = time.monotonic()
        agent.proc.send_signal(signal.SIGTERM)
        agent.wait_exit(timeout=8)
        assert time.monotonic() - start < 4.0
    finally:
        thread.join(15)


# --- config -----------------------------------------------------------------------------------


def _config(tmp_path: Path, agent_lines: str = "") -> Path:
    from hotrelease.trust.keys import generate_keypair

    tmp_path.mkdir(parents=True, exist_ok=True)
    generate_keypair(tmp_path / "k")
    path = tmp_path / "agent.toml"
    text = agent_toml(tmp_path / "data", 7701, [tmp_path / "k.pub"])
    path.write_text(text.replace("[agent]\n", f"[agent]\n{agent_lines}", 1))
    return path


def test_http_limits_defaults_and_configured_values(tmp_path: Path) -> None:
    assert load_agent_config(_config(tmp_path / "a")).http_limits == DEFAULT_HTTP_LIMITS
    lines = "".join(f"{k} = {v}\n" for k, v in LIMITS.items())
    limits = load_agent_config(_config(tmp_path / "b", lines)).http_limits
    assert limits.max_header_bytes == 16384 and limits.header_timeout == 1.0
    assert limits.body_timeout == 1.0 and limits.body_min_rate == 1024
    assert limits.keep_alive_timeout == 1.0 and limits.shutdown_timeout == 2.0
    assert limits.max_connections == DEFAULT_HTTP_LIMITS.max_connections


@pytest.mark.parametrize("line,where", [
    ("max_header_bytes = 100", "agent -> max_header_bytes: expected an integer >= 4096"),
    ('header_timeout = "1s"', "agent -> header_timeout: expected a number"),
    ("body_timeout = nan", "agent -> body_timeout: expected a number of seconds <= 3600"),
    ("keep_alive_timeout = inf", "agent -> keep_alive_timeout: expected a number of seconds"),
    ("max_connections = 0", "agent -> max_connections: expected an integer >= 1"),
    ("body_min_rate = -1", "agent -> body_min_rate: expected an integer >= 0"),
    ("shutdown_timeout = -1", "agent -> shutdown_timeout: expected a number >= 0"),
    ("max_header_size = 9000", "agent -> max_header_size: unknown key"),
])
def test_http_limit_errors_name_file_and_key(tmp_path: Path, line: str, where: str) -> None:
    path = _config(tmp_path, line + "\n")
    with pytest.raises(ConfigError) as info:
        load_agent_config(path)
    assert f"{path}: {where}" in str(info.value), str(info.value)
