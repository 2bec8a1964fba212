"""Hostile input, built for real and sent to a real agent over loopback (and to the CLI):
over-long names and versions, deeply nested JSON, duplicate keys in signed documents, bytes
that are not JSON. Every refusal is a 4xx with a stable code, is recorded in history where the
agent records refusals (upload headers, path parameters, version fields: yes; a request body
that is not strict JSON is refused before the token is looked at: no record), leaves the data
dir byte-identical except history, and has an accepted twin."""

from __future__ import annotations

import base64
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import (
    AGENT_TOKEN,
    craft_release,
    node_snapshot,
    raw_upload,
    read_history,
    with_active_release,
)

from hotrelease.errors import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, VersionError
from hotrelease.trust.canonical import MAX_JSON_DEPTH, JSONInputError, pretty_bytes, strict_loads
from hotrelease.trust.keys import MANIFEST_TYPE, Envelope, load_private_key
from hotrelease.trust.manifest import MAX_NAME_LENGTH, check_name, check_version
from hotrelease.trust.versions import MAX_VERSION_LENGTH, parse_version

# --- helpers ------------------------------------------------------------------------------


def long_version(length: int) -> str:
    """A valid SemVer 2.0.0 version of exactly `length` characters."""
    return "1.1.0-" + "a" * (length - len("1.1.0-"))


def nested(depth: int) -> list:
    """`depth` nested JSON arrays: nested(1) == [], nested(2) == [[]]."""
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def deep_text(depth: int) -> str:
    """The same as JSON text, for depths Python's own json module cannot even write."""
    return "[" * depth + "]" * depth


def fill(template: str, *parts: str) -> str:
    """`template` with each `@` replaced by the next part (JSON text built by hand)."""
    pieces = template.split("@")
    assert len(pieces) == len(parts) + 1
    return "".join(p for pair in zip(pieces, [*parts, ""], strict=True) for p in pair)


def dup_first(text: str, key: str, value: object) -> str:
    """Give the first JSON object in `text` an earlier occurrence of `key` (last-wins parsers
    keep the later, signed one; first-wins readers see this one)."""
    at = text.index("{") + 1
    return f'{text[:at]}"{key}": {json.dumps(value)}, {text[at:]}'


def sign_raw(doc: dict, key: Path) -> bytes:
    """Sign a manifest document the way the signer did before the depth limit (plain sorted
    compact JSON), so a validly signed document reaches the agent's checks."""
    payload = json.dumps(doc, sort_keys=True, separators=(",", ":"),
                         ensure_ascii=False).encode()
    envelope = Envelope(MANIFEST_TYPE)
    envelope.add_signature(payload, load_private_key(key))
    return pretty_bytes(envelope.to_dict())


def post(agent, path: str, body: bytes | str, *, content_type: str = "application/json"):
    data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    return requests.post(f"{agent.url}{path}", data=data, timeout=30, headers={
        "Authorization": f"Bearer {AGENT_TOKEN}", "Content-Type": content_type})


def get(agent, path: str):
    return requests.get(f"{agent.url}{path}", timeout=30,
                        headers={"Authorization": f"Bearer {AGENT_TOKEN}"})


def agent_history(agent) -> list[dict]:
    path = agent.data_dir / "agent-history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class Watch:
    """Snapshot the node, then check a refusal against it."""

    def __init__(self, agent, name: str = "greeter") -> None:
        self.agent, self.name = agent, name
        self.before = node_snapshot(agent.data_dir)
        self.history = len(read_history(agent.data_dir, name))
        self.agent_history = len(agent_history(agent))

    def refused(self, response, status: int, code: str, *, recorded: bool = True,
                where: str = "plugin") -> dict:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["code"] == code and error["message"], error
        assert len(error["message"]) < 1000, "the refusal echoes the hostile input"
        assert node_snapshot(self.agent.data_dir) == self.before, "a refusal changed the node"
        history = read_history(self.agent.data_dir, self.name)
        others = agent_history(self.agent)
        if not recorded:
            assert len(history) == self.history and len(others) == self.agent_history
            return {}
        if where == "plugin":
            assert len(history) == self.history + 1
            record = history[-1]
        else:
            assert len(others) == self.agent_history + 1 and len(history) == self.history
            record = others[-1]
        assert record["result"] == "refused" and record["code"] == code
        assert record["who"] == "ci"
        assert len(json.dumps(record)) < 2000, "the history record holds the hostile input"
        return record


