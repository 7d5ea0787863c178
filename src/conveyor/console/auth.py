"""Sign-in, sign-out, your API tokens, and (for admins) users."""
from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required, login_user, logout_user

from conveyor.console.web import SessionUser, actor, database, safe_next
from conveyor.services import users
from conveyor.services.access import Role

blueprint = Blueprint("auth", __name__)


@blueprint.route("/login", methods=["GET", "POST"])
def login():
    target = safe_next(request.values.get("next"))
    if current_user.is_authenticated:
        return redirect(target)
    if request.method == "GET":
        return render_template("login.html", next=target)
    try:
        user = users.authenticate(database(), request.form.get("name", ""), request.form.get("password", ""),
                                  request.remote_addr or "unknown")
    except users.LoginRefused as exc:
        flash(str(exc), "error")
        return render_template("login.html", next=target, name=request.form.get("name", "")), 401
    session.clear()  # a fresh session: nothing from before sign-in carries over
    session.permanent = True
    login_user(SessionUser(user))
    return redirect(target)


@blueprint.post("/logout")
def logout():
    logout_user()
    session.clear()
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))


@blueprint.route("/account", methods=["GET", "POST"])
@login_required
def account():
    new_token = None
    if request.method == "POST":
        if request.form.get("revoke"):
            try:
                users.revoke_api_token(database(), actor(), request.form["revoke"])
                flash("Token revoked.", "info")
            except users.UserError as exc:
                flash(str(exc), "error")
        else:
            new_token = users.create_api_token(database(), actor(), request.form.get("label", ""))
    return render_template("account.html", tokens=users.list_api_tokens(database(), actor()), new_token=new_token)


@blueprint.route("/users", methods=["GET", "POST"])
@login_required
def users_page():
    me = actor()
    if request.method == "POST":
        try:
            if request.form.get("action") == "create":
                created = users.create_user(database(), me, request.form.get("name", "").strip(),
                                            Role.parse(request.form.get("role", "viewer")),
                                            request.form.get("password", ""))
                flash(f"User {created['name']} created as {created['role']}.", "info")
            else:
                disabled = {"disable": True, "enable": False}.get(request.form.get("action", ""))
                role = Role.parse(request.form["role"]) if request.form.get("action") == "role" else None
                users.change_user(database(), me, request.form.get("user_id", ""), role=role, disabled=disabled,
                                  reason=request.form.get("reason"))
                flash("User changed.", "info")
        except ValueError as exc:
            flash(str(exc), "error")
        return redirect(url_for("auth.users_page"))
    return render_template("users.html", users=users.list_users(database(), me), roles=list(Role))
