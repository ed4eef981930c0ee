"""What a web browser may do: Ollama's guard against web pages reaching a local server.

A page on any site can make the visitor's browser send requests to 127.0.0.1: cross-site
"simple" POSTs (`Content-Type: text/plain` needs no preflight) and, after DNS rebinding
(the attacker's name re-resolved to 127.0.0.1), same-origin requests whose `Host` is the
attacker's name. Ollama refuses both (ollama/ollama `server/routes.go`:
`allowedHostsMiddleware`, and gin-contrib/cors with `envconfig.AllowedOrigins()`); this
module does the same, with the same defaults:

- **Origin**: a request with an `Origin` header is refused unless the origin is the
  request's own host or matches the allowlist: `http(s)://localhost`, `127.0.0.1`,
  `0.0.0.0` with any port, `app://`, `file://`, `tauri://`, `vscode-webview://`,
  `vscode-file://`, plus `allowed_origins` (one `*` wildcard each, `*` alone: any).
- **Host**, only while the façade listens on a loopback address: empty, `localhost`, this
  machine's hostname, `*.localhost`, `*.local`, `*.internal`, and IP literals that are
  loopback, private, unspecified or this machine's own; plus `allowed_hosts`.

Requests without `Origin` (curl, SDKs, servers) are not CORS requests and pass the origin
check. Allowed cross-origin requests get CORS headers; preflights are answered here.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

# envconfig.AllowedOrigins(): these hosts over http/https, with and without a port.
_DEFAULT_ORIGIN_HOSTS = ("localhost", "127.0.0.1", "0.0.0.0")
_DEFAULT_APP_ORIGINS = ("app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")
# allowedHost(): local top-level domains.
_LOCAL_TLDS = (".localhost", ".local", ".internal")

# What a preflight may ask for: Ollama's list plus the headers vllama itself reads.
ALLOW_HEADERS = (
    "Authorization, Content-Type, User-Agent, Accept, X-Requested-With, X-Api-Key, "
    "X-Request-ID, OpenAI-Beta, x-stainless-arch, x-stainless-async, "
    "x-stainless-custom-poll-interval, x-stainless-helper-method, x-stainless-lang, "
    "x-stainless-os, x-stainless-package-version, x-stainless-poll-helper, "
    "x-stainless-retry-count, x-stainless-runtime, x-stainless-runtime-version, "
    "x-stainless-timeout"
)
ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
MAX_AGE_S = 12 * 3600  # gin-contrib/cors DefaultConfig


def default_origins() -> list[str]:
    out: list[str] = []
    for host in _DEFAULT_ORIGIN_HOSTS:
        out += [f"http://{host}", f"https://{host}", f"http://{host}:*", f"https://{host}:*"]
    return [*out, *_DEFAULT_APP_ORIGINS]


@dataclass(frozen=True)
class _Wildcard:
    prefix: str
    suffix: str

    def matches(self, origin: str) -> bool:
        return (
            len(origin) >= len(self.prefix) + len(self.suffix)
            and origin.startswith(self.prefix)
            and origin.endswith(self.suffix)
        )


class OriginPolicy:
    def __init__(self, extra: Iterable[str] = ()) -> None:
        self.any = False
        self._exact: set[str] = set()
        self._wild: list[_Wildcard] = []
        for entry in [*default_origins(), *extra]:
            entry = entry.strip().lower()
            if not entry:
                continue
            if entry == "*":
                self.any = True
            elif "*" in entry:
                prefix, _, suffix = entry.partition("*")
                self._wild.append(_Wildcard(prefix, suffix.replace("*", "")))
            else:
                self._exact.add(entry)

    def allows(self, origin: str, host: str) -> bool:
        origin = origin.strip().lower()
        if self.any or origin in self._exact:
            return True
        # Same origin: a page served by this host (gin-contrib/cors does the same).
        if host and origin in (f"http://{host.lower()}", f"https://{host.lower()}"):
            return True
        return any(w.matches(origin) for w in self._wild)


def _split_host(host: str) -> str:
    """The name or address in a Host header, without port or IPv6 brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host[1:]
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


@lru_cache(maxsize=1)
def _local_addresses() -> frozenset[str]:
    """This machine's own addresses (Ollama's isLocalIP), looked up once."""
    found: set[str] = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            found.add(str(info[4][0]).split("%", 1)[0])
    except OSError:
        pass
    return frozenset(found)


def is_loopback(address: str | None) -> bool:
    if not address:
        return False
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return address.lower() == "localhost"


_SEEN_MAX = 256


class HostPolicy:
    def __init__(self, extra: Iterable[str] = ()) -> None:
        names = {e.strip().lower() for e in extra if e.strip()}
        self.any = "*" in names
        self._extra = frozenset(_split_host(n) for n in names if n != "*")
        self._hostname = socket.gethostname().lower()
        self._seen: dict[str, bool] = {}

    def allows(self, host_header: str) -> bool:
        """Verdicts are kept per Host value (bounded: clients choose the header), since
        the same few names come with every request."""
        verdict = self._seen.get(host_header)
        if verdict is None:
            if len(self._seen) >= _SEEN_MAX:
                self._seen.clear()
            verdict = self._seen[host_header] = self._allows(host_header)
        return verdict

    def _allows(self, host_header: str) -> bool:
        if self.any:
            return True
        host = _split_host(host_header)
        if host in ("", "localhost", self._hostname) or host in self._extra:
            return True
        if host.endswith(_LOCAL_TLDS):
            return True
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return ip.is_loopback or ip.is_private or ip.is_unspecified or host in _local_addresses()


def cors_headers(origin: str) -> list[tuple[bytes, bytes]]:
    """Headers of an answer to an allowed cross-origin request."""
    return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]


def preflight_headers(origin: str) -> list[tuple[bytes, bytes]]:
    return [
        *cors_headers(origin),
        (b"access-control-allow-methods", ALLOW_METHODS.encode()),
        (b"access-control-allow-headers", ALLOW_HEADERS.encode()),
        (b"access-control-max-age", str(MAX_AGE_S).encode()),
    ]
