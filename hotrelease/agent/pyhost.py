"""A small Python plugin host, for tests and the demo.

    python -m hotrelease.agent.pyhost --current DATA/plugins/greeter/current --port 9000 \
        [--pid-file host.pid]

Loads `<current>/files/plugin.py` by path (contract: `VERSION`, `handle(request, state)`,
`health()`), and serves on 127.0.0.1:
  POST /play          -> plugin.handle(json body, state)
  GET  /health        -> {"version": ..., "healthy": ...} (503 when unhealthy or not loaded)
  POST /admin/reload  -> reload now; answers when the new module is in place
SIGHUP also reloads. The module reference is swapped in one assignment, after the new module
imported cleanly; a broken module leaves the old one serving. Session state lives here, in
the host, so it survives reloads.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

MAX_BODY = 64 * 1024


class Host:
    def __init__(self, current: Path) -> None:
        self.current = current
        self.module: ModuleType | None = None
        self.loaded_from: str | None = None
        self.state: dict[str, Any] = {}
        self.state_lock = threading.Lock()
        self.reload_lock = threading.Lock()
        self.generation = 0
        self.last_error: str | None = None

    def reload(self) -> tuple[bool, str]:
        with self.reload_lock:
            real = os.path.realpath(self.current)
            path = Path(real) / "files" / "plugin.py"
            self.generation += 1
            try:
                spec = importlib.util.spec_from_file_location(
                    f"hotrelease_plugin_{self.generation}", path)
                if spec is None or spec.loader is None:
                    raise ImportError(f"cannot load {path}")
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                for attr in ("VERSION", "handle", "health"):
                    if not hasattr(module, attr):
                        raise ImportError(f"{path} has no {attr}")
            except Exception as exc:  # noqa: BLE001 - keep serving the old module
                self.last_error = f"{type(exc).__name__}: {exc}"
                return False, self.last_error
            self.module = module  # the swap: one reference assignment
            self.loaded_from = real
            self.last_error = None
            return True, str(module.VERSION)

    def health(self) -> tuple[int, dict[str, Any]]:
        module = self.module
        if module is None:
            return 503, {"version": None, "healthy": False, "error": self.last_error}
        try:
            healthy = bool(module.health())
        except Exception:  # noqa: BLE001
            healthy = False
        return (200 if healthy else 503), {"version": module.VERSION, "healthy": healthy,
                                           "loaded_from": self.loaded_from,
                                           "last_error": self.last_error}


def make_handler(host: Host) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body leave at once (no 40 ms stall)

        def log_message(self, fmt: str, *args: Any) -> None:
            return

        def _send(self, status: int, doc: dict[str, Any]) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise ValueError("body too large")
            data = self.rfile.read(length) if length else b"{}"
            return json.loads(data or b"{}")

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/health":
                self._send(*host.health())
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path == "/admin/reload":
                self._body()
                ok, detail = host.reload()
                self._send(200 if ok else 500, {"ok": ok, "detail": detail})
            elif self.path == "/play":
                try:
                    request = self._body()
                except ValueError as exc:
                    self._send(400, {"error": str(exc)})
                    return
                module = host.module
                if module is None:
                    self._send(503, {"error": "no plugin loaded"})
                    return
                with host.state_lock:
                    result = module.handle(request, host.state)
                self._send(200, result)
            else:
                self._send(404, {"error": "not found"})

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hotrelease.agent.pyhost")
    parser.add_argument("--current", required=True, type=Path)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--pid-file", type=Path)
    args = parser.parse_args(argv)

    host = Host(args.current)
    if args.current.exists():
        host.reload()
    server = ThreadingHTTPServer((args.host, args.port), make_handler(host))
    server.daemon_threads = True

    def on_hup(signum: int, frame: Any) -> None:
        threading.Thread(target=host.reload, daemon=True).start()

    def on_term(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, on_term)
    if args.pid_file:
        tmp = args.pid_file.with_name(args.pid_file.name + ".tmp")
        tmp.write_text(f"{os.getpid()}\n")
        os.replace(tmp, args.pid_file)
    print(f"pyhost: serving on {args.host}:{args.port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        if args.pid_file:
            try:
                args.pid_file.unlink()
            except FileNotFoundError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