def stored(agent, version: str) -> Path:
    return agent.data_dir / "releases" / "greeter" / version


def assert_stored(agent, release, response) -> None:
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "stored"
    assert (stored(agent, release.version) / "files" / "plugin.py").is_file()
    assert read_history(agent.data_dir)[-1]["result"] == "stored"


def upload_twin(agent, release) -> None:
    assert_stored(agent, release, raw_upload(agent, "greeter", release.version,
                                             release.manifest, release.signature,
                                             release.bundle))


@pytest.fixture
def security_key(make_key):
    return make_key("security")


@pytest.fixture
def node(make_agent, build_plugin, security_key):
    """greeter 1.0.0 stored and active, a signed 1.1.0 ready to upload; security keys set."""
    agent = make_agent(plugins="[plugins.greeter]\n[plugins.other]\n", max_upload=64 * 1024,
                       security_keys=[security_key.public])
    return with_active_release(agent, build_plugin)


def manifest_doc(release) -> dict:
    return json.loads(release.manifest.read_bytes())


# --- the strict loader itself ---------------------------------------------------------------


@pytest.mark.parametrize("text,problem", [
    ('{"a": 1, "a": 2}', "duplicate key 'a'"),
    ('{"x": [{"b": {"c": 1, "c": 1}}]}', "duplicate key 'c'"),
    (deep_text(MAX_JSON_DEPTH + 1), "nested deeper than"),
    (deep_text(100_000), "nested deeper than"),
    ('{"a": NaN}', "NaN"), ('[Infinity]', "Infinity"),
    (b'{"a": "\xff"}', "UTF-8"),
    ('{"a": "\\ud800"}', "surrogate"),
    ('{"\\udfff": 1}', "surrogate"),
    ('{"a": 1', "not valid JSON"),
    ("1" * 5000, "not valid JSON"),
], ids=["dup", "nested dup", "depth+1", "depth 100000", "NaN", "Infinity", "not UTF-8",
        "surrogate value", "surrogate key", "truncated", "huge int"])
def test_strict_loads_refuses(text, problem) -> None:
    with pytest.raises(JSONInputError, match=problem):
        strict_loads(text)


def test_strict_loads_accepts_the_twins() -> None:
    assert strict_loads('{"a": 1, "b": {"a": 2}}') == {"a": 1, "b": {"a": 2}}
    assert strict_loads(deep_text(MAX_JSON_DEPTH)) == nested(MAX_JSON_DEPTH)
    assert strict_loads('{"a": "\\ud83d\\ude00 \u00e9"}'.encode()) == {"a": "\U0001f600 \u00e9"}
    assert strict_loads(b'[1.5, -2, "x"]') == [1.5, -2, "x"]


# --- 2. lengths of names and versions -----------------------------------------------------------


def test_one_length_check_for_names_and_versions() -> None:
    assert parse_version(long_version(MAX_VERSION_LENGTH))
    for length in (MAX_VERSION_LENGTH + 1, 300, 100_000):
        with pytest.raises(VersionError, match=f"longer than {MAX_VERSION_LENGTH}"):
            parse_version(long_version(length))
    assert check_version(long_version(MAX_VERSION_LENGTH))
    assert check_name("a" * MAX_NAME_LENGTH)
    with pytest.raises(Exception, match="is invalid"):
        check_name("greeter\n")  # `$` in a pattern matches before a final newline
    for length in (MAX_NAME_LENGTH + 1, 100_000):
        with pytest.raises(Exception, match=f"longer than {MAX_NAME_LENGTH}") as info:
            check_name("a" * length)
        assert len(str(info.value)) < 300


