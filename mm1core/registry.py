"""Registries of the choices a config names (connectors, stems, encoder objectives, positions): each choice declared
once, with where its implementation lives and what it needs of the rest of the config.

Torch-free: an entry names its implementation as "module:attribute" and imports it only when something is built, so
the planner validates thousands of configs without torch. A config is checked against an entry's `check`, which says
why this config cannot use the choice (or None); the builders look the implementation up here too, so a name that
validates is always one that builds. Adding a choice is its implementation's file and one line in the registry.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["Choice", "Registry"]


@dataclass(frozen=True)
class Choice:
    name: str
    implementation: str = ""  # "package.module:attribute", imported on first use; "" where nothing is built
    check: Callable[..., str | None] | None = None  # why a config cannot use this choice, or None
    spec: Any = None  # what else the kind of choice declares about this one (e.g. a task kind's file columns)

    def load(self) -> Any:
        if not self.implementation:
            raise LookupError(f"{self.name!r} has no implementation to build")
        module, _, attribute = self.implementation.partition(":")
        return getattr(importlib.import_module(module), attribute)


class Registry:
    """The choices of one kind, in declaration order."""

    def __init__(self, kind: str, choices: Iterable[Choice]) -> None:
        self.kind = kind
        self._choices = {choice.name: choice for choice in choices}

    def __contains__(self, name: object) -> bool:
        return name in self._choices

    def __iter__(self) -> Iterator[str]:
        return iter(self._choices)

    def __len__(self) -> int:
        return len(self._choices)

    def __getitem__(self, name: str) -> Choice:
        if name not in self._choices:
            raise ValueError(self.unknown(name))
        return self._choices[name]

    def unknown(self, name: str) -> str:
        """The message for a name that is not registered, with the closest one."""
        close = difflib.get_close_matches(str(name), list(self._choices), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}{hint} (known: {', '.join(self._choices)})"

    def problem(self, name: str, *args: Any) -> str | None:
        """Why `name` cannot be used here: not registered, or its check's objection to `args`; None if it can."""
        if name not in self._choices:
            return self.unknown(name)
        check = self._choices[name].check
        return check(*args) if check else None

    def load(self, name: str) -> Any:
        return self[name].load()
