"""The console's web pages: sessions, sign-in, CSRF, roles, and the page blueprints.

Pages are server-rendered and work without JavaScript; htmx and Chart.js only enhance them.
`create_app` calls `install` once; every page reads the signed-in user's actor from `actor()`.
"""
from __future__ import annotations

import hmac
from datetime import UTC, datetime, timedelta
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, g, jsonify, render_template, request
from flask.sessions import SecureCookieSessionInterface
from flask_login import LoginManager, UserMixin, current_user
from flask_wtf.csrf import CSRFError, CSRFProtect
from markupsafe import Markup, escape
from werkzeug.middleware.proxy_fix import ProxyFix

from conveyor.console import context, settings
from conveyor.domain.money import currency_exponent, is_currency
from conveyor.services import users
from conveyor.services.access import Actor, Forbidden, Role

SESSION_HOURS = 12
LEGACY_TOKEN_ACTOR = Actor(name="admin-token", role=Role.ADMIN)


class SessionUser(UserMixin):
    def __init__(self, user: users.ConsoleUser):
        self.user = user
        self.id = user.id
        self.actor = user.actor


class ConsoleSessions(SecureCookieSessionInterface):
    """Signed cookie sessions, Secure whenever the request came over HTTPS, with the signing key read
    on first use (the database may not be up when the app is built)."""

    def __init__(self, secret_key: Callable[[], str]):
        self._secret_key = secret_key

    def open_session(self, app: Flask, request: Any):
        if not wants_page():  # health checks and the bearer API have no session, and need no database for one
            return self.null_session_class()
        return super().open_session(app, request)

    def get_signing_serializer(self, app: Flask):
        if not app.secret_key:
            app.secret_key = self._secret_key()
        return super().get_signing_serializer(app)

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure or super().get_cookie_secure(app)


def database(app_services: Any = None):
    from flask import current_app

    return (app_services or current_app.extensions["conveyor"]).runs.service.database


def actor() -> Actor:
    """Who makes this request: the signed-in user, or the bearer token's user on /api/."""
    if getattr(g, "api_actor", None) is not None:
        return g.api_actor
    if current_user.is_authenticated:
        return current_user.actor
    raise Forbidden("sign in first")


def safe_next(target: str | None) -> str:
    """Only a path on this site: never another host (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


def bearer_actor(header: str) -> Actor | None:
    """The actor for an `Authorization: Bearer` header: a user's API token, or the shared admin token."""
    if not header.startswith("Bearer "):
        return None
    token = header[len("Bearer "):].strip()
    legacy = settings.admin_token()
    if legacy and hmac.compare_digest(token.encode(), legacy.encode()):
        return LEGACY_TOKEN_ACTOR
    return users.actor_for_token(database(), token)


def install(app: Flask, services: Any) -> None:
    from conveyor.console import auth, pages

    if proxies := context.trusted_proxies():
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies)  # type: ignore[method-assign]
    app.session_interface = ConsoleSessions(lambda: _secret_key(services))
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_NAME="conveyor_session",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS), WTF_CSRF_CHECK_DEFAULT=False,
        WTF_CSRF_TIME_LIMIT=SESSION_HOURS * 3600, MAX_CONTENT_LENGTH=None,
    )
    csrf = CSRFProtect(app)
    login = LoginManager(app)
    login.login_view = "auth.login"
    login.login_message = "Sign in to see that page."
    login.session_protection = "basic"

    @login.user_loader
    def load(user_id: str) -> SessionUser | None:
        user = users.get_user(database(services), user_id)
        return SessionUser(user) if user else None

    @app.before_request
    def check_csrf():
        if request.method == "POST" and wants_page():
            csrf.protect()
        return None

    @app.errorhandler(Forbidden)
    def forbidden(exc: Forbidden):
        if request.path.startswith("/api/"):
            return jsonify({"error": {"code": "forbidden", "message": str(exc)}}), 403
        return page_error(403, "Not allowed", str(exc))

    @app.errorhandler(CSRFError)
    def csrf_failed(exc: CSRFError):
        return page_error(400, "Form expired", "The form was stale or not sent from this site. Go back, reload the"
                          " page and try again.")

    app.jinja_env.filters.update(when=when, money=money)
    app.jinja_env.globals.update(Role=Role)

    @app.context_processor
    def current_actor():
        return {"me": current_user.actor if current_user.is_authenticated else None}

    app.register_blueprint(auth.blueprint)
    app.register_blueprint(pages.blueprint)


def _secret_key(services: Any) -> str:
    import os

    return os.environ.get(context.SECRET_KEY_VARIABLE) or users.stored_secret(database(services), "session_secret")


def wants_page() -> bool:
    return not request.path.startswith("/api/") and request.path not in ("/healthz", "/readyz")


def page_error(status: int, title: str, message: str) -> tuple[str, int]:
    return render_template("error.html", title=title, message=message, status=status), status


def when(value: Any) -> Markup:
    """A time as UTC text (readable without JavaScript); the page's script shows it in the viewer's zone."""
    if not value:
        return Markup("—")
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    utc = moment.astimezone(UTC)
    iso = utc.isoformat(timespec="seconds").replace("+00:00", "Z")
    text = utc.strftime("%Y-%m-%d %H:%M:%S UTC")
    return Markup('<time datetime="{0}" title="{1}">{1}</time>').format(escape(iso), escape(text))


def money(amount: Any, currency: str | None) -> str:
    if amount is None:
        return "—"
    if not currency or not is_currency(currency):
        return f"{amount:,}"
    exponent = currency_exponent(currency)
    sign = "-" if amount < 0 else ""
    whole, minor = divmod(abs(int(amount)), 10 ** exponent) if exponent else (abs(int(amount)), 0)
    return f"{sign}{whole:,}" + (f".{minor:0{exponent}d}" if exponent else "") + f" {currency}"

