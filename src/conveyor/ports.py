"""What the services need from the outside world. Adapters implement these; test fakes do too."""
from __future__ import annotations

import uuid
from contextlib import AbstractContextManager
from typing import Any, Protocol

from conveyor.domain.orders import BatchPlan, CatalogItem, KnownOrder, PaymentKey

Params = dict[str, Any]


class Database(Protocol):
    """Runs Conveyor's statements, each one round trip and atomic on its own.

    Parameters are only str, int, bool and None, cast in SQL (`CAST(:x AS jsonb)`); rich results
    come back as JSON text. Implemented over a direct connection (`conveyor.adapters.database`) and
    over the RDS Data API (`conveyor.dataapi.client`). Failures are `conveyor.errors`' errors.
    """

    def pinned(self) -> AbstractContextManager[None]:
        """Run the block's statements on one connection, where there is one to keep."""
        ...

    def fetch_json(self, sql: str, params: Params | None = None) -> Any:
        """A statement that returns one row holding one JSON text column, decoded."""
        ...

    def fetch_json_rows(self, sql: str, params: Params | None = None) -> list[Any]:
        """A statement whose rows each hold one JSON text column, decoded."""
        ...

    def execute(self, sql: str, params: Params | list[Params] | None = None) -> int:
        """A statement run for its effect (once per parameter set); the rows it changed, or -1 if unknown."""
        ...

    def dispose(self) -> None:
        ...


class OrderStore(Protocol):
    """Orders, the catalog and clients, as the services read and write them."""

    def pinned(self) -> AbstractContextManager[None]: ...

    def read_batch_state(
        self, order_ids: list[uuid.UUID], skus: list[str], payments: list[PaymentKey]
    ) -> tuple[dict[str, CatalogItem], dict[uuid.UUID, KnownOrder], dict[PaymentKey, uuid.UUID]]:
        """The catalog rows, the known orders, and which order holds each payment reference asked for."""
        ...

    def apply(self, plan: BatchPlan) -> dict[str, int]: ...

    def get_order(self, client_id: uuid.UUID, order_id: uuid.UUID) -> dict[str, Any] | None: ...

    def get_order_summary(self, client_id: uuid.UUID, order_id: uuid.UUID) -> dict[str, Any] | None: ...

    def list_orders(
        self, client_id: uuid.UUID, *, status: str | None, limit: int, after: tuple[str, str] | None
    ) -> list[dict[str, Any]]: ...

    def find_client(self, key_hash: str) -> dict[str, Any] | None: ...


class MessageQueue(Protocol):
    """The orders queue: `send` raises `conveyor.errors.TransientError` when it cannot be reached."""

    def send(self, message: dict[str, Any], correlation_id: str) -> str: ...


class Logger(Protocol):
    def info(self, msg: str, *args: Any, **kwargs: Any) -> Any: ...

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> Any: ...

    def error(self, msg: str, *args: Any, **kwargs: Any) -> Any: ...
