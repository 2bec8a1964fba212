"""Upload trust refusals against a real agent: each refusal leaves the node byte-identical,
is recorded in history, and has a passing twin."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import socket
import tarfile
from pathlib import Path

import pytest
from conftest import AGENT_TOKEN, craft_release, raw_upload, wait_until, with_active_release


@pytest.fixture
def node(make_agent, build_plugin):
    """An agent with greeter 1.0.0 stored and active, and a signed 1.1.0 ready to upload."""
    agent = make_agent(plugins="[plugins.greeter]\n[plugins.other]\n", max_upload=64 * 1024)
    return with_active_release(agent, build_plugin)


def assert_refused(agent, response, status: int, code: str, before: dict,
                   history_len: int, name: str = "greeter") -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]
    assert agent.snapshot() == before, "a refusal changed the node"
    history = agent.history(name)
    assert len(history) == history_len + 1
    assert history[-1]["result"] == "refused" and history[-1]["code"] == code
    assert history[-1]["who"] == "ci"


def assert_twin_passes(agent, release) -> None:
    response = raw_upload(agent, "greeter", release.version, release.manifest,
                          release.signature, release.bundle)
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "stored"
    stored = agent.data_dir / "releases" / "greeter" / release.version
    assert (stored / "manifest.json").read_bytes() == release.manifest.read_bytes()
    assert (stored / "files" / "plugin.py").is_file()
    assert agent.history()[-1]["result"] == "stored"


def refuse(node, status, code, *, manifest, signature, body, version="1.1.0", name="greeter",
           headers=None):
    before, n = node.snapshot(), len(node.history(name))
    response = raw_upload(node, name, version, manifest, signature, body, headers=headers)
    assert_refused(node, response, status, code, before, n, name)


# --- signatures -----------------------------------------------------------------------------


def test_missing_signature(node) -> None:
    nxt = node.next
    refuse(node, 422, "bad_signature", manifest=nxt.manifest, signature=None, body=nxt.bundle)
    assert_twin_passes(node, nxt)


def test_unsigned_envelope(node, tmp_path) -> None:
    crafted = craft_release(node.next, tmp_path / "c", keys=[])
    refuse(node, 422, "threshold_not_met", manifest=crafted.manifest,
           signature=crafted.signature, body=crafted.bundle)
    assert_twin_passes(node, node.next)


def test_bad_signature_manifest_changed_after_signing(node, tmp_path) -> None:
    doc = json.loads(node.next.manifest.read_bytes())
    doc["labels"]["team"] = "attacker"
    refuse(node, 422, "bad_signature", manifest=json.dumps(doc).encode(),
           signature=node.next.signature, body=node.next.bundle)
    assert_twin_passes(node, node.next)


def test_unknown_key(node, tmp_path, make_key) -> None:
    stranger = make_key("stranger")
    crafted = craft_release(node.next, tmp_path / "c", keys=[stranger.private])
    refuse(node, 422, "bad_signature", manifest=crafted.manifest,
           signature=crafted.signature, body=crafted.bundle)
    assert_twin_passes(node, node.next)


def test_below_threshold(make_agent, build_plugin, make_key, tmp_path) -> None:
    second = make_key("second")
    agent = make_agent(release_keys=[tmp_path / "keys" / "release.pub", second.public],
                       threshold=2)
    release = build_plugin("1.0.0")
    before, n = agent.snapshot(), len(agent.history())
    response = raw_upload(agent, "greeter", "1.0.0", release.manifest, release.signature,
                          release.bundle)
    assert_refused(agent, response, 422, "threshold_not_met", before, n)
    both = craft_release(release, tmp_path / "both", keys=[release.key.private, second.private])
    assert_twin_passes(agent, both)


# --- bundle bytes ------------------------------------------------------------------------------


def test_digest_mismatch(node) -> None:
    data = bytearray(node.next.bundle.read_bytes())
    data[-10] ^= 0xFF  # same size, different bytes
    refuse(node, 422, "digest_mismatch", manifest=node.next.manifest,
           signature=node.next.signature, body=bytes(data))
    assert_twin_passes(node, node.next)


@pytest.mark.parametrize("delta", [-1, +1])
def test_size_mismatch(node, delta) -> None:
    data = node.next.bundle.read_bytes()
    body = data[:delta] if delta < 0 else data + b"\0"
    refuse(node, 422, "size_mismatch", manifest=node.next.manifest,
           signature=node.next.signature, body=body)
    assert_twin_passes(node, node.next)


def test_expired_manifest(node, tmp_path) -> None:
    crafted = craft_release(node.next, tmp_path / "c",
                            mutate=lambda d: d.update(expires="2020-01-01T00:00:00Z"))
    refuse(node, 422, "expired", manifest=crafted.manifest, signature=crafted.signature,
           body=crafted.bundle)
    assert_twin_passes(node, node.next)


def test_wrong_plugin_name_for_the_slot(node) -> None:
    # A validly signed greeter manifest pushed into the "other" slot.
    refuse(node, 422, "identity_mismatch", name="other", manifest=node.next.manifest,
           signature=node.next.signature, body=node.next.bundle)
    assert_twin_passes(node, node.next)


def test_wrong_version_for_the_url(node) -> None:
    refuse(node, 422, "identity_mismatch", version="1.2.0", manifest=node.next.manifest,
           signature=node.next.signature, body=node.next.bundle)
    assert_twin_passes(node, node.next)


def test_unknown_plugin_slot_is_refused_and_recorded(node) -> None:
    before = node.snapshot()
    response = raw_upload(node, "nosuch", "1.1.0", node.next.manifest, node.next.signature,
                          node.next.bundle)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_plugin"
    assert node.snapshot() == before
    records = (node.data_dir / "agent-history.jsonl").read_text().splitlines()
    assert json.loads(records[-1])["plugin"] == "nosuch"
    assert_twin_passes(node, node.next)


@pytest.mark.parametrize("name,version,status,code", [
    ("%2E%2E", "1.1.0", 400, "bad_name"), ("greeter", "%2E%2E", 400, "bad_version"),
    (".", "1.1.0", 400, "bad_name"), ("Greeter", "1.1.0", 400, "bad_name"),
    ("greeter", "v1.1.0", 400, "bad_version"),
    # an encoded slash never reaches a handler: no route matches
    ("greeter", "1.1.0%2F..", 404, "not_found"),
])
def test_unsafe_path_parts_are_refused(node, name, version, status, code) -> None:
    before = node.snapshot()
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
    body = node.next.bundle.read_bytes()
    conn.request("PUT", f"/v1/plugins/{name}/releases/{version}", body=body, headers={
        "Authorization": f"Bearer {AGENT_TOKEN}",
        "X-Hotrelease-Manifest": base64.b64encode(node.next.manifest.read_bytes()).decode(),
        "X-Hotrelease-Signature": base64.b64encode(node.next.signature.read_bytes()).decode()})
    response = conn.getresponse()
    payload = json.loads(response.read())
    conn.close()
    assert response.status == status and payload["error"]["code"] == code
    assert node.snapshot() == before
    assert_twin_passes(node, node.next)


# --- idempotence and immutability --------------------------------------------------------------


def test_same_bytes_again_is_200_unchanged(node) -> None:
    before = node.snapshot()
    response = raw_upload(node, "greeter", "1.0.0", node.base.manifest, node.base.signature,
                          node.base.bundle)
    assert response.status_code == 200 and response.json()["status"] == "unchanged"
    assert node.snapshot() == before
    assert node.history()[-1]["result"] == "unchanged"


def test_same_version_other_digest_is_409(node, build_plugin, tmp_path) -> None:
    rebuilt = build_plugin("1.0.0", out=tmp_path / "rebuilt", env={"GREETER_BROKEN": "1"})
    assert rebuilt.bundle.read_bytes() != node.base.bundle.read_bytes()
    before, n = node.snapshot(), len(node.history())
    response = raw_upload(node, "greeter", "1.0.0", rebuilt.manifest, rebuilt.signature,
                          rebuilt.bundle)
    assert_refused(node, response, 409, "version_conflict", before, n)
    assert_twin_passes(node, node.next)


# --- size limits -------------------------------------------------------------------------------


def _big_bundle(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "big.tar.gz"
    import os

    payload = os.urandom(size)
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("plugin.py")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return path


def test_declared_content_length_over_cap(node) -> None:
    before, n = node.snapshot(), len(node.history())
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
    conn.putrequest("PUT", "/v1/plugins/greeter/releases/1.1.0")
    for key, value in {"Authorization": f"Bearer {AGENT_TOKEN}",
                       "Content-Length": str(10 * 1024 * 1024),
                       "X-Hotrelease-Manifest": base64.b64encode(
                           node.next.manifest.read_bytes()).decode(),
                       "X-Hotrelease-Signature": base64.b64encode(
                           node.next.signature.read_bytes()).decode()}.items():
        conn.putheader(key, value)
    conn.endheaders()  # no body sent: the answer must come from the header alone
    response = conn.getresponse()
    payload = json.loads(response.read())
    conn.close()
    assert response.status == 413 and payload["error"]["code"] == "too_large"
    assert node.snapshot() == before
    assert node.history()[-1]["code"] == "too_large" and len(node.history()) == n + 1
    assert_twin_passes(node, node.next)


def test_manifest_declaring_a_bundle_over_cap(node, tmp_path) -> None:
    big = _big_bundle(tmp_path, 100 * 1024)
    crafted = craft_release(node.next, tmp_path / "c", bundle=big)
    refuse(node, 413, "too_large", manifest=crafted.manifest, signature=crafted.signature,
           body=b"")
    assert_twin_passes(node, node.next)


def test_chunked_body_over_cap(node) -> None:
    before, n = node.snapshot(), len(node.history())

    def flood():
        for _ in range(200):  # 200 x 4 KiB = 800 KiB, cap is 64 KiB
            yield b"\0" * 4096

    import requests

    try:
        response = requests.put(
            f"{node.url}/v1/plugins/greeter/releases/1.1.0", data=flood(), timeout=30,
            headers={"Authorization": f"Bearer {AGENT_TOKEN}",
                     "X-Hotrelease-Manifest": base64.b64encode(
                         node.next.manifest.read_bytes()).decode(),
                     "X-Hotrelease-Signature": base64.b64encode(
                         node.next.signature.read_bytes()).decode()})
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "too_large"
    except requests.ConnectionError:
        pass  # the agent may close the connection while we are still sending
    assert node.snapshot() == before
    assert node.history()[-1]["code"] == "too_large" and len(node.history()) == n + 1
    assert list((node.data_dir / "tmp").iterdir()) == []
    assert_twin_passes(node, node.next)


def test_lying_content_length_cannot_smuggle_more_bytes(node) -> None:
    """Content-Length claims the real bundle size, then 1 MiB (16x the cap) follows. The
    agent reads exactly Content-Length bytes, so the extra bytes never become part of the
    body: nothing is stored, and the junk is refused as a (bad) next request."""
    before = node.snapshot()
    size = node.next.bundle.stat().st_size
    head = (f"PUT /v1/plugins/greeter/releases/1.1.0 HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {AGENT_TOKEN}\r\nContent-Length: {size}\r\n"
            f"X-Hotrelease-Manifest: "
            f"{base64.b64encode(node.next.manifest.read_bytes()).decode()}\r\n"
            f"X-Hotrelease-Signature: "
            f"{base64.b64encode(node.next.signature.read_bytes()).decode()}\r\n\r\n").encode()
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=10)
    try:
        sock.sendall(head)
        try:
            sock.sendall(b"\xff" * (1024 * 1024))
        except OSError:
            pass
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    finally:
        sock.close()
    # Either our digest_mismatch answer or the HTTP parser's 400 for the junk comes first.
    assert reply.split(b"\r\n", 1)[0].split()[1] in (b"400", b"422"), reply[:200]
    wait_until(lambda: list((node.data_dir / "tmp").iterdir()) == [], 10, "temp cleanup")
    assert node.snapshot() == before
    assert node.history()[-1]["result"] != "stored"
    assert_twin_passes(node, node.next)


# --- hostile archives, validly signed ------------------------------------------------------------


def _member(name, kind=tarfile.REGTYPE, data=b"x = 1\n", linkname="", mode=0o644):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = mode
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info, data if kind == tarfile.REGTYPE else None


HOSTILE = {
    "absolute path": [_member("/tmp/hotrelease-evil.py")],
    "dotdot": [_member("../../evil.py")],
    "symlink out": [_member("plugin.py", tarfile.SYMTYPE, linkname="/etc/passwd")],
    "hardlink out": [_member("plugin.py", tarfile.LNKTYPE, linkname="/etc/passwd")],
    "device": [_member("plugin.py", tarfile.CHRTYPE)],
    "fifo": [_member("plugin.py", tarfile.FIFOTYPE)],
    "setuid": [_member("plugin.py", mode=0o4755)],
    "sibling prefix escape": [_member("../files-evil/plugin.py")],
}


def _signed_archive(node, tmp_path, members):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "hostile.tar.gz"
    files = []
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                files.append({"path": info.name, "sha256": hashlib.sha256(data).hexdigest(),
                              "size": len(data)})
            else:
                tar.addfile(info)
    safe_files = [f for f in files if not f["path"].startswith(("/", ".."))]
    return craft_release(node.next, tmp_path / "signed", bundle=path, files=safe_files)


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_refused(node, tmp_path, case) -> None:
    crafted = _signed_archive(node, tmp_path, HOSTILE[case])
    refuse(node, 422, "unsafe_archive", manifest=crafted.manifest,
           signature=crafted.signature, body=crafted.bundle)
    assert not Path("/tmp/hotrelease-evil.py").exists()
    assert list((node.data_dir / "tmp").iterdir()) == []
    # twin: a hand-made archive of the same shape, but benign
    twin = _signed_archive(node, tmp_path / "twin", [_member("plugin.py")])
    assert_twin_passes(node, twin)
