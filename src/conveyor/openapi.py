"""The OpenAPI document, generated from the same models that validate requests."""
from __future__ import annotations

import functools
from typing import Any

from pydantic.json_schema import models_json_schema

from conveyor.schemas import ErrorResponse, OrderAccepted, OrderPage, OrderRequest, OrderView


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_response(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


ERRORS = {
    "400": _json_response("Malformed request; `error.fields` names the offending field", "ErrorResponse"),
    "401": _json_response("Missing or unknown API key", "ErrorResponse"),
}
ORDER_ID = {"name": "order_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}


@functools.cache
def openapi_document() -> dict[str, Any]:
    _, definitions = models_json_schema(
        [(m, "validation") for m in (OrderRequest, OrderAccepted, OrderView, OrderPage, ErrorResponse)],
        ref_template="#/components/schemas/{model}",
    )
    not_found = _json_response("No such order for this client", "ErrorResponse")
    conflict = _json_response("Contradicts an order already known", "ErrorResponse")
    return {
        "openapi": "3.1.0",
        "info": {"title": "Conveyor orders API", "version": "1"},
        "components": {
            "schemas": definitions["$defs"],
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"}},
        },
        "security": [{"apiKey": []}],
        "paths": {
            "/orders": {
                "post": {
                    "operationId": "placeOrder",
                    "parameters": [
                        {"name": "Idempotency-Key", "in": "header", "required": True,
                         "schema": {"type": "string", "minLength": 1, "maxLength": 255}},
                    ],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("OrderRequest")}}},
                    "responses": {
                        "202": _json_response("Accepted and queued", "OrderAccepted"),
                        **ERRORS,
                        "409": conflict,
                        "413": _json_response("Body over 64 KiB", "ErrorResponse"),
                        "422": _json_response("Invalid order; `error.fields` names each field", "ErrorResponse"),
                    },
                },
                "get": {
                    "operationId": "listOrders",
                    "parameters": [
                        {"name": "status", "in": "query",
                         "schema": {"type": "string", "enum": ["PENDING", "CONFIRMED", "REJECTED", "CANCELLED"]}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {"200": _json_response("A page of orders, newest first", "OrderPage"), **ERRORS},
                },
            },
            "/orders/{order_id}": {
                "get": {
                    "operationId": "getOrder",
                    "parameters": [ORDER_ID],
                    "responses": {"200": _json_response("The order", "OrderView"), **ERRORS, "404": not_found},
                }
            },
            "/orders/{order_id}/cancel": {
                "post": {
                    "operationId": "cancelOrder",
                    "parameters": [ORDER_ID],
                    "responses": {
                        "202": _json_response("Cancellation queued", "OrderAccepted"),
                        **ERRORS,
                        "404": not_found,
                        "409": conflict,
                    },
                }
            },
            "/health": {"get": {"operationId": "health", "security": [], "responses": {"200": {"description": "Alive"}}}},
        },
    }
