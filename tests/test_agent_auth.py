"""Auth: the 401 matrix, tokens stored hashed, TLS + mTLS refused at the handshake,
and the agent's config errors."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import ssl
from pathlib import Path

import pytest
import requests
from conftest import AGENT_TOKEN, AGENT_TOKEN_2

from hotrelease.agent.auth import authenticate, hash_token
from hotrelease.agent.config import load_agent_config
from hotrelease.errors import ConfigError, Unauthorized

BAD_AUTH = {
    "missing": None,
    "empty bearer": "Bearer ",
    "bearer no space": "Bearer",
    "wrong": "Bearer wrong-token-0123456789abcdef",
    "prefix of real": "Bearer " + AGENT_TOKEN[:-1],
    "real plus suffix": "Bearer " + AGENT_TOKEN + "x",
    "other scheme": "Basic " + AGENT_TOKEN,
    "token only": AGENT_TOKEN,
    "non-ascii": "Bearer " + AGENT_TOKEN[:-1] + "\u00e9",
    "the hash itself": "Bearer " + hash_token(AGENT_TOKEN),
}

ROUTES = [("GET", "/v1/plugins", None), ("GET", "/v1/plugins/greeter", None),
          ("GET", "/v1/plugins/greeter/history", None),
          ("PUT", "/v1/plugins/greeter/releases/1.0.0", b"x"),
          ("POST", "/v1/plugins/greeter/activate", b'{"version": "1.0.0"}'),
          ("POST", "/v1/plugins/greeter/rollback", b"{}"),
          ("POST", "/v1/plugins/greeter/advisories", b"{}")]


def raw_request(port: int, method: str, path: str, auth: str | None, body: bytes | None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        conn.putrequest(method, path)
        conn.putheader("Authorization", auth.encode("latin-1"))
        for key, value in headers.items():
            conn.putheader(key, value)
        conn.putheader("Content-Length", str(len(body or b"")))
        conn.endheaders(body)
    else:
        conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    result = response.status, response.getheader("WWW-Authenticate"), response.read()
    conn.close()
    return result


@pytest.fixture(scope="module")
def one_agent(tmp_path_factory):
    """One agent for the whole matrix (module scope: 70 requests, one process)."""
    import os
    import subprocess
    import sys

    from conftest import AgentProcess, agent_toml, free_port

    from hotrelease.trust.keys import generate_keypair

    root = tmp_path_factory.mktemp("authagent")
    generate_keypair(root / "release")
    port = free_port()
    agent = AgentProcess(root, agent_toml(root / "data", port, [root / "release.pub"]), port)
    agent.start()
    yield agent
    agent.stop()
    del os, subprocess, sys


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r[0]} {r[1]}")
def test_every_bad_token_gets_the_same_401(one_agent, route) -> None:
    method, path, body = route
    answers = set()
    for auth in BAD_AUTH.values():
        status, challenge, payload = raw_request(one_agent.port, method, path, auth, body)
        assert status == 401, (auth, payload)
        assert challenge == "Bearer"
        answers.add(payload)
    assert answers == {json.dumps({"error": {
        "code": "unauthorized", "message": "missing or invalid bearer token"}},
        separators=(",", ":")).encode()}
    # nothing about these requests reached a plugin's history
    assert one_agent.history() == []


def test_valid_tokens_pass_and_are_named_in_history(one_agent) -> None:
    status, _, payload = raw_request(one_agent.port, "GET", "/v1/plugins",
                                     f"Bearer {AGENT_TOKEN}", None)
    assert status == 200 and json.loads(payload)["plugins"][0]["name"] == "greeter"
    status, _, _ = raw_request(one_agent.port, "POST", "/v1/plugins/greeter/rollback",
                               f"bearer {AGENT_TOKEN_2}", b"{}")
    assert status == 409  # authenticated; nothing to roll back
    assert one_agent.history()[-1]["who"] == "ops"


def test_health_and_openapi_need_no_token(one_agent) -> None:
    assert requests.get(f"{one_agent.url}/v1/health", timeout=5).json()["ok"] is True
    doc = requests.get(f"{one_agent.url}/v1/openapi.json", timeout=5).json()
    assert "/v1/plugins/{name}/activate" in doc["paths"]


def test_authenticate_unit() -> None:
    from hotrelease.agent.auth import TokenEntry

    tokens = [TokenEntry("a", hash_token("token-aaaaaaaaaaaaaaaa")),
              TokenEntry("b", hash_token("token-bbbbbbbbbbbbbbbb"))]
    assert authenticate("Bearer token-bbbbbbbbbbbbbbbb", tokens) == "b"
    for bad in (None, "", "Bearer ", "Bearer token-aaaa", "Bearer token-aaaaaaaaaaaaaaaa\u00e9"):
        with pytest.raises(Unauthorized):
            authenticate(bad, tokens)
    # the empty token never matches, even if someone configured its hash
    with pytest.raises(Unauthorized):
        authenticate("Bearer ", [TokenEntry("empty", hash_token(""))])


# --- TLS and mTLS -------------------------------------------------------------------------------


def _ca(name: str):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca, name: str, *, server: bool):
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(hours=1))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.ExtendedKeyUsage(
                   [ExtendedKeyUsageOID.SERVER_AUTH if server
                    else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _write(directory: Path, stem: str, pair) -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization

    key, cert = pair
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


@pytest.fixture
def pki(tmp_path: Path):
    from cryptography.hazmat.primitives import serialization

    d = tmp_path / "pki"
    d.mkdir()
    ca, other_ca = _ca("hotrelease test CA"), _ca("someone else's CA")
    (d / "ca.crt").write_bytes(ca[1].public_bytes(serialization.Encoding.PEM))
    return {"ca": str(d / "ca.crt"),
            "server": _write(d, "server", _leaf(ca, "agent", server=True)),
            "client": _write(d, "client", _leaf(ca, "publisher", server=False)),
            "stranger": _write(d, "stranger", _leaf(other_ca, "publisher", server=False))}


def _mtls_agent(make_agent, pki, *, client_ca: bool):
    ca_line = f'client_ca = "{pki["ca"]}"\n' if client_ca else ""
    extra = f'[tls]\ncert = "{pki["server"][0]}"\nkey = "{pki["server"][1]}"\n{ca_line}'
    agent = make_agent(start=False, extra=extra, scheme="https")
    agent.ready_kwargs = {"verify": pki["ca"], "cert": pki["client"]}
    return agent.start()


def test_mtls_requires_a_client_cert_from_our_ca(make_agent, pki) -> None:
    agent = _mtls_agent(make_agent, pki, client_ca=True)
    url = f"{agent.url}/v1/health"
    ok = requests.get(url, verify=pki["ca"], cert=pki["client"], timeout=5)
    assert ok.status_code == 200  # twin: a cert from our CA passes
    for cert in (None, pki["stranger"]):
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(url, verify=pki["ca"], cert=cert, timeout=5)
    # refused in the TLS handshake itself, not by an HTTP answer
    for cert in (None, pki["stranger"]):
        context = ssl.create_default_context(cafile=pki["ca"])
        if cert:
            context.load_cert_chain(*cert)
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            conn = http.client.HTTPSConnection("127.0.0.1", agent.port, context=context,
                                               timeout=5)
            try:
                conn.request("GET", "/v1/health")
                conn.getresponse()
            finally:
                conn.close()
    # a client cert does not replace the token
    r = requests.get(f"{agent.url}/v1/plugins", verify=pki["ca"], cert=pki["client"],
                     timeout=5)
    assert r.status_code == 401
    client = agent.client(verify=pki["ca"], cert=pki["client"])
    assert client.plugins()[0]["name"] == "greeter"


def test_tls_without_client_ca_serves_https(make_agent, pki) -> None:
    agent = _mtls_agent(make_agent, pki, client_ca=False)
    assert requests.get(f"{agent.url}/v1/health", verify=pki["ca"], timeout=5).ok
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{agent.port}/v1/health", timeout=5)


# --- config and CLI ------------------------------------------------------------------------------


def _config(tmp_path: Path, text: str) -> Path:
    from hotrelease.trust.keys import generate_keypair

    if not (tmp_path / "k.pub").exists():
        generate_keypair(tmp_path / "k")
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


GOOD = f"""[agent]
data_dir = "data"
[trust]
release_keys = ["k.pub"]
[[tokens]]
name = "ci"
sha256 = "{hash_token(AGENT_TOKEN)}"
[plugins.greeter]
reload = {{ command = ["true"] }}
health = {{ url = "http://127.0.0.1:9/health" }}
"""


def test_config_loads_and_resolves_paths(tmp_path: Path) -> None:
    cfg = load_agent_config(_config(tmp_path, GOOD))
    assert cfg.data_dir == tmp_path / "data"
    assert cfg.plugins["greeter"].reload.kind == "command"
    assert cfg.plugins["greeter"].health.require_version is True
    assert cfg.port == 7701 and cfg.listen == "127.0.0.1"


@pytest.mark.parametrize("change,where", [
    (("[agent]\n", "[agent]\ntreshold = 1\n"), "agent -> treshold: unknown key"),
    (('sha256 = "', 'sha256 = "x'), "tokens[0] -> sha256"),
    (('release_keys = ["k.pub"]', 'release_keys = ["nope.pub"]'), "trust -> release_keys"),
    (("[plugins.greeter]\n", "[plugins.Bad]\n"), "plugins -> Bad"),
    (("health = {", "health = { colour = 1,"), "plugins -> greeter -> health -> colour"),
    (('reload = { command = ["true"] }', 'reload = { command = ["true"], url = "http://x" }'),
     "plugins -> greeter -> reload -> url"),
])
def test_config_errors_name_the_key(tmp_path: Path, change, where) -> None:
    with pytest.raises(ConfigError, match=where.replace("[", r"\[").replace("]", r"\]")):
        load_agent_config(_config(tmp_path, GOOD.replace(*change)))


def test_serve_with_bad_config_exits_2(cli, tmp_path: Path) -> None:
    path = _config(tmp_path, GOOD.replace("[agent]\n", "[agent]\nport = \"x\"\n"))
    result = cli("agent", "serve", "--config", path)
    assert result.code == 2 and "agent -> port" in result.error_line


def test_hash_token_command(cli) -> None:
    result = cli("agent", "hash-token", "--name", "deploy", "--json")
    doc = json.loads(result.stdout)
    assert result.code == 0 and doc["name"] == "deploy"
    assert doc["sha256"] == hash_token(doc["token"]) and len(doc["token"]) > 32
    given = cli("agent", "hash-token", "--token", AGENT_TOKEN)
    assert f'sha256 = "{hash_token(AGENT_TOKEN)}"' in given.stdout
    short = cli("agent", "hash-token", "--token", "short")
    assert short.code == 2
