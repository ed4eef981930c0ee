"""Aliases while the façade runs: those configured plus those `/api/copy` adds.

The pool owns one `Aliases`, built from `settings.aliases`; routes read and change it
through the pool, and the settings stay what was configured (a restart forgets copies).
"""

from __future__ import annotations

from collections.abc import Mapping

from vllama.names import resolve_alias, strip_latest


class Aliases:
    def __init__(self, configured: Mapping[str, str]) -> None:
        self._targets = dict(configured)

    def resolve(self, name: str) -> str:
        """The engine's model name for `name`, with or without `:latest`."""
        return resolve_alias(self._targets, name)

    def add(self, alias: str, target: str) -> None:
        self._targets[strip_latest(alias)] = target

    def remove(self, name: str) -> bool:
        """Forget the alias `name` (with or without `:latest`); False when it is none."""
        return self._targets.pop(strip_latest(name), None) is not None

    def of(self, target: str) -> list[str]:
        """Every alias that points at `target`, sorted."""
        return sorted(alias for alias, t in self._targets.items() if t == target)

    def items(self) -> list[tuple[str, str]]:
        """(alias, target) pairs, configured ones first."""
        return list(self._targets.items())
