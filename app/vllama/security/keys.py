"""API keys: loaded from settings (`api_keys`, `VLLAMA_API_KEYS`; `admin_keys`,
`VLLAMA_ADMIN_KEYS`) and keys files, checked in constant time against every configured key.

Two roles: client keys infer and read; admin keys may also pull, delete, copy/alias and
change routing (`KeyStore.is_admin`). With no key at all, authentication is off and every
request may do everything, as with Ollama on the loopback.

Keys file format, one key per line (`#` comments and blank lines ignored):

    name:key[:max_concurrency[:priority]]

e.g. `alice:sk-alice-123`, `batch:sk-batch-456:4:10`, `ci:sk-ci-789::-5` (no concurrency
limit, priority -5). Names are what logs and metrics show; keys never leave this module.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vllama.config import ApiKey, ConfigError, Settings, check_key_text

__all__ = ["ApiKey", "KeyStore", "Refused", "parse_keys_file"]

RawHeaders = Sequence[tuple[bytes, bytes]]


@dataclass(frozen=True)
class Refused:
    """Authentication failed; `reason` is safe to show the client (it never echoes the key)."""

    reason: str


MISSING = Refused("missing API key: send it as `Authorization: Bearer <key>` or `x-api-key`")
INVALID = Refused("invalid API key: check the key, or ask the operator for a valid one")


def _digest(secret: str) -> bytes:
    # Equal-length digests: compare_digest then leaks neither content nor key length.
    return hashlib.sha256(secret.encode()).digest()


def _int_or_none(field: str, what: str, where: str) -> int | None:
    if field.strip() == "":
        return None
    try:
        return int(field)
    except ValueError:
        raise ConfigError(f"{where}: {what} {field!r} is not an integer") from None


def parse_keys_file(path: Path, setting: str = "api_keys_file") -> list[ApiKey]:
    """Parse `name:key[:max_concurrency[:priority]]` lines; ConfigError naming the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"{setting} {path}: cannot read it ({exc.strerror}); fix the path or unset it"
        ) from exc
    keys: list[ApiKey] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{lineno}"
        parts = line.split(":")
        if len(parts) < 2 or len(parts) > 4 or not parts[0].strip() or not parts[1].strip():
            raise ConfigError(
                f"{where}: expected `name:key[:max_concurrency[:priority]]` (the line is not shown)"
            )
        max_conc = _int_or_none(parts[2], "max_concurrency", where) if len(parts) > 2 else None
        if max_conc is not None and max_conc < 1:
            raise ConfigError(f"{where}: max_concurrency must be at least 1")
        priority = _int_or_none(parts[3], "priority", where) if len(parts) > 3 else None
        problem = check_key_text(parts[1].strip())
        if problem is not None:
            raise ConfigError(f"{where}: {problem}")
        keys.append(
            ApiKey(
                name=parts[0].strip(),
                key=parts[1].strip(),
                max_concurrency=max_conc,
                priority=priority,
            )
        )
    return keys


class KeyStore:
    """The configured keys. Empty store: authentication is off and every request passes."""

    def __init__(self, keys: Iterable[ApiKey] = (), admin_keys: Iterable[ApiKey] = ()) -> None:
        self._keys: list[tuple[bytes, ApiKey]] = []
        self._admins: set[str] = set()
        names: set[str] = set()
        digests: set[bytes] = set()
        for admin, group in ((False, keys), (True, admin_keys)):
            for key in group:
                if key.name in names:
                    raise ConfigError(
                        f"API key name {key.name!r} is used twice; names must be unique "
                        "across api_keys and admin_keys"
                    )
                digest = _digest(key.key)
                if digest in digests:
                    raise ConfigError(
                        f"API key {key.name!r} has the same key as another one; every key "
                        "(client or admin) must be different"
                    )
                names.add(key.name)
                digests.add(digest)
                self._keys.append((digest, key))
                if admin:
                    self._admins.add(key.name)

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyStore:
        keys = list(settings.api_keys)
        if settings.api_keys_file is not None:
            keys.extend(parse_keys_file(settings.api_keys_file))
        admins = list(settings.admin_keys)
        if settings.admin_keys_file is not None:
            admins.extend(parse_keys_file(settings.admin_keys_file, "admin_keys_file"))
        return cls(keys, admins)

    def is_admin(self, key: ApiKey | None) -> bool:
        """May `key` (None: no key sent) run administrative operations? Without any
        configured key everyone may (Ollama's behaviour); otherwise admin keys only."""
        if not self._keys:
            return True
        return key is not None and key.name in self._admins

    @property
    def has_admins(self) -> bool:
        return bool(self._admins)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def names(self) -> list[str]:
        return [k.name for _, k in self._keys]

    def limited_names(self) -> list[str]:
        """Names of the keys with a `max_concurrency`."""
        return [k.name for _, k in self._keys if k.max_concurrency is not None]

    def check(self, presented: str) -> ApiKey | None:
        """The key matching `presented`, comparing against every key (constant time)."""
        digest = _digest(presented)
        found: ApiKey | None = None
        for known, key in self._keys:
            if hmac.compare_digest(known, digest) and found is None:
                found = key
        return found

    def authenticate(self, headers: RawHeaders | Mapping[str, str]) -> ApiKey | Refused | None:
        """ApiKey when a valid key was sent; None when authentication is off; else Refused.

        `headers` are raw ASGI headers (lower-case bytes names) or a str mapping.
        """
        if not self._keys:
            return None
        presented = _presented_key(headers)
        if presented is None:
            return MISSING
        key = self.check(presented)
        return key if key is not None else INVALID


def _presented_key(headers: RawHeaders | Mapping[str, str]) -> str | None:
    if isinstance(headers, Mapping):
        auth = headers.get("authorization") or headers.get("Authorization")
        x_key = headers.get("x-api-key") or headers.get("X-Api-Key")
    else:
        auth = x_key = None
        for name, value in headers:
            if name == b"authorization":
                auth = value.decode("latin-1")
            elif name == b"x-api-key":
                x_key = value.decode("latin-1")
    if auth:
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    if x_key and x_key.strip():
        return x_key.strip()
    return None
