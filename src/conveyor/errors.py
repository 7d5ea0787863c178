"""The errors Conveyor's adapters raise, whatever the driver or service behind them.

Services catch only these; entrypoints map them to an answer (HTTP 503, a batch item failure).
"""
from __future__ import annotations


class TransientError(Exception):
    """Nothing was applied, or it is unknown whether it was, and the same work may succeed later:
    the database or queue was unreachable, resuming, throttled, or its answer was lost."""

    def __init__(self, message: str, sqlstate: str | None = None):
        super().__init__(message)
        self.sqlstate = sqlstate


class RetryableConflict(TransientError):
    """A concurrent writer won a race: a deadlock, a serialization failure, a stock constraint.
    Nothing was applied; read again, decide again and run the same work at once."""

    def __init__(self, message: str, reason: str, sqlstate: str | None = None):
        super().__init__(message, sqlstate)
        self.reason = reason


class PermanentError(Exception):
    """Refused for a reason that running the same work again will not fix: a statement the database
    rejects, bad configuration, missing permissions. `sqlstate` is PostgreSQL's code when it has one."""

    def __init__(self, message: str, sqlstate: str | None = None):
        super().__init__(message)
        self.sqlstate = sqlstate


# SQLSTATEs that mean "run the same work again": nothing was applied.
RETRYABLE_SQLSTATES = {
    "40001": "serialization failure",
    "40P01": "deadlock",
    "23514": "stock constraint raced by a concurrent worker",
}


# Classes of SQLSTATE where the same statement may succeed later (what psycopg calls an OperationalError):
# connection exception, transaction rollback, insufficient resources, program limit exceeded, object not
# in prerequisite state (a lock not available), operator intervention (shutdown, cancel), system error.
TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "54", "55", "57", "58"})


def database_error(message: str, sqlstate: str | None) -> TransientError | PermanentError:
    """The neutral error for a statement PostgreSQL refused with `sqlstate`, on either path."""
    state = sqlstate or ""
    if state in RETRYABLE_SQLSTATES:
        return RetryableConflict(message, RETRYABLE_SQLSTATES[state], state)
    if state[:2] in TRANSIENT_SQLSTATE_CLASSES:
        return TransientError(message, state)
    return PermanentError(message, sqlstate)
