"""The public pages: signup, confirm, unsubscribe, preferences, view in browser, health, dev inbox.

Each view parses the request, calls one domain function and renders the
answer; the page rules (GET never writes, CSRF on every POST, signup reveals
nothing) are described in :mod:`web.common`, which enforces them.
"""

from __future__ import annotations

import re
import time

from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    g,
    redirect,
    render_template,
    request,
    url_for,
)

from campaigns import views
from funnel import devmail
from funnel.errors import InputError
from funnel.settings import Settings
from subscribers import optin, preferences, tokens

from .common import (
    EMBED_MIN_SECONDS,
    HONEYPOT,
    TEMPLATES,
    allow_rate,
    check_csrf,
    client_ip,
    csrf_exempt,
    db,
    dev_only,
    email_response,
    error_page,
    group_commit,
    health_problems,
    now,
    pad,
    page,
    reader_message,
    settings,
    signup_values,
    zones,
)

bp = Blueprint("pages", __name__)
_HEAD = re.compile(r"<head\b[^>]*>", re.I)


# --- signup ------------------------------------------------------------
@bp.get("/")
def signup_form():
    return page("signup.html.j2", form=signup_values(), error=None)


@bp.post("/subscribe")
def subscribe():
    started = time.perf_counter()
    try:
        return _subscribe()
    finally:
        pad(started)


def _subscribe():
    s = settings()
    form = request.form
    values = signup_values(
        email=form.get("email", "")[:300],
        name=form.get("name", "")[:300],
        consent=form.get("consent") == "yes",
    )
    if not allow_rate():
        return error_page(429)
    check_inbox = redirect(url_for("pages.check_inbox"), code=303)
    minimum = EMBED_MIN_SECONDS if g.form.get("k") == "embed" else s.min_form_seconds
    minimum = min(minimum, s.min_form_seconds)
    if form.get(HONEYPOT) or g.form_age < minimum:
        return check_inbox  # a bot: same answer, nothing stored
    rendered_at = float(g.form["t"])
    if not values["consent"]:
        return page(
            "signup.html.j2",
            400,
            form=values,
            rendered_at=rendered_at,
            error="Please tick the box to say you'd like these emails.",
        )
    try:
        timezone = optin.clean_timezone(form.get("tz", "")[:64])
    except InputError:
        timezone = None  # the browser sent a zone we don't know: use the default
    try:
        kwargs = dict(
            name=values["name"],
            timezone=timezone,
            source="embed" if g.form.get("k") == "embed" else "web",
            ip=client_ip(),
            user_agent=request.headers.get("User-Agent", ""),
            consent_version=str(g.form.get("v") or s.consent_version),
        )
        email, moment = values["email"], now()
        group_commit(lambda conn: optin.signup(conn, s, email, moment, **kwargs))
    except InputError as exc:
        return page(
            "signup.html.j2",
            400,
            form=values,
            rendered_at=rendered_at,
            error=reader_message(exc),
        )
    return check_inbox


@bp.get("/check-your-inbox")
def check_inbox():
    return page("check_inbox.html.j2")


@bp.post("/subscribe/embed")
@csrf_exempt
def subscribe_embed():
    # Stores nothing: it shows our own form, prefilled, with a CSRF token.
    form = request.form
    if form.get(HONEYPOT):
        return redirect(url_for("pages.check_inbox"), code=303)
    values = signup_values(
        email=form.get("email", "")[:300],
        name=form.get("name", "")[:300],
        consent=form.get("consent") == "yes",
    )
    return page("embed_confirm.html.j2", form=values)


# --- confirm -------------------------------------------------------------
@bp.get("/confirm/<token>")
def confirm_page(token: str):
    tokens.read_confirm_token(settings(), token, now())  # signature and age only; no writes
    return page("confirm.html.j2", token=token)


@bp.post("/confirm/<token>")
def confirm(token: str):
    optin.confirm(
        db(),
        settings(),
        token,
        now(),
        ip=client_ip(),
        user_agent=request.headers.get("User-Agent", ""),
        source="web",
    )
    return redirect(url_for("pages.confirmed"), code=303)


@bp.get("/confirmed")
def confirmed():
    s = settings()
    series = [preferences.stream_label(s, f"series:{slug}") for slug in s.enroll_series]
    return page("confirmed.html.j2", series=series)


# --- unsubscribe -----------------------------------------------------------
@bp.get("/u/<token>")
def unsubscribe_page(token: str):
    s = settings()
    data = tokens.read_subscriber_token(s, "unsubscribe", token, now())
    stream = data.get("st") if isinstance(data.get("st"), str) else None
    prefs = tokens.subscriber_token(s, "preferences", data["s"], now())
    return page(
        "unsubscribe.html.j2",
        token=token,
        stream=stream,
        stream_label=preferences.stream_label(s, stream) if stream else None,
        preferences_url=url_for("pages.preferences_page", token=prefs),
    )


