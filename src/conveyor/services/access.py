"""Who acts in the console, and what their role lets them do. Every console service checks it."""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Role(IntEnum):
    """Ordered: each role may do all that the ones below it may."""

    VIEWER = 1  # reads everything except users, tokens and the audit log; changes nothing
    OPERATOR = 2  # also acts: cancels, adjusts stock, redrives, reconciles, resolves
    ADMIN = 3  # also manages users and API clients, and reads the audit log

    @classmethod
    def parse(cls, name: str) -> Role:
        try:
            return cls[name.strip().upper()]
        except KeyError:
            raise ValueError(f"role must be one of {', '.join(r.label for r in cls)}, not {name!r}") from None

    @property
    def label(self) -> str:
        return self.name.lower()


class Forbidden(PermissionError):
    """The actor's role does not allow the action."""


@dataclass(frozen=True)
class Actor:
    name: str
    role: Role
    user_id: str | None = None  # None for the CLI and the legacy shared admin token

    def can(self, role: Role) -> bool:
        return self.role >= role

    def require(self, role: Role, action: str) -> None:
        if not self.can(role):
            raise Forbidden(f"{self.name} is a {self.role.label} and may not {action}: it needs the {role.label} role")