@pytest.mark.parametrize("length", [MAX_VERSION_LENGTH + 1, 256, 300, 3000])
def test_overlong_signed_version_is_refused(node, tmp_path, length) -> None:
    """A validly signed manifest with a valid but over-long SemVer version, uploaded to the
    matching URL (400 bad_version: the path parameter is checked first) and to the URL of a
    normal version (422 bad_manifest: the manifest's own check)."""
    version = long_version(length)
    crafted = craft_release(node.next, tmp_path / "long", mutate=lambda d: d.update(
        version=version))
    watch = Watch(node)
    response = raw_upload(node, "greeter", version, crafted.manifest, crafted.signature,
                          crafted.bundle)
    watch.refused(response, 400, "bad_version")
    watch = Watch(node)
    response = raw_upload(node, "greeter", "1.1.0", crafted.manifest, crafted.signature,
                          crafted.bundle)
    watch.refused(response, 422, "bad_manifest")
    # twin: the longest allowed version is stored
    twin_version = long_version(MAX_VERSION_LENGTH)
    twin = craft_release(node.next, tmp_path / "twin", mutate=lambda d: d.update(
        version=twin_version))
    response = raw_upload(node, "greeter", twin_version, twin.manifest, twin.signature,
                          twin.bundle)
    assert response.status_code == 201, response.text
    assert (stored(node, twin_version) / "files" / "plugin.py").is_file()


@pytest.mark.parametrize("length", [MAX_VERSION_LENGTH + 1, 256, 300])
@pytest.mark.parametrize("action", ["activate", "rollback"])
def test_overlong_version_in_a_request_body(node, length, action) -> None:
    watch = Watch(node)
    response = post(node, f"/v1/plugins/greeter/{action}",
                    json.dumps({"version": long_version(length)}))
    record = watch.refused(response, 400, "bad_version")
    assert len(record["version"]) <= MAX_VERSION_LENGTH + 3  # clipped, not the whole input
    upload_twin(node, node.next)
    response = post(node, f"/v1/plugins/greeter/{action}", json.dumps({"version": "1.1.0"}))
    assert response.status_code == 200, response.text
    assert response.json()["current"] == "1.1.0"


@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/plugins/{name}"), ("GET", "/v1/plugins/{name}/history"),
    ("GET", "/v1/plugins/{name}/releases/1.1.0"), ("PUT", "/v1/plugins/{name}/releases/1.1.0"),
    ("POST", "/v1/plugins/{name}/activate"),
])
@pytest.mark.parametrize("length", [MAX_NAME_LENGTH + 1, 5000])
def test_overlong_name_in_the_url(node, method, path, length) -> None:
    watch = Watch(node)
    url = f"{node.url}{path.format(name='g' * length)}"
    headers = {"Authorization": f"Bearer {AGENT_TOKEN}"}
    if method == "PUT":
        headers.update({
            "X-Hotrelease-Manifest": base64.b64encode(node.next.manifest.read_bytes()).decode(),
            "X-Hotrelease-Signature": base64.b64encode(
                node.next.signature.read_bytes()).decode()})
    response = requests.request(method, url, headers=headers, timeout=30,
                                data=node.next.bundle.read_bytes() if method == "PUT" else None,
                                json={"version": "1.1.0"} if method == "POST" else None)
    record = watch.refused(response, 400, "bad_name", where="agent")
    assert len(record["plugin"]) <= MAX_NAME_LENGTH + 3  # clipped, not the whole input
    upload_twin(node, node.next)


@pytest.mark.parametrize("version", [long_version(MAX_VERSION_LENGTH + 1), "x" * 300,
                                     long_version(3000), "%2E%2E"],
                         ids=["max+1", "300 x", "3000", "dotdot"])
def test_bad_version_in_the_url_of_a_read(node, version) -> None:
    watch = Watch(node)
    response = get(node, f"/v1/plugins/greeter/releases/{version}")
    watch.refused(response, 400, "bad_version")
    twin = get(node, "/v1/plugins/greeter/releases/1.0.0")
    assert twin.status_code == 200 and twin.json()["version"] == "1.0.0"
    assert get(node, "/v1/plugins/greeter/releases/1.1.0").json()["error"]["code"] == \
        "not_stored"