@bp.post("/u/<token>")
@csrf_exempt  # RFC 8058: mail providers POST without our cookie; page buttons check below
def unsubscribe(token: str):
    s = settings()
    data = tokens.read_subscriber_token(s, "unsubscribe", token, now())
    stream = data.get("st") if isinstance(data.get("st"), str) else None
    one_click = request.form.get("List-Unsubscribe") == "One-Click"
    if one_click:
        everything, source = False, "one-click"
    else:
        check_csrf()
        scope = request.form.get("scope", "")
        if scope not in ("stream", "all"):
            return error_page(400)
        everything, source = scope == "all", "web"
    scope_used = preferences.unsubscribe_from_link(
        db(), s, data["s"], now(), stream=stream, everything=everything, source=source
    )
    prefs = tokens.subscriber_token(s, "preferences", data["s"], now())
    # 200, never a redirect: RFC 8058 senders may not follow one.
    return page(
        "unsubscribed.html.j2",
        one_click=one_click,
        stream_label=preferences.stream_label(s, scope_used) if scope_used else None,
        preferences_url=url_for("pages.preferences_page", token=prefs),
    )


# --- preferences -------------------------------------------------------------
@bp.get("/p/<token>")
def preferences_page(token: str):
    s = settings()
    data = tokens.read_subscriber_token(s, "preferences", token, now())
    view = preferences.preferences_view(db(), s, data["s"], now())
    return page(
        "preferences.html.j2",
        token=token,
        view=view,
        zones=zones(),
        pause_choices=preferences.PAUSE_CHOICES,
        saved=request.args.get("saved") == "1",
        error=None,
    )


@bp.post("/p/<token>")
def preferences_save(token: str):
    s = settings()
    data = tokens.read_subscriber_token(s, "preferences", token, now())
    values = {
        "name": request.form.get("name", ""),
        "timezone": request.form.get("timezone", ""),
        "streams": request.form.getlist("streams"),
        "pause_weeks": request.form.get("pause_weeks", "keep"),
    }
    try:
        preferences.update_preferences(db(), s, data["s"], values, now())
    except InputError as exc:
        view = preferences.preferences_view(db(), s, data["s"], now())
        return page(
            "preferences.html.j2",
            400,
            token=token,
            view=view,
            zones=zones(),
            pause_choices=preferences.PAUSE_CHOICES,
            saved=False,
            error=reader_message(exc),
        )
    return redirect(url_for("pages.preferences_page", token=token, saved=1), code=303)


# --- view in browser -------------------------------------------------------------
def _view_link(token: str) -> tuple[int, int]:
    """The subscriber and outbox row a view-in-browser token names; 404 without a row."""
    data = tokens.read_subscriber_token(settings(), "view", token, now())
    row_id = data.get("r")
    if not isinstance(row_id, int) or row_id <= 0:
        abort(404)
    return data["s"], row_id


@bp.get("/m/<token>")
def view_in_browser(token: str):
    subscriber_id, row_id = _view_link(token)
    shown = views.show(db(), settings(), subscriber_id, row_id, now())
    if shown.expired_at is not None:  # its link is dead: say so, never mint a new one
        return page("view_expired.html.j2", token=token, view=shown)
    return email_response(shown.rendered.html, ancestors="'none'")


@bp.post("/m/<token>/resend")
def view_resend(token: str):
    subscriber_id, row_id = _view_link(token)
    if not allow_rate():
        return error_page(429)
    views.resend_confirmation(
        db(), settings(), subscriber_id, row_id, now(),
        ip=client_ip(), user_agent=request.headers.get("User-Agent", ""),
    )  # fmt: skip
    return redirect(url_for("pages.check_inbox"), code=303)


# --- health ----------------------------------------------------------------------
@bp.get("/healthz")
def healthz():
    found = health_problems()
    body = "\n".join(found or ["ok"]) + "\n"
    response = current_app.response_class(body, status=503 if found else 200, mimetype="text/plain")
    response.headers["Cache-Control"] = "no-store"
    return response


# --- dev inbox ----------------------------------------------------------------------
@bp.get("/dev/inbox")
def dev_inbox():
    dev_only()
    return page("inbox.html.j2", messages=devmail.listing(db()))


@bp.get("/dev/inbox/<int:message_id>")
def dev_message(message_id: int):
    dev_only()
    return page("inbox_message.html.j2", m=devmail.get(db(), message_id))


@bp.get("/dev/inbox/<int:message_id>/html")
def dev_message_html(message_id: int):
    dev_only()
    html = devmail.get(db(), message_id).html or "<p>(this message has no HTML part)</p>"
    # Like a webmail, the inbox opens the email's links in a new tab (the sandbox lets
    # them escape it); inside the frame our pages would refuse to load.
    html, found = _HEAD.subn(r'\g<0><base target="_blank">', html, count=1)
    html = html if found else '<base target="_blank">' + html
    response = email_response(html, ancestors="'self'")
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response


@bp.get("/dev/inbox/<int:message_id>/raw")
def dev_message_raw(message_id: int):
    dev_only()
    data = devmail.get(db(), message_id).data
    return current_app.response_class(data, mimetype="text/plain")


@bp.post("/dev/inbox/clear")
def dev_inbox_clear():
    dev_only()
    devmail.clear(db())
    return redirect(url_for("pages.dev_inbox"), code=303)


def form_snippet(settings: Settings) -> str:
    """HTML for the clinic's own site: a form that posts to BASE_URL/subscribe/embed.

    A page on another origin can't carry our CSRF cookie, so the snippet posts
    to ``/subscribe/embed``, which stores nothing and shows our own prefilled
    form with a token and one button.
    """
    app = Flask(__name__, template_folder=str(TEMPLATES / "pages"))
    app.jinja_env.autoescape = True
    with app.app_context():
        return (
            render_template(
                "snippet.html.j2",
                s=settings,
                action=settings.url("/subscribe/embed"),
                honeypot=HONEYPOT,
            ).strip()
            + "\n"
        )
