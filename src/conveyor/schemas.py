"""Request and message models: one definition validates input and generates the OpenAPI document."""
from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

from conveyor.domain.money import is_currency

MAX_BODY_BYTES = 64 * 1024
MAX_LINES = 100
MAX_QUANTITY = 1000
MAX_AMOUNT = 10**15  # minor units; far above any real order, far below bigint


def _known_currency(code: str) -> str:
    if not is_currency(code):
        raise ValueError(f"{code!r} is not an ISO 4217 currency code")
    return code


CurrencyCode = Annotated[
    str, StringConstraints(pattern=r"^[A-Z]{3}$"), AfterValidator(_known_currency)
]
Sku = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OrderLineRequest(Strict):
    sku: Sku
    quantity: Annotated[StrictInt, Field(ge=1, le=MAX_QUANTITY)]


class PaymentRequest(Strict):
    provider: Literal["stripe", "adyen", "generic"]
    reference: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    amount: Annotated[StrictInt, Field(ge=0, le=MAX_AMOUNT, description="Minor units of the order currency")]


class Customer(Strict):
    name: ShortText | None = None
    email: Annotated[str, StringConstraints(max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")] | None = None


class Address(Strict):
    line1: ShortText
    line2: ShortText | None = None
    city: ShortText
    postal_code: Annotated[str, StringConstraints(min_length=1, max_length=20)]
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")] = Field(
        description="ISO 3166-1 alpha-2"
    )


class OrderRequest(Strict):
    """POST /orders body."""

    currency: CurrencyCode
    lines: Annotated[list[OrderLineRequest], Field(min_length=1, max_length=MAX_LINES)]
    payment: PaymentRequest
    customer: Customer | None = None
    shipping_address: Address | None = None


class OrderAccepted(BaseModel):
    order_id: UUID
    status: Literal["PENDING", "CONFIRMED", "REJECTED", "CANCELLED"]


class FieldError(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    code: str
    message: str
    fields: list[FieldError] = []


class ErrorResponse(BaseModel):
    error: ErrorBody


class OrderLineView(BaseModel):
    line_no: int
    sku: str
    quantity: int
    unit_price: int | None
    line_total: int | None


class OrderView(BaseModel):
    order_id: UUID
    status: Literal["PENDING", "CONFIRMED", "REJECTED", "CANCELLED"]
    currency: str | None
    total_amount: int | None
    payment: PaymentRequest | None
    rejection_reason: str | None
    details: dict[str, Any]
    accepted_at: datetime | None
    cancel_requested_at: datetime | None
    created_at: datetime
    updated_at: datetime
    lines: list[OrderLineView]


class OrderPage(BaseModel):
    orders: list[OrderView]
    next_cursor: str | None


# --- Queue messages: what the API sends and the worker accepts. ---

SCHEMA_VERSION = 1


class PlaceOrderMessage(Strict):
    schema_version: Literal[1]
    type: Literal["order.place"]
    order_id: UUID
    client_id: UUID
    idempotency_key: str
    fingerprint: str
    order: OrderRequest
    accepted_at: AwareDatetime


class CancelOrderMessage(Strict):
    schema_version: Literal[1]
    type: Literal["order.cancel"]
    order_id: UUID
    client_id: UUID
    requested_at: AwareDatetime


QueueMessage: TypeAdapter[PlaceOrderMessage | CancelOrderMessage] = TypeAdapter(
    Annotated[PlaceOrderMessage | CancelOrderMessage, Field(discriminator="type")]
)


class InvalidRequest(ValueError):
    """Input the API refuses; carries the offending fields."""

    def __init__(self, status: int, code: str, message: str, fields: list[FieldError] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.fields = fields or []

    def body(self) -> dict[str, Any]:
        return ErrorResponse(
            error=ErrorBody(code=self.code, message=str(self), fields=self.fields)
        ).model_dump()


def field_path(location: tuple[int | str, ...]) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


def _find_nul(value: Any, location: tuple[int | str, ...]) -> tuple[int | str, ...] | None:
    if isinstance(value, str):
        return location if "\x00" in value else None
    items: Iterable[tuple[Any, Any]]
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        if isinstance(key, str) and "\x00" in key:
            return (*location, key)
        found = _find_nul(item, (*location, key))
        if found is not None:
            return found
    return None


def parse_order_request(raw: bytes | None) -> OrderRequest:
    """Validate a POST /orders body strictly, naming every offending field."""
    if not raw:
        raise InvalidRequest(
            400, "invalid_body", "the request body must be a JSON object",
            [FieldError(field="body", message="missing")],
        )
    if len(raw) > MAX_BODY_BYTES:
        raise InvalidRequest(
            413, "body_too_large", f"the request body exceeds {MAX_BODY_BYTES} bytes",
            [FieldError(field="body", message=f"{len(raw)} bytes; the limit is {MAX_BODY_BYTES}")],
        )
    try:
        # Decoded explicitly: json.loads(bytes) would also accept UTF-16 and UTF-32.
        document = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8, bad JSON, integers too long to parse
        raise InvalidRequest(
            400, "invalid_json", "the request body is not valid UTF-8 JSON",
            [FieldError(field="body", message=str(exc)[:200])],
        ) from None
    try:
        nul_at = _find_nul(document, ())
    except RecursionError:
        raise InvalidRequest(400, "invalid_json", "the request body is nested too deeply",
                             [FieldError(field="body", message="nested too deeply")]) from None
    if nul_at is not None:
        # PostgreSQL text cannot hold U+0000: refuse it here rather than fail in the worker.
        raise InvalidRequest(422, "validation_error", "the order is invalid",
                             [FieldError(field=field_path(nul_at), message="must not contain U+0000")])
    try:
        return OrderRequest.model_validate(document)
    except ValidationError as exc:
        fields = [
            FieldError(field=field_path(error["loc"]), message=error["msg"])
            for error in exc.errors(include_url=False, include_input=False)
        ]
        raise InvalidRequest(422, "validation_error", "the order is invalid", fields) from None