def _bundle_next_to(crafted, release) -> None:
    shutil.copy(release.bundle, crafted.manifest.parent / release.bundle.name)


def test_cli_verify_refuses_an_overlong_version(cli, build_plugin, tmp_path) -> None:
    release = build_plugin("1.1.0")
    crafted = craft_release(release, tmp_path / "long", mutate=lambda d: d.update(
        version=long_version(MAX_VERSION_LENGTH + 1)))
    _bundle_next_to(crafted, release)
    result = cli("verify", crafted.manifest, "--trusted", release.key.public)
    assert result.code == EXIT_REFUSED, result.stderr
    assert f"longer than {MAX_VERSION_LENGTH}" in result.error_line
    twin = craft_release(release, tmp_path / "twin", mutate=lambda d: d.update(
        version=long_version(MAX_VERSION_LENGTH)))
    _bundle_next_to(twin, release)
    assert cli("verify", twin.manifest, "--trusted", release.key.public).code == EXIT_OK


def test_cli_build_refuses_an_overlong_version(cli, plugin_repo, tmp_path) -> None:
    config = plugin_repo.path / "hotrelease.toml"
    result = cli("build", "-c", config, "--version", long_version(300), "--out",
                 tmp_path / "long")
    assert result.code == EXIT_USAGE, result.stderr
    assert f"longer than {MAX_VERSION_LENGTH}" in result.error_line
    assert not (tmp_path / "long").exists() or not list((tmp_path / "long").iterdir())
    result = cli("build", "-c", config, "--version", long_version(MAX_VERSION_LENGTH),
                 "--out", tmp_path / "twin")
    assert result.code == EXIT_OK, result.stderr


# --- 3. deeply nested JSON ------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 600, 5000, 60_000])
def test_deeply_nested_manifest_header(node, tmp_path, depth) -> None:
    doc = manifest_doc(node.next)
    if depth < 900:  # Python can still write and sign it: a validly signed document
        doc["provenance"]["deep"] = nested(depth - 2)  # manifest 1, provenance 2
        manifest = json.dumps(doc).encode()
        signature = sign_raw(doc, node.next.key.private)
    else:  # beyond what any encoder writes: text, with the real signature
        doc["provenance"]["deep"] = "@DEEP@"
        manifest = json.dumps(doc).replace('"@DEEP@"', deep_text(depth - 2)).encode()
        signature = node.next.signature.read_bytes()
    watch = Watch(node)
    response = raw_upload(node, "greeter", "1.1.0", manifest, signature, node.next.bundle)
    watch.refused(response, 422, "bad_manifest")
    # twin: nesting at the limit, validly signed, is stored
    twin = craft_release(node.next, tmp_path / "twin", mutate=lambda d: d["provenance"].update(
        deep=nested(MAX_JSON_DEPTH - 2)))
    upload_twin(node, twin)


@pytest.mark.parametrize("text", [
    deep_text(5000),
    fill('{"format": "hotrelease/envelope/v1", "payload_type": "x", "signatures": @}',
         deep_text(60_000)),
    fill('{"format": "hotrelease/envelope/v1", "payload_type": "x", "signatures": @}',
         deep_text(MAX_JSON_DEPTH)),
], ids=["array 5000", "signatures 60000", "signatures max+1"])
def test_deeply_nested_signature_header(node, text) -> None:
    watch = Watch(node)
    response = raw_upload(node, "greeter", "1.1.0", node.next.manifest, text.encode(),
                          node.next.bundle)
    watch.refused(response, 422, "bad_signature")
    upload_twin(node, node.next)


def approval_doc(node, version: str = "1.1.0", **changes) -> dict:
    from hotrelease.trust.approvals import Approval
    from hotrelease.trust.manifest import load_manifest

    now = datetime.now(UTC).replace(microsecond=0)
    fields: dict[str, Any] = dict(
        name="greeter", version=version,
        bundle_sha256=load_manifest(node.next.manifest).bundle.sha256,
        stage="wave-1", approved_by="alice", approved_at=now - timedelta(minutes=1),
        expires=now + timedelta(hours=4), nodes=("node-1",))
    fields.update(changes)
    return Approval(**fields).to_dict()


