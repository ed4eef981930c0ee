"""Aliases while the façade runs: those configured plus those `/api/copy` adds.

The pool owns one `Aliases`, built from `settings.aliases`; routes read and change it
through the pool, and the settings stay what was configured (a restart forgets copies).
Aliases added at runtime follow Ollama's name rules (names.is_valid_name: no CR/LF, no
paths, no shell syntax) and are bounded in number (`limit`), so that a client cannot
grow every model list without end.
"""

from __future__ import annotations

from collections.abc import Mapping

from vllama.names import is_valid_name, resolve_alias, strip_latest


class AliasRefused(ValueError):
    """The alias cannot be added; the message says why (safe to show the client)."""


class Aliases:
    def __init__(self, configured: Mapping[str, str], *, limit: int = 256) -> None:
        self._targets = dict(configured)
        self._limit = limit
        self._added: set[str] = set()  # at runtime (bounded); the configured ones are not

    def resolve(self, name: str) -> str:
        """The engine's model name for `name`, with or without `:latest`."""
        return resolve_alias(self._targets, name)

    def add(self, alias: str, target: str) -> None:
        """Add or repoint `alias` (AliasRefused for a name Ollama would refuse, or past the
        limit of runtime aliases)."""
        if not is_valid_name(alias):
            raise AliasRefused(
                "invalid model name: use [namespace/]model[:tag] with letters, digits, "
                "'_', '-' and '.' (at most 80 characters a part), as Ollama does"
            )
        key = strip_latest(alias)
        if key not in self._targets and len(self._added) >= self._limit:
            raise AliasRefused(
                f"too many aliases: at most {self._limit} can be added while the server runs "
                "(max_aliases); delete some, or put them under [aliases] in the config"
            )
        self._targets[key] = target
        if key not in self._added:
            self._added.add(key)

    def remove(self, name: str) -> bool:
        """Forget the alias `name` (with or without `:latest`); False when it is none."""
        key = strip_latest(name)
        self._added.discard(key)
        return self._targets.pop(key, None) is not None

    def __contains__(self, name: object) -> bool:
        """`name` (with or without `:latest`) is an alias."""
        return isinstance(name, str) and strip_latest(name) in self._targets

    def of(self, target: str) -> list[str]:
        """Every alias that points at `target`, sorted."""
        return sorted(alias for alias, t in self._targets.items() if t == target)

    def items(self) -> list[tuple[str, str]]:
        """(alias, target) pairs, configured ones first."""
        return list(self._targets.items())
