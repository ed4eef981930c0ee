"""API keys: the keys file format, header forms, and a compare that touches every key."""

from __future__ import annotations

import hmac
from pathlib import Path

import pytest

from vllama.config import ApiKey, ConfigError, Settings
from vllama.security import keys as keys_mod
from vllama.security.keys import INVALID, MISSING, KeyStore, Refused, parse_keys_file

ALICE = ApiKey(name="alice", key="sk-alice-0123456789")
BATCH = ApiKey(name="batch", key="sk-batch-abcdef", max_concurrency=2, priority=10)


def test_keys_file_lines(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(
        "# operators\n\nalice:sk-a\n  batch:sk-b:4:10  \nci:sk-c::-5\nsolo:sk-d:1\n",
        encoding="utf-8",
    )
    assert parse_keys_file(path) == [
        ApiKey(name="alice", key="sk-a"),
        ApiKey(name="batch", key="sk-b", max_concurrency=4, priority=10),
        ApiKey(name="ci", key="sk-c", priority=-5),
        ApiKey(name="solo", key="sk-d", max_concurrency=1),
    ]


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("only-a-key", "expected `name:key"),
        (":sk-x", "expected `name:key"),
        ("a:sk:x", "max_concurrency 'x' is not an integer"),
        ("a:sk:0", "at least 1"),
        ("a:sk:1:high", "priority 'high'"),
        ("a:b:1:2:3", "expected `name:key"),
    ],
)
def test_bad_lines_name_the_line_but_never_show_it(tmp_path: Path, line: str, needle: str) -> None:
    path = tmp_path / "keys"
    path.write_text(f"ok:sk-ok\n{line}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        parse_keys_file(path)
    assert f"{path}:2" in str(err.value) and needle in str(err.value)
    assert "sk-ok" not in str(err.value)


def test_unreadable_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        parse_keys_file(tmp_path / "absent")


def test_settings_and_file_are_merged(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("batch:sk-batch-abcdef:2:10\n", encoding="utf-8")
    store = KeyStore.from_settings(Settings(api_keys=[ALICE], api_keys_file=path))
    assert store.names() == ["alice", "batch"]
    assert store.check("sk-batch-abcdef") == BATCH


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(ConfigError, match="used twice"):
        KeyStore([ALICE, ApiKey(name="alice", key="other")])


def test_no_keys_means_open() -> None:
    store = KeyStore()
    assert not store.enabled and store.authenticate([]) is None


@pytest.mark.parametrize(
    "headers",
    [
        [(b"authorization", b"Bearer sk-alice-0123456789")],
        [(b"authorization", b"bearer   sk-alice-0123456789 ")],
        [(b"x-api-key", b"sk-alice-0123456789")],
        [(b"authorization", b"Basic Zm9vOmJhcg=="), (b"x-api-key", b"sk-alice-0123456789")],
        {"Authorization": "Bearer sk-alice-0123456789"},
        {"x-api-key": "sk-alice-0123456789"},
    ],
)
def test_accepted_forms(headers: list[tuple[bytes, bytes]] | dict[str, str]) -> None:
    assert KeyStore([BATCH, ALICE]).authenticate(headers) == ALICE


@pytest.mark.parametrize(
    ("headers", "refusal"),
    [
        ([], MISSING),
        ([(b"authorization", b"Bearer ")], MISSING),
        ([(b"authorization", b"Basic c2stYWxpY2U=")], MISSING),
        ([(b"authorization", b"Bearer sk-alice-012345678")], INVALID),  # one char short
        ([(b"x-api-key", b"SK-ALICE-0123456789")], INVALID),
    ],
)
def test_refusals(headers: list[tuple[bytes, bytes]], refusal: Refused) -> None:
    result = KeyStore([ALICE]).authenticate(headers)
    assert result == refusal
    assert isinstance(result, Refused) and "sk-alice" not in result.reason


def test_every_key_is_compared_whichever_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(keys_mod.hmac, "compare_digest", counting)
    store = KeyStore([ApiKey(name=f"k{i}", key=f"sk-{i}") for i in range(5)])
    for presented in ("sk-0", "sk-4", "nope"):
        calls.clear()
        store.check(presented)
        assert len(calls) == 5, presented


# --- issue 13: keys a client can send, and roles ----------------------------------------


@pytest.mark.parametrize(
    "key", ["sk-clé-non-ascii", "sk with space", "sk-\u200bzero-width", "sk-tab\tinside"]
)
def test_a_key_no_client_could_send_is_refused_at_config_time(key: str, tmp_path: Path) -> None:
    # Before: a non-ASCII key was accepted and could never log in (headers are latin-1
    # on the wire and the comparison hashed UTF-8).
    from vllama.config import load_settings

    for variable in ("VLLAMA_API_KEYS", "VLLAMA_ADMIN_KEYS"):
        with pytest.raises(ConfigError) as exc:
            load_settings({}, environ={variable: key}, cwd=tmp_path)
        assert "visible ASCII" in str(exc.value) and key not in str(exc.value)
    path = tmp_path / "keys"
    path.write_text(f"x:{key}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc2:
        parse_keys_file(path)
    assert f"{path}:1" in str(exc2.value) and "visible ASCII" in str(exc2.value)
    assert key not in str(exc2.value)


def test_admin_keys_from_settings_file_and_env(tmp_path: Path) -> None:
    from vllama.config import load_settings

    admin_file = tmp_path / "admins"
    admin_file.write_text("ops:sk-ops-file-1\n")
    settings, _ = load_settings(
        {},
        environ={
            "VLLAMA_API_KEYS": "sk-client-1",
            "VLLAMA_ADMIN_KEYS": "sk-admin-env-1",
            "VLLAMA_ADMIN_KEYS_FILE": str(admin_file),
        },
        cwd=tmp_path,
    )
    store = KeyStore.from_settings(settings)
    client = store.check("sk-client-1")
    env_admin = store.check("sk-admin-env-1")
    file_admin = store.check("sk-ops-file-1")
    assert client is not None and env_admin is not None and file_admin is not None
    assert (client.name, env_admin.name, file_admin.name) == ("key0", "admin0", "ops")
    assert not store.is_admin(client) and not store.is_admin(None)
    assert store.is_admin(env_admin) and store.is_admin(file_admin)


def test_without_any_key_everyone_may_administer() -> None:
    store = KeyStore()
    assert store.is_admin(None)  # Ollama's behaviour on the loopback


def test_a_key_cannot_be_both_client_and_admin() -> None:
    with pytest.raises(ConfigError, match="must be different"):
        KeyStore([ALICE], [ApiKey(name="root", key=ALICE.key)])
    with pytest.raises(ConfigError, match="unique"):
        KeyStore([ALICE], [ApiKey(name="alice", key="sk-other-000")])