def label_body(node, security_key) -> tuple[dict, dict]:
    from hotrelease.trust.labels import make_label, sign_label
    from hotrelease.trust.manifest import load_manifest

    label = make_label(name="greeter", version="1.1.0",
                       bundle_sha256=load_manifest(node.next.manifest).bundle.sha256,
                       advisory="CVE-2026-1234", severity="high",
                       now=datetime.now(UTC).replace(microsecond=0), expires_days=7)
    envelope, _ = sign_label(label, load_private_key(security_key.private))
    return label.to_dict(), envelope.to_dict()


def _twin(node, endpoint: str, security_key) -> None:
    """The accepted twin of a refused body, per endpoint."""
    if endpoint == "approvals":
        response = post(node, "/v1/plugins/greeter/approvals",
                        json.dumps({"approval": approval_doc(node)}))
        assert response.status_code == 200, response.text
        assert read_history(node.data_dir)[-1]["result"] == "recorded"
    elif endpoint == "advisories":
        label, envelope = label_body(node, security_key)
        response = post(node, "/v1/plugins/greeter/advisories",
                        json.dumps({"label": label, "envelope": envelope}))
        assert response.status_code == 200, response.text
        assert response.json()["floor"] == "1.1.0"
    elif endpoint == "activate":
        upload_twin(node, node.next)
        response = post(node, "/v1/plugins/greeter/activate",
                        json.dumps({"version": "1.1.0", "reason": "twin"}))
        assert response.status_code == 200 and response.json()["result"] == "activated"
    else:
        upload_twin(node, node.next)
        assert node.client().activate("greeter", "1.1.0")["result"] == "activated"
        response = post(node, "/v1/plugins/greeter/rollback", json.dumps({"reason": "twin"}))
        assert response.status_code == 200, response.text
        assert response.json()["current"] == "1.0.0"


def _deep_body(node, endpoint: str, depth: int, security_key) -> str:
    deep = deep_text(depth)
    if endpoint == "approvals":
        return fill('{"approval": {"format": "x", "nodes": @}, "envelope": {"a": @}}', deep,
                    deep)
    if endpoint == "advisories":
        label, envelope = label_body(node, security_key)
        return json.dumps({"label": label, "envelope": "@"}).replace(
            '"@"', fill('{"signatures": @}', deep))
    if endpoint == "activate":
        return fill('{"version": "1.0.0", "approval": {"approval": @}}', deep)
    return fill('{"reason": "x", "approval": {"envelope": @}}', deep)


ENDPOINTS = ["approvals", "advisories", "activate", "rollback"]


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, 500, 900, 100_000])
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_deeply_nested_json_body(node, security_key, endpoint, depth) -> None:
    body = _deep_body(node, endpoint, depth, security_key)
    watch = Watch(node)
    response = post(node, f"/v1/plugins/greeter/{endpoint}", body)
    watch.refused(response, 422, "bad_request", recorded=False)
    assert "nested deeper than" in response.json()["error"]["message"]
    _twin(node, endpoint, security_key)


_NOT_STRICT = {  # a JSON token (bytes) that strict JSON refuses
    "invalid UTF-8": b'"\xff\xfe"',
    "lone surrogate": b'"\\ud800"',
    "NaN": b"NaN",
    "huge integer": b"9" * 5000,
    "not JSON": b"{",
}


def _not_strict_body(node, endpoint: str, token: bytes, security_key) -> bytes:
    """The bad token in the field a document of this endpoint holds."""
    if endpoint == "approvals":
        body: dict[str, Any] = {"approval": {**approval_doc(node), "stage": "@"}}
    elif endpoint == "advisories":
        label, envelope = label_body(node, security_key)
        body = {"label": {**label, "advisory": "@"}, "envelope": envelope}
    elif endpoint == "activate":
        body = {"version": "1.1.0", "reason": "@"}
    else:
        body = {"reason": "@"}
    return json.dumps(body).encode().replace(b'"@"', token)


