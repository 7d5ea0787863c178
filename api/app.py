"""Orders API on Lambda: routes parse the request, call one service function and shape the answer."""
from __future__ import annotations

import os

# Conveyor uses no pydantic plugins; looking for them reads every installed package's metadata at cold start.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

import json

from chalice import Chalice, Response

from conveyor import api_requests, bootstrap
from conveyor.errors import TransientError
from conveyor.observability import CORRELATION_HEADER, get_logger, new_correlation_id
from conveyor.schemas import InvalidRequest
from conveyor.services.ordering import Conflict, NotFound, Unauthorized

# Powertools owns log output; Chalice would add a second, plain-text handler.
app = Chalice(app_name="conveyor-api", configure_logs=False)
logger = get_logger("conveyor-api")


def _json(status: int, body: dict, correlation_id: str, headers: dict | None = None) -> Response:
    return Response(
        body=json.dumps(body, separators=(",", ":")),
        status_code=status,
        headers={"Content-Type": "application/json", CORRELATION_HEADER: correlation_id, **(headers or {})},
    )


def _error(status: int, code: str, message: str, correlation_id: str, field: str) -> Response:
    body = {"error": {"code": code, "message": message, "fields": [{"field": field, "message": message}]}}
    return _json(status, body, correlation_id)


# Chalice answers a wrong method or media type itself, as {"Code", "Message"}: speak our error shape.
FRAMEWORK_ERROR_FIELDS = {405: "method", 415: "Content-Type"}


@app.middleware("http")
def framework_errors_in_our_shape(event, get_response):
    response = get_response(event)
    body = response.body
    if isinstance(body, dict) and set(body) == {"Code", "Message"}:
        field = FRAMEWORK_ERROR_FIELDS.get(response.status_code, "request")
        response.body = {"error": {"code": body["Code"], "message": body["Message"],
                                   "fields": [{"field": field, "message": body["Message"]}]}}
    return response


def handled(route):
    """Authenticate, carry the correlation id, and map service errors to HTTP answers."""

    def wrapper(*args, **kwargs):
        request = app.current_request
        headers = request.headers or {}
        correlation_id = headers.get(CORRELATION_HEADER) or new_correlation_id()
        logger.thread_safe_append_keys(correlation_id=correlation_id)
        try:
            # Behind API Gateway the key was validated under a usage plan and is in the identity.
            identity = (request.context or {}).get("identity") or {}
            client = bootstrap.authenticator().client_for(identity.get("apiKey") or headers.get("x-api-key"))
            status, body, extra = route(client, correlation_id, *args, **kwargs)
            return _json(status, body, correlation_id, extra)
        except Unauthorized as exc:
            return _error(401, "unauthorized", f"{exc}: send a valid X-Api-Key header", correlation_id, "X-Api-Key")
        except InvalidRequest as exc:
            return _json(exc.status, exc.body(), correlation_id)
        except NotFound as exc:
            return _error(404, "not_found", str(exc), correlation_id, "order_id")
        except Conflict as exc:
            return _error(409, "conflict", str(exc), correlation_id, exc.field)
        except TransientError as exc:
            logger.warning("dependency unavailable", extra={"reason": str(exc)[:300]})
            response = _error(503, "unavailable", "a dependency is unavailable; retry with the same Idempotency-Key",
                              correlation_id, "request")
            response.headers["Retry-After"] = "2"
            return response
        except Exception:
            logger.exception("request failed")
            return _error(500, "internal_error", "the request failed; retry with the same Idempotency-Key",
                          correlation_id, "request")
        finally:
            logger.thread_safe_clear_keys()

    wrapper.__name__ = route.__name__
    return wrapper


@app.route("/orders", methods=["POST"], api_key_required=True, content_types=["application/json"])
@handled
def place_order(client, correlation_id):
    request = app.current_request
    command = api_requests.new_order(request.headers.get("idempotency-key"), request.raw_body)
    accepted = bootstrap.order_service().place_order(client, command, correlation_id)
    return 202, accepted, {"Location": f"/orders/{accepted['order_id']}"}


@app.route("/orders", methods=["GET"], api_key_required=True)
@handled
def list_orders(client, correlation_id):
    query = app.current_request.query_params or {}
    page = bootstrap.order_service().list_orders(
        client, api_requests.orders_query(query.get("status"), query.get("limit"), query.get("cursor"))
    )
    return 200, {"orders": page.orders, "next_cursor": api_requests.next_cursor(page.next_after)}, None


@app.route("/orders/{order_id}", methods=["GET"], api_key_required=True)
@handled
def get_order(client, correlation_id, order_id):
    return 200, bootstrap.order_service().get_order(client, api_requests.order_id(order_id)), None


@app.route("/orders/{order_id}/cancel", methods=["POST"], api_key_required=True)
@handled
def cancel_order(client, correlation_id, order_id):
    accepted = bootstrap.order_service().request_cancel(client, api_requests.order_id(order_id), correlation_id)
    return 202, accepted, {"Location": f"/orders/{order_id}"}


@app.route("/health", methods=["GET"])
def health():
    return {"status": "ok"}


@app.route("/openapi.json", methods=["GET"])
def openapi():
    from conveyor.openapi import openapi_document  # builds JSON schemas: only when asked for

    return openapi_document()
