"""Login, the second factor (TOTP), enrolment and logout.

A login answers no sooner than ``LOGIN_FLOOR_SECONDS`` after it arrived, and
wrong password, unknown account and disabled account get the same page and
status, so neither the answer nor its timing tells whether an account exists.
"""

from __future__ import annotations

import time

import segno
from flask import Blueprint, current_app, redirect, request, url_for
from markupsafe import Markup

from subscribers import admins

from .common import (
    clear_session_cookie,
    client_ip,
    current_session,
    db,
    now,
    render_admin,
    safe_next,
    session_cookie,
    set_session_cookie,
    settings,
)

bp = Blueprint("auth", __name__)

LOGIN_FLOOR_SECONDS = 0.25


def _pad(started: float) -> None:
    left = LOGIN_FLOOR_SECONDS - (time.perf_counter() - started)
    if left > 0:
        time.sleep(left)


def _signed_in(session_id: str, stage: str, target: str | None):
    pages = {"totp": "admin.auth.totp", "enrol": "admin.auth.enrol"}
    where = url_for(pages[stage], next=target) if stage in pages else safe_next(target)
    return set_session_cookie(redirect(where, 303), session_id)


@bp.get("/login")
def login():
    return render_admin("login.html.j2", next=request.args.get("next", ""), error=None, email="")


@bp.post("/login")
def login_post():
    started = time.perf_counter()
    form = request.form
    target = form.get("next", "")[:500]
    try:
        session_id, stage = admins.login(
            db(), form.get("email", "")[:254], form.get("password", "")[:1024], now(),
            ip=client_ip(), user_agent=request.headers.get("User-Agent", ""),
            require_totp=settings().admin_require_totp, old_session=session_cookie(),
        )
    except admins.LoginRefused as exc:
        _pad(started)
        response = current_app.make_response(render_admin(
            "login.html.j2", exc.status, next=target, error=str(exc),
            email=form.get("email", "")[:254]))
        return clear_session_cookie(response)
    _pad(started)
    return _signed_in(session_id, stage, target)


@bp.get("/login/code")
def totp():
    return render_admin("totp.html.j2", error=None, next=request.args.get("next", ""))


@bp.post("/login/code")
def totp_post():
    return _second_factor("totp.html.j2")


def _second_factor(template: str, **context):
    started = time.perf_counter()
    target = request.form.get("next", "")[:500]
    try:
        session_id = admins.second_factor(db(), session_cookie() or "",
                                          request.form.get("code", "")[:20], now(), ip=client_ip())
    except admins.LoginRefused as exc:
        _pad(started)
        if exc.status == 429 or current_session() is None:
            response = redirect(url_for("admin.auth.login"), 303)
            return clear_session_cookie(response)
        return render_admin(template, exc.status, error=str(exc), next=target, **context)
    _pad(started)
    return _signed_in(session_id, "active", target)


def _enrol_values() -> dict:
    session = current_session()
    secret = session.pending_totp or ""
    uri = admins.totp_uri(secret, session.admin.email)
    svg = segno.make(uri, error="m").svg_inline(scale=4, dark="#17323a", light="#ffffff",
                                                 title="TOTP QR code")
    return {"secret": secret, "qr": Markup(svg)}


@bp.get("/login/enrol")
def enrol():
    return render_admin("enrol.html.j2", error=None, next=request.args.get("next", ""),
                        **_enrol_values())


@bp.post("/login/enrol")
def enrol_post():
    return _second_factor("enrol.html.j2", **_enrol_values())


@bp.post("/logout")
def logout():
    everywhere = request.form.get("everywhere") == "yes"
    admins.logout(db(), session_cookie() or "", now(), ip=client_ip(), everywhere=everywhere)
    return clear_session_cookie(redirect(url_for("admin.auth.login"), 303))