@pytest.mark.parametrize("case", sorted(_NOT_STRICT))
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_body_that_is_not_strict_json(node, security_key, endpoint, case) -> None:
    body = _not_strict_body(node, endpoint, _NOT_STRICT[case], security_key)
    watch = Watch(node)
    response = post(node, f"/v1/plugins/greeter/{endpoint}", body)
    watch.refused(response, 422, "bad_request", recorded=False)
    _twin(node, endpoint, security_key)


def test_deeply_nested_body_without_a_json_content_type(node) -> None:
    watch = Watch(node)
    response = post(node, "/v1/plugins/greeter/approvals", deep_text(100_000),
                    content_type="text/plain")
    watch.refused(response, 422, "bad_request", recorded=False)


# --- 4. duplicate keys in signed documents -----------------------------------------------------


_MANIFEST_DUPS = {
    "version": lambda t: dup_first(t, "version", "9.9.9"),
    "name": lambda t: dup_first(t, "name", "other"),
    "bundle.sha256": lambda t: t.replace('"bundle": {', '"bundle": {"sha256": "%s", '
                                         % ("0" * 64), 1),
    "files[0].path": lambda t: t.replace('"files": [\n    {', '"files": [{"path": "evil.py", ',
                                         1),
    "labels": lambda t: dup_first(t, "labels", {"team": "attacker"}),
}


@pytest.mark.parametrize("case", sorted(_MANIFEST_DUPS))
def test_duplicate_key_in_the_manifest_header(node, case) -> None:
    text = node.next.manifest.read_text()
    hostile = _MANIFEST_DUPS[case](text)
    assert hostile != text
    assert json.loads(hostile) == json.loads(text), "last-wins parsers see the signed document"
    watch = Watch(node)
    response = raw_upload(node, "greeter", "1.1.0", hostile.encode(), node.next.signature,
                          node.next.bundle)
    watch.refused(response, 422, "bad_manifest")
    assert "duplicate key" in response.json()["error"]["message"]
    upload_twin(node, node.next)


@pytest.mark.parametrize("key,value", [
    ("signatures", []), ("payload_type", "application/vnd.hotrelease.approval+json"),
    ("format", "hotrelease/envelope/v0"),
])
def test_duplicate_key_in_the_signature_header(node, key, value) -> None:
    hostile = dup_first(node.next.signature.read_text(), key, value)
    watch = Watch(node)
    response = raw_upload(node, "greeter", "1.1.0", node.next.manifest, hostile.encode(),
                          node.next.bundle)
    watch.refused(response, 422, "bad_signature")
    assert "duplicate key" in response.json()["error"]["message"]
    upload_twin(node, node.next)


def test_agent_stores_the_verified_document_not_the_uploaded_bytes(node) -> None:
    """Any spelling of the signed document is accepted (the signature covers the canonical
    form), but the release dir holds one rendering of the verified value, never the bytes
    as uploaded, so no reader of current/manifest.json can see anything else."""
    doc = manifest_doc(node.next)
    uploaded = json.dumps(dict(reversed(list(doc.items()))), separators=(" , ", " :  "),
                          ensure_ascii=True).encode()
    signature = json.loads(node.next.signature.read_bytes())
    uploaded_sig = ("\n\n" + json.dumps(dict(reversed(list(signature.items())))) + " ").encode()
    response = raw_upload(node, "greeter", "1.1.0", uploaded, uploaded_sig, node.next.bundle)
    assert_stored(node, node.next, response)
    release_dir = stored(node, "1.1.0")
    assert (release_dir / "manifest.json").read_bytes() == pretty_bytes(doc) != uploaded
    assert (release_dir / "manifest.json.sig").read_bytes() == pretty_bytes(signature)
    # which is what `hotrelease build` and `sign` write: the same bytes as the original upload
    assert (release_dir / "manifest.json").read_bytes() == node.next.manifest.read_bytes()
    assert (release_dir / "manifest.json.sig").read_bytes() == node.next.signature.read_bytes()
    response = node.client().activate("greeter", "1.1.0")
    assert response["result"] == "activated"


