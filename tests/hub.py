"""A REAL Hugging Face–protocol hub on this machine, for every test that downloads a model
through HF_ENDPOINT (`vllama pull`, `/api/pull`, Ansible's pull task, compose's pull step).

Two olah processes (vtuber-plan/olah 0.5.4 from PyPI, in .venv-hub made by
scripts/setup-hub-venv.sh; docs/development.md says why olah):

- the *mirror*: olah's `mirrors-path` mode, offline, serving git repositories built here
  from local folders (the demo model, a second one of its shape built with another seed,
  and all-MiniLM-L6-v2, weights as Git LFS objects as on the Hub);
- the *front*: olah's caching proxy mode with the mirror as its upstream hub. The mirror
  mode answers a Range request with the whole file (200), the proxy mode with the range
  (206), as the Hub's CDN does; resumed downloads need that. Its cache block (128 MB) is
  larger than any file served, because the mirror ignores the block ranges the proxy asks
  it for. Between the two, a relay answers the proxy's repo-info probe
  (`/api/models/ORG/NAME`, no revision) with `/revision/main`: olah 0.5.4's mirror mode
  answers the former 401 (its `get_latest_commit` does not look at local mirrors).

In front of both, a small relay in this process: it records every request (method, path,
Range, status, bytes sent back), can slow one file down (to interrupt a download
mid-file), and is the STAND-IN gate for gated models, which no mirror emulates: the repo
`GATED` answers its file downloads as the Hub answers a gated model (401 without a token,
403 with one, `X-Error-Code: GatedRepo`) and its metadata with the demo model's.

Everything listens on 127.0.0.1; `Hub.listen(address)` adds a relay listener on another
local address (the Docker bridge's gateway, `docker_gateway()`) so containers on this
machine reach the same hub. Use `hub.url` as HF_ENDPOINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tests import procs
from tests.engines import CACHE, demo_model_dir, embed_model_dir
from tests.procs import REPO, free_port

HUB_VENV = REPO / ".venv-hub"
MIRRORS = REPO / ".cache" / "hub" / "mirrors"
DEMO_REPO = "vllama-test/vllama-demo"
DEMO_B_REPO = "vllama-test/vllama-demo-b"  # the demo model's shape, other weights (seed 1)
EMBED_REPO = "sentence-transformers/all-MiniLM-L6-v2"
GATED = "vllama-test/gated-demo"  # served only through the stand-in gate
MISSING = "vllama-test/no-such-model"
LFS_SUFFIXES = (".safetensors", ".bin")
GIT_ENV = {
    "GIT_AUTHOR_NAME": "vllama tests",
    "GIT_AUTHOR_EMAIL": "tests@vllama.invalid",
    "GIT_COMMITTER_NAME": "vllama tests",
    "GIT_COMMITTER_EMAIL": "tests@vllama.invalid",
    "GIT_AUTHOR_DATE": "2025-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2025-01-01T00:00:00Z",
}


def demo_b_dir() -> Path:
    """A second small chat model: the demo model built with another seed."""
    from vllama.engine.demo_model import build_demo_model

    return build_demo_model(CACHE / "models" / "vllama-demo-b", seed=1)


def hub_venv() -> Path:
    """.venv-hub (olah), created when missing."""
    res = subprocess.run(
        [str(REPO / "scripts/setup-hub-venv.sh")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(f"scripts/setup-hub-venv.sh failed:\n{res.stdout}{res.stderr}")
    return HUB_VENV / "bin"


def _digest(src: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(src.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(src)}:{st.st_size}:{int(st.st_mtime)}\n".encode())
    return h.hexdigest()[:16]


def build_repo(src: Path, repo_id: str) -> Path:
    """A git repository of `src` as the Hub stores a model (weights as LFS objects), under
    .cache/hub/mirrors/models/ORG/NAME; rebuilt only when the folder changed."""
    dest = MIRRORS / "models" / repo_id
    stamp = dest / ".git" / "vllama-source"
    digest = _digest(src)
    if stamp.is_file() and stamp.read_text() == digest:
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    objects: list[tuple[str, Path]] = []
    for p in sorted(src.rglob("*")):
        if not p.is_file() or p.name == ".gitattributes" or "__pycache__" in p.parts:
            continue
        out = dest / p.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        if p.suffix in LFS_SUFFIXES:
            data = p.read_bytes()
            oid = hashlib.sha256(data).hexdigest()
            out.write_text(
                f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n"
            )
            objects.append((oid, p))
        else:
            shutil.copyfile(p, out)
    (dest / ".gitattributes").write_text(
        "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES)
    )
    env = {**os.environ, **GIT_ENV}
    for cmd in (
        ["git", "init", "-q", "-b", "main", str(dest)],
        ["git", "-C", str(dest), "add", "-A"],
        ["git", "-C", str(dest), "commit", "-q", "-m", f"{repo_id} from {src.name}"],
    ):
        subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=120)
    for oid, p in objects:  # where git-lfs keeps them, and olah reads them
        obj = dest / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
        obj.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, obj)
    stamp.write_text(digest)
    return dest


def repo_commit(repo_id: str) -> str:
    return subprocess.run(
        ["git", "-C", str(MIRRORS / "models" / repo_id), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


# --- the relay (request log, throttle, stand-in gate) -----------------------------------


@dataclass
class Served:
    method: str
    path: str
    range: str | None
    authorized: bool
    status: int = 0
    bytes: int = 0  # response bytes sent to the client (head and body)


@dataclass
class _Relay:
    upstream_port: int
    info_shim: bool = False  # /api/models/ORG/NAME -> .../revision/main (see the docstring)
    log: list[Served] = field(default_factory=list)
    throttles: dict[str, float] = field(default_factory=dict)  # path part -> bytes/s
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    servers: list[asyncio.AbstractServer] = field(default_factory=list)
    # The connections being relayed. asyncio keeps only weak references to tasks, and a
    # client's hang-up drops the server's: without these a relay waiting on the hub would
    # be collected pending, its connections left unclosed.
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def _gate(self, writer: asyncio.StreamWriter, served: Served) -> None:
        # As the Hub answers a gated model's files: 401 anonymous, 403 without access.
        if served.authorized:
            served.status = 403
            message = (
                f"Access to model {GATED} is restricted and you are not in the authorized "
                f"list. Visit the model's page to ask for access."
            )
        else:
            served.status = 401
            message = (
                f"Access to model {GATED} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in."
            )
        body = ('{"error":"' + message + '"}').encode()
        head = (
            f"HTTP/1.1 {served.status} {'Unauthorized' if served.status == 401 else 'Forbidden'}\r\n"
            f"Content-Type: application/json\r\nX-Error-Code: GatedRepo\r\n"
            f"X-Error-Message: {message}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        writer.write(head + body)
        served.bytes = len(head) + len(body)
        await writer.drain()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)  # type: ignore[arg-type]
            task.add_done_callback(self.tasks.discard)  # type: ignore[arg-type]
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
            asyncio.CancelledError,  # the hub stops: an idle keep-alive connection ends
        ):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        headers = [ln.split(":", 1) for ln in lines[1:] if ":" in ln]
        named = {k.strip().lower(): v.strip() for k, v in headers}
        body = b""
        if named.get("content-length", "0").isdigit() and int(named.get("content-length", "0")):
            body = await reader.readexactly(int(named["content-length"]))
        path = urlsplit(target).path
        served = Served(method, path, named.get("range"), "authorization" in named)
        self.log.append(served)
        up_writer: asyncio.StreamWriter | None = None
        try:
            if path.startswith(f"/{GATED}/resolve/"):
                await self._gate(writer, served)
                return
            # The gated repo's metadata is the demo model's (the Hub shows gated repos' info).
            target = target.replace(f"/{GATED}/", f"/{DEMO_REPO}/").replace(
                f"/{GATED}?", f"/{DEMO_REPO}?"
            )
            if self.info_shim and re.fullmatch(r"/api/models/[^/]+/[^/]+", path):
                target = path + "/revision/main"
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            # The client's Host stays: redirects the hub answers (e.g. to a trailing-slash
            # URL) must lead back here, not to the hub's own loopback port.
            keep = [
                f"{k}:{v}"
                for k, v in headers
                if k.strip().lower() not in ("connection", "keep-alive")
            ]
            out = [f"{method} {target} {version}", *keep]
            up_writer.write(
                ("\r\n".join([*out, "Connection: close", "", ""])).encode("latin-1") + body
            )
            await up_writer.drain()
            rate = next((r for part, r in self.throttles.items() if part in path), None)
            first = True
            while chunk := await up_reader.read(64 * 1024):
                if first:
                    served.status = int(chunk.split(b" ", 2)[1])
                    first = False
                writer.write(chunk)
                served.bytes += len(chunk)
                await writer.drain()
                rate = next((r for part, r in self.throttles.items() if part in path), None)
                if rate:
                    await asyncio.sleep(len(chunk) / rate)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client hung up (an interrupted download) or the hub stops
        finally:
            for open_writer in (up_writer, writer):  # both ends, however it ended
                if open_writer is not None:
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        open_writer.close()

    def start(self, host: str, port: int) -> None:
        async def serve() -> asyncio.AbstractServer:
            return await asyncio.start_server(self.handle, host, port)

        self.servers.append(asyncio.run_coroutine_threadsafe(serve(), self.loop).result(10))

    def stop(self, *, stop_loop: bool = True) -> None:
        async def close() -> None:
            for server in self.servers:
                server.close()
            if stop_loop:  # idle keep-alive connections: end them with the loop
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        if stop_loop:
            self.loop.call_soon_threadsafe(self.loop.stop)


@dataclass
class Hub:
    url: str  # HF_ENDPOINT for processes on this machine
    relay: _Relay
    workdir: Path
    extra_urls: dict[str, str] = field(default_factory=dict)

    @property
    def requests(self) -> list[Served]:
        return list(self.relay.log)

    def bytes_served(self, path_part: str, method: str = "GET") -> int:
        return sum(r.bytes for r in self.relay.log if r.method == method and path_part in r.path)

    @contextlib.contextmanager
    def throttled(self, path_part: str, bytes_per_s: float) -> Iterator[None]:
        """Slow every response whose path holds `path_part` (to interrupt it mid-file)."""
        self.relay.throttles[path_part] = bytes_per_s
        try:
            yield
        finally:
            self.relay.throttles.pop(path_part, None)

    def listen(self, host: str) -> str:
        """One more relay listener on a local address (e.g. a Docker network's gateway, for
        containers on this machine); returns its URL."""
        if host not in self.extra_urls:
            port = free_port()
            self.relay.start(host, port)
            self.extra_urls[host] = f"http://{host}:{port}"
        return self.extra_urls[host]


def _interface_address(name: str) -> str:
    """The IPv4 address of a network interface of this machine (SIOCGIFADDR)."""
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))
    return socket.inet_ntoa(packed[20:24])


def docker_gateway(network: str = "bridge") -> str:
    """This machine's address on a Docker network (what its containers reach the host by):
    the network's gateway, or the address of its bridge interface (the default bridge
    leaves the gateway out of its IPAM config)."""
    import json

    res = subprocess.run(
        ["docker", "network", "inspect", "-f", "{{json .}}", network],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    info = json.loads(res.stdout)
    for config in info["IPAM"]["Config"] or []:
        if config.get("Gateway"):
            return str(config["Gateway"])
    bridge = (info.get("Options") or {}).get("com.docker.network.bridge.name")
    return _interface_address(bridge or f"br-{info['Id'][:12]}")


def _olah(bin_dir: Path, workdir: Path, name: str, config: str) -> procs.Proc:
    conf = workdir / f"{name}.toml"
    conf.write_text(config)
    cmd = [str(bin_dir / "python"), "-m", "olah.server", "--config", str(conf)]
    return procs.start(f"olah {name}", cmd, workdir / f"{name}.log", cwd=workdir)


def _ready(url: str, timeout: float, olahs: list[procs.Proc]) -> None:
    def answers() -> bool:
        for p in olahs:
            if p.popen.poll() is not None:
                raise procs.ProcessExited(f"{p.name} exited with {p.popen.returncode}")
        return procs.http_ok(url, timeout=5)

    try:
        procs.wait_for(answers, f"the olah hub answering {url}", timeout, interval=0.3)
    except (procs.ProcessExited, TimeoutError) as exc:
        raise RuntimeError(f"{exc}:\n{''.join(p.tail(2000) for p in olahs)}") from None


@contextlib.contextmanager
def start_hub(workdir: Path) -> Iterator[Hub]:
    """The hub with the demo and embedding models; stopped (every process) afterwards."""
    bin_dir = hub_venv()
    build_repo(demo_model_dir(), DEMO_REPO)
    build_repo(demo_b_dir(), DEMO_B_REPO)
    build_repo(embed_model_dir(), EMBED_REPO)
    workdir.mkdir(parents=True, exist_ok=True)
    mirror_port, shim_port, front_port, relay_port = (free_port() for _ in range(4))
    mirror = _olah(
        bin_dir,
        workdir,
        "mirror",
        f'[basic]\nhost = "127.0.0.1"\nport = {mirror_port}\nrepos-path = "{workdir / "mirror-repos"}"\n'
        f'mirrors-path = ["{MIRRORS}"]\n[accessibility]\noffline = true\n',
    )
    front = _olah(
        bin_dir,
        workdir,
        "front",
        f'[basic]\nhost = "127.0.0.1"\nport = {front_port}\nrepos-path = "{workdir / "front-cache"}"\n'
        f'hf-scheme = "http"\nhf-netloc = "127.0.0.1:{shim_port}"\n'
        f'hf-lfs-netloc = "127.0.0.1:{shim_port}"\ncache-block-size = "128MB"\n'
        "[accessibility]\noffline = false\n",
    )
    olahs = [mirror, front]
    relay = _Relay(front_port)
    shim = _Relay(mirror_port, info_shim=True, loop=relay.loop)
    thread = threading.Thread(target=relay.loop.run_forever, name="hub-relay", daemon=True)
    thread.start()
    try:
        shim.start("127.0.0.1", shim_port)
        relay.start("127.0.0.1", relay_port)
        hub = Hub(f"http://127.0.0.1:{relay_port}", relay, workdir)
        _ready(f"{hub.url}/api/models/{DEMO_REPO}/revision/main", 90, olahs)
        yield hub
    finally:
        shim.stop(stop_loop=False)
        relay.stop()
        thread.join(10)
        relay.loop.close()  # its self-pipe sockets too
        for proc in olahs:
            proc.stop()


if __name__ == "__main__":  # `python -m tests.hub`: run it by hand, Ctrl-C stops it
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, start_hub(Path(tmp)) as running:
        print(f"HF_ENDPOINT={running.url}", flush=True)
        for address in sys.argv[1:]:
            print(f"also: {running.listen(address)}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
