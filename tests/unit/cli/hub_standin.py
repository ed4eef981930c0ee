"""A STAND-IN for the Hugging Face hub (the real one is unreachable here): a tiny HTTP
server on 127.0.0.1 that answers the endpoints huggingface_hub calls for a download —
repo info, the recursive tree listing, HEAD/GET (with Range) on /resolve/ — serving the
files of a local model directory. Point HF_ENDPOINT at `url`.

Repos: `REPO` (the files), `GATED` (403 GatedRepo, as the hub answers for a gated model
without access), `PRIVATE` (401). `cut_once` breaks one transfer short of its end.
Every request is recorded (method, path, Range header),
so tests can see a resumed download ask for the rest only.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

REPO = "vllama-test/tiny-demo"
GATED = "vllama-test/gated-model"
PRIVATE = "vllama-test/private-model"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class HubState:
    root: Path
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, Range
    cut_once: str | None = None  # this file's first GET stops 1 MB short of its end


def etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _handler(state: HubState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, data: object, status: int = 200) -> None:
            self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json"})

        def _denied(self, repo: str) -> bool:
            if repo == GATED:
                msg = f"Access to model {repo} is restricted. You must have access to it and be authenticated to access it. Please log in."
                self._send(
                    403,
                    json.dumps({"error": msg}).encode(),
                    {"X-Error-Code": "GatedRepo", "X-Error-Message": msg},
                )
                return True
            if repo == PRIVATE:
                self._send(
                    401,
                    json.dumps({"error": "Invalid credentials in Authorization header"}).encode(),
                )
                return True
            if repo != REPO:
                self._send(
                    404, b'{"error":"Repository not found"}', {"X-Error-Code": "RepoNotFound"}
                )
                return True
            return False

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            path = unquote(urlparse(self.path).path)
            state.requests.append((self.command, path, self.headers.get("Range")))
            if path.startswith("/api/models/"):
                rest = path[len("/api/models/") :]
                if "/tree/" in rest:
                    repo = rest.split("/tree/")[0]
                    if not self._denied(repo):
                        self._json(
                            [
                                {
                                    "type": "file",
                                    "oid": hashlib.sha1(d).hexdigest(),
                                    "size": len(d),
                                    "path": name,
                                }
                                for name, d in sorted(state.files.items())
                            ]
                        )
                    return
                repo = rest.split("/revision/")[0]
                if not self._denied(repo):
                    self._json(
                        {
                            "id": repo,
                            "modelId": repo,
                            "sha": COMMIT,
                            "private": False,
                            "siblings": [{"rfilename": n} for n in sorted(state.files)],
                        }
                    )
                return
            if "/resolve/" in path:
                repo, _, tail = path.lstrip("/").partition("/resolve/")
                if self._denied(repo):
                    return
                name = tail.partition("/")[2]
                data = state.files.get(name)
                if data is None:
                    self._send(
                        404, b'{"error":"Entry not found"}', {"X-Error-Code": "EntryNotFound"}
                    )
                    return
                headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{etag(data)}"'}
                rng = self.headers.get("Range")
                if self.command == "GET" and rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                    self._send(206, data[start:], headers)
                    return
                if self.command == "GET" and state.cut_once == name:
                    state.cut_once = None  # one broken transfer: the client must resume
                    self.send_response(200)
                    for k, v in {**headers, "Content-Length": str(len(data))}.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data[: len(data) - 2**20])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self._send(200, data, headers)
                return
            self._send(404, b'{"error":"not found"}')

    return Handler


@contextmanager
def standin_hub(model_dir: Path) -> Iterator[tuple[str, HubState]]:
    state = HubState(root=model_dir)
    for p in sorted(model_dir.rglob("*")):
        if p.is_file():
            state.files[str(p.relative_to(model_dir))] = p.read_bytes()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
