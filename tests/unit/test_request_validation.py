"""parse_order_request: strict POST /orders validation, and the OpenAPI document built from the same model."""
from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from conveyor.openapi import openapi_document
from conveyor.schemas import (
    MAX_AMOUNT,
    MAX_BODY_BYTES,
    MAX_LINES,
    MAX_QUANTITY,
    InvalidRequest,
    OrderRequest,
    field_path,
    parse_order_request,
)
from conveyor.api_requests import MAX_IDEMPOTENCY_KEY, MAX_PAGE

VALID: dict[str, Any] = {
    "currency": "USD",
    "lines": [{"sku": "SKU-1", "quantity": 2}, {"sku": "sku.2:b_c", "quantity": 1}],
    "payment": {"provider": "stripe", "reference": "pi_123", "amount": 2500},
    "customer": {"name": "Ada Lovelace", "email": "ada@example.com"},
    "shipping_address": {"line1": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US"},
}


def encode(document: Any) -> bytes:
    return json.dumps(document).encode()


def mutated(path: str, value: Any = ..., *, delete: bool = False) -> dict[str, Any]:
    """A copy of VALID with the dotted path (list indexes as numbers) set or removed."""
    document = copy.deepcopy(VALID)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    target: Any = document
    for part in parents:
        target = target[part]
    if delete:
        del target[last]
    else:
        target[last] = value
    return document


def refusal(raw: bytes | None) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_order_request(raw)
    return info.value


def test_a_valid_body_passes():
    order = parse_order_request(encode(VALID))
    assert order.currency == "USD"
    assert [(l.sku, l.quantity) for l in order.lines] == [("SKU-1", 2), ("sku.2:b_c", 1)]
    assert order.payment.amount == 2500
    assert order.shipping_address is not None and order.shipping_address.country == "US"
    assert order.model_dump(mode="json", exclude_none=True) == VALID


def test_a_minimal_body_passes():
    minimal = {"currency": "JPY", "lines": [{"sku": "A", "quantity": 1}],
               "payment": {"provider": "generic", "reference": "r", "amount": 0}}
    order = parse_order_request(encode(minimal))
    assert order.customer is None and order.shipping_address is None


def test_boundaries_pass():
    document = mutated("lines", [{"sku": f"S{i}", "quantity": MAX_QUANTITY} for i in range(MAX_LINES)])
    document["payment"]["amount"] = MAX_AMOUNT
    order = parse_order_request(encode(document))
    assert len(order.lines) == MAX_LINES
    assert order.payment.amount == MAX_AMOUNT


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({**VALID, "discount": 5}, "discount"),
        (mutated("lines.0.colour", "red"), "lines[0].colour"),
        (mutated("payment.card", "4242"), "payment.card"),
        (mutated("customer.phone", "555"), "customer.phone"),
        (mutated("shipping_address.zip", "12345"), "shipping_address.zip"),
        (mutated("lines", []), "lines"),
        (mutated("lines", [{"sku": "A", "quantity": 1}] * (MAX_LINES + 1)), "lines"),
        (mutated("lines", None), "lines"),
        (mutated("lines", delete=True), "lines"),
        (mutated("lines.1.quantity", 0), "lines[1].quantity"),
        (mutated("lines.0.quantity", MAX_QUANTITY + 1), "lines[0].quantity"),
        (mutated("lines.0.quantity", -1), "lines[0].quantity"),
        (mutated("lines.0.quantity", "2"), "lines[0].quantity"),
        (mutated("lines.0.quantity", 2.5), "lines[0].quantity"),
        (mutated("lines.0.quantity", 2.0), "lines[0].quantity"),
        (mutated("lines.0.quantity", True), "lines[0].quantity"),
        (mutated("lines.0.quantity", delete=True), "lines[0].quantity"),
        (mutated("lines.0.sku", ""), "lines[0].sku"),
        (mutated("lines.0.sku", "has space"), "lines[0].sku"),
        (mutated("lines.0.sku", "x" * 65), "lines[0].sku"),
        (mutated("currency", "usd"), "currency"),
        (mutated("currency", "XXQ"), "currency"),
        (mutated("currency", "US"), "currency"),
        (mutated("currency", 840), "currency"),
        (mutated("payment.amount", -1), "payment.amount"),
        (mutated("payment.amount", MAX_AMOUNT + 1), "payment.amount"),
        (mutated("payment.amount", 10**40), "payment.amount"),
        (mutated("payment.amount", 12.5), "payment.amount"),
        (mutated("payment.amount", "2500"), "payment.amount"),
        (mutated("payment.provider", "paypal"), "payment.provider"),
        (mutated("payment.provider", "Stripe"), "payment.provider"),
        (mutated("payment.reference", ""), "payment.reference"),
        (mutated("payment", delete=True), "payment"),
        (mutated("customer.email", "not-an-email"), "customer.email"),
        (mutated("shipping_address.country", "usa"), "shipping_address.country"),
    ],
)
def test_invalid_fields_are_named(document, field):
    error = refusal(encode(document))
    assert error.status == 422
    assert error.code == "validation_error"
    assert field in [f.field for f in error.fields]
    assert all(f.message for f in error.fields)
    body = error.body()
    assert body["error"]["code"] == "validation_error"
    assert field in [f["field"] for f in body["error"]["fields"]]


def test_every_offending_field_is_reported():
    document = mutated("lines.0.quantity", 0)
    document["currency"] = "usd"
    document["payment"]["provider"] = "paypal"
    fields = {f.field for f in refusal(encode(document)).fields}
    assert fields == {"currency", "lines[0].quantity", "payment.provider"}


