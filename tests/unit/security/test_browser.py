"""The browser guard's policies: Ollama's default origins and local host names (read from
ollama/ollama: envconfig.AllowedOrigins, server/routes.go allowedHost/allowedHostsMiddleware),
plus the configured extras."""

from __future__ import annotations

import socket

import pytest

from vllama.security.browser import HostPolicy, OriginPolicy, is_loopback


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost",
        "https://localhost",
        "http://localhost:3000",
        "https://127.0.0.1:8443",
        "http://0.0.0.0:8080",
        "app://obsidian.md",
        "file://",
        "tauri://localhost",
        "vscode-webview://abc123",
        "vscode-file://vscode-app",
        "HTTP://LOCALHOST:3000",
    ],
)
def test_ollamas_default_origins_are_allowed(origin: str) -> None:
    assert OriginPolicy().allows(origin, "127.0.0.1:11434")


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "http://localhost.evil.example",
        "http://127.0.0.1.nip.io",
        "null",
        "chrome-extension://abcdef",  # extensions: only when configured, as in Ollama
        "http://attacker.example:11434",  # the DNS-rebinding page's own origin
    ],
)
def test_other_origins_are_refused(origin: str) -> None:
    assert not OriginPolicy().allows(origin, "127.0.0.1:11434")


def test_same_origin_and_configured_origins() -> None:
    policy = OriginPolicy(
        ["https://chat.example.com", "https://*.corp.example", "chrome-extension://*"]
    )
    assert policy.allows("http://llm.lan:11434", "llm.lan:11434")  # the page came from here
    assert policy.allows("https://chat.example.com", "x")
    assert policy.allows("https://a.corp.example", "x")
    assert policy.allows("chrome-extension://abcdef", "x")
    assert not policy.allows("https://chat.example.com.evil.example", "x")
    assert OriginPolicy(["*"]).allows("https://anything.example", "x")


@pytest.mark.parametrize(
    "host",
    [
        "",
        "localhost",
        "localhost:11434",
        "LOCALHOST:11434",
        "127.0.0.1:11434",
        "[::1]:11434",
        "::1",
        "10.0.0.5:11434",
        "192.168.1.20",
        "0.0.0.0:11434",
        "app.localhost",
        "printer.local:631",
        "svc.internal",
        socket.gethostname(),
    ],
)
def test_local_hosts_are_allowed(host: str) -> None:
    assert HostPolicy().allows(host)


@pytest.mark.parametrize(
    "host", ["attacker.example", "attacker.example:11434", "8.8.8.8", "localhost.attacker.example"]
)
def test_other_hosts_are_refused(host: str) -> None:
    assert not HostPolicy().allows(host)


def test_configured_hosts() -> None:
    assert HostPolicy(["llm.example.com"]).allows("llm.example.com:443")
    assert HostPolicy(["*"]).allows("attacker.example")


def test_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1")