def _dup_body(node, endpoint: str, security_key) -> str:
    if endpoint == "approvals":
        doc = json.dumps(approval_doc(node))
        return fill('{"approval": @}', dup_first(doc, "stage", "all"))
    if endpoint == "advisories":
        label, envelope = label_body(node, security_key)
        return fill('{"label": @, "envelope": @}',
                    dup_first(json.dumps(label), "advisory", "CVE-2026-9999"),
                    json.dumps(envelope))
    if endpoint == "activate":
        return '{"version": "1.1.0", "version": "1.0.0"}'
    return '{"version": "1.0.0", "reason": "a", "reason": "b"}'


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_duplicate_key_in_a_json_body(node, security_key, endpoint) -> None:
    body = _dup_body(node, endpoint, security_key)
    if endpoint in ("activate", "rollback"):  # a state where the body would change the node
        upload_twin(node, node.next)
        if endpoint == "rollback":
            assert node.client().activate("greeter", "1.1.0")["result"] == "activated"
        else:
            body = '{"version": "9.9.9", "version": "1.1.0"}'
    watch = Watch(node)
    response = post(node, f"/v1/plugins/greeter/{endpoint}", body)
    watch.refused(response, 422, "bad_request", recorded=False)
    assert "duplicate key" in response.json()["error"]["message"]
    if endpoint == "activate":
        response = post(node, "/v1/plugins/greeter/activate", json.dumps({"version": "1.1.0"}))
        assert response.status_code == 200 and response.json()["result"] == "activated"
    elif endpoint == "rollback":
        response = post(node, "/v1/plugins/greeter/rollback", json.dumps({"version": "1.0.0"}))
        assert response.status_code == 200 and response.json()["current"] == "1.0.0"
    else:
        _twin(node, endpoint, security_key)


def test_duplicate_key_in_a_signed_approval_for_activation(make_agent, build_plugin,
                                                           make_key) -> None:
    """An agent with approver keys: the approval travels inside the activate body."""
    approver = make_key("approver")
    agent = make_agent(approval_keys=[approver.public])
    release = build_plugin("1.1.0")
    assert agent.client().upload(release.manifest)["status"] == "stored"
    agent.next = release
    doc = approval_doc(agent)
    from hotrelease.trust.approvals import Approval

    approval = Approval.from_dict(doc)
    envelope = approval.sign(load_private_key(approver.private)).to_dict()
    hostile = fill('{"version": "1.1.0", "approval": {"approval": @, "envelope": @}}',
                   dup_first(json.dumps(doc), "stage", "all"), json.dumps(envelope))
    watch = Watch(agent)
    response = post(agent, "/v1/plugins/greeter/activate", hostile)
    watch.refused(response, 422, "bad_request", recorded=False)
    twin = {"version": "1.1.0", "approval": {"approval": doc, "envelope": envelope}}
    response = post(agent, "/v1/plugins/greeter/activate", json.dumps(twin))
    assert response.status_code == 200, response.text
    assert response.json()["result"] == "activated"


def test_cli_verify_and_sign_refuse_duplicate_keys(cli, build_plugin, tmp_path) -> None:
    release = build_plugin("1.1.0")
    original = release.manifest.read_text()
    release.manifest.write_text(dup_first(original, "version", "9.9.9"))
    result = cli("verify", release.manifest, "--trusted", release.key.public)
    assert result.code == EXIT_REFUSED and "duplicate key 'version'" in result.error_line
    result = cli("sign", release.manifest, "--key", release.key.private)
    assert result.code == EXIT_REFUSED and "duplicate key 'version'" in result.error_line
    release.manifest.write_text(original)
    signature = release.signature.read_text()
    release.signature.write_text(dup_first(signature, "signatures", []))
    result = cli("verify", release.manifest, "--trusted", release.key.public)
    assert result.code == EXIT_REFUSED and "duplicate key 'signatures'" in result.error_line
    release.signature.write_text(signature)
    # twin: the same document re-spelled (other key order, white space) verifies
    release.manifest.write_text(json.dumps(dict(reversed(list(json.loads(original).items())))))
    assert cli("verify", release.manifest, "--trusted", release.key.public).code == EXIT_OK