def test_a_body_over_64_kib_is_413():
    raw = encode(VALID)
    assert parse_order_request(raw + b" " * (MAX_BODY_BYTES - len(raw))).currency == "USD"  # exactly the limit
    error = refusal(raw + b" " * (MAX_BODY_BYTES - len(raw) + 1))
    assert error.status == 413
    assert error.code == "body_too_large"
    assert [f.field for f in error.fields] == ["body"]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"currency": "\xff\xfe"}',
        b'{"currency": "USD", "lines": [}',
        b'{"currency": "USD",',
        b"not json",
        b"{'currency': 'USD'}",
        b"[" * 30000 + b"]" * 30000,  # nested deeper than the parser recurses, yet under 64 KiB
        b'{"customer": ' + b'{"a":' * 8000 + b"1" + b"}" * 8001,
        encode(VALID).replace(b'"amount": 2500', b'"amount": ' + b"1" * 5000),
    ],
    ids=["bad-utf8", "bad-json", "truncated", "text", "single-quotes", "deep-array", "deep-object", "5000-digits"],
)
def test_undecodable_bodies_are_400(raw):
    assert len(raw) <= MAX_BODY_BYTES
    error = refusal(raw)
    assert error.status == 400
    assert error.code == "invalid_json"
    assert [f.field for f in error.fields] == ["body"]


def test_a_utf16_body_is_refused_as_not_utf8():
    error = refusal(json.dumps(VALID).encode("utf-16"))
    assert (error.status, error.code) == (400, "invalid_json")


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (mutated("payment.reference", "pi_\x00"), "payment.reference"),
        (mutated("customer", {"name": "Ada\x00"}), "customer.name"),
        (mutated("lines", [{"sku": "A-1", "quantity": 1, "x\x00": 1}]), "lines[0].x\x00"),
    ],
)
def test_nul_characters_are_refused_naming_the_field(document, field):
    error = refusal(encode(document))
    assert error.status == 422
    assert [f.field for f in error.fields] == [field]


def test_a_nesting_just_under_the_parser_limit_is_refused_cleanly():
    raw = b'{"customer": ' + b"[" * 990 + b"]" * 990 + b"}"
    error = refusal(raw)
    assert error.status in (400, 422)
    assert error.fields


@pytest.mark.parametrize("raw", [None, b""])
def test_a_missing_body_is_400(raw):
    error = refusal(raw)
    assert error.status == 400
    assert [f.field for f in error.fields] == ["body"]


@pytest.mark.parametrize("document", [[VALID], "order", 42, None])
def test_a_body_that_is_not_an_object_is_refused(document):
    error = refusal(encode(document))
    assert error.status == 422
    assert [f.field for f in error.fields] == ["body"]


def test_moderately_nested_junk_is_refused_cleanly():
    raw = b'{"customer": {"name": ' + b"[" * 500 + b"]" * 500 + b"}}"
    doc = json.loads(raw)  # within the recursion limit: it reaches validation
    assert isinstance(doc["customer"]["name"], list)
    error = refusal(raw)
    assert error.status == 422
    assert "customer.name" in [f.field for f in error.fields]


@pytest.mark.parametrize(
    ("location", "path"),
    [((), "body"), (("currency",), "currency"), (("lines", 0, "quantity"), "lines[0].quantity"),
     (("payment", "amount"), "payment.amount"), (("lines", 3), "lines[3]")],
)
def test_field_path(location, path):
    assert field_path(location) == path


# --- OpenAPI ------------------------------------------------------------------------------


def _walk_refs(node: Any):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _walk_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk_refs(value)


def test_openapi_request_schema_is_generated_from_the_model():
    document = openapi_document()
    components = document["components"]["schemas"]
    generated = OrderRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    definitions = generated.pop("$defs")
    assert components["OrderRequest"] == generated
    for name, schema in definitions.items():
        assert components[name] == schema

    post = document["paths"]["/orders"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/OrderRequest"}


def test_openapi_request_schema_is_strict():
    components = openapi_document()["components"]["schemas"]
    for name in ("OrderRequest", "OrderLineRequest", "PaymentRequest", "Customer", "Address"):
        assert components[name]["additionalProperties"] is False, name
    order = components["OrderRequest"]
    assert set(order["required"]) == {"currency", "lines", "payment"}
    assert order["properties"]["lines"]["minItems"] == 1
    assert order["properties"]["lines"]["maxItems"] == MAX_LINES
    quantity = components["OrderLineRequest"]["properties"]["quantity"]
    assert quantity == {**quantity, "type": "integer", "minimum": 1, "maximum": MAX_QUANTITY}
    amount = components["PaymentRequest"]["properties"]["amount"]
    assert (amount["type"], amount["minimum"], amount["maximum"]) == ("integer", 0, MAX_AMOUNT)
    assert components["PaymentRequest"]["properties"]["provider"]["enum"] == ["stripe", "adyen", "generic"]


def test_openapi_document_is_self_consistent():
    document = openapi_document()
    components = document["components"]["schemas"]
    for ref in _walk_refs(document):
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[1] in components, ref
    post = document["paths"]["/orders"]["post"]
    key = next(p for p in post["parameters"] if p["name"] == "Idempotency-Key")
    assert key["required"] is True and key["schema"]["maxLength"] == MAX_IDEMPOTENCY_KEY
    assert {"202", "400", "401", "409", "413", "422"} <= set(post["responses"])
    limit = next(p for p in document["paths"]["/orders"]["get"]["parameters"] if p["name"] == "limit")
    assert limit["schema"]["maximum"] == MAX_PAGE
    json.dumps(document)  # serialisable as served
