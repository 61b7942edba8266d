"""The appointment request page: ``/appointment``, its thank-you page and the snippet's landing.

Registered by ``web.create_app``.  The same protection as signup, from
:mod:`web.common`: CSRF on every POST (checked before the view runs), the
honeypot and the timing floor (a bot gets the thank-you page and nothing is
stored), the per-address rate limit (a friendly 429 page) and ``pad``.  Bad
input re-shows the form with one sentence naming the field; nothing is
stored.  Everything else is ``campaigns.appointments.create_request``.

* ``GET /appointment`` shows the form; a GET never writes.
* ``POST /appointment`` stores the request, attributed to the click whose
  ``funnel_attr`` cookie the reader's browser sends (web/clicks.py sets it).
* ``POST /appointment/embed`` is where the snippet on the clinic's own site
  posts (it cannot carry our CSRF cookie): it stores nothing and shows our
  form, prefilled, with a token and one button.
"""

from __future__ import annotations

import time

from flask import Blueprint, Flask, g, redirect, render_template, request, url_for

from campaigns import appointments, clicks
from funnel.errors import InputError
from funnel.settings import Settings

from .common import (
    EMBED_MIN_SECONDS,
    HONEYPOT,
    TEMPLATES,
    allow_rate,
    client_ip,
    csrf_exempt,
    error_page,
    group_commit,
    now,
    pad,
    page,
    reader_message,
    settings,
)

bp = Blueprint("appointments", __name__)
EMBED_KIND = "appointment-embed"


def _values() -> dict:
    """The form as typed (bounded), for storing and for showing it again."""
    form = request.form
    return {
        "name": form.get("name", "")[:300],
        "email": form.get("email", "")[:300],
        "phone": form.get("phone", "")[:60],
        "contact_method": form.get("contact_method", "")[:40],
        "times": [t[:40] for t in form.getlist("times")[:10]],
        "reason": form.get("reason", "")[: appointments.MAX_REASON * 2],
        "consent": form.get("consent") == "yes",
        "newsletter": form.get("newsletter") == "yes",
    }


def _form_page(status: int = 200, **context):
    context.setdefault("form", {"times": [], "contact_method": ""})
    context.setdefault("kind", "appointment")
    return page(
        "appointment.html.j2", status,
        methods=appointments.METHODS, times=appointments.TIMES,
        consent_text=appointments.contact_consent(settings()),
        max_reason=appointments.MAX_REASON, **context,
    )  # fmt: skip


@bp.get("/appointment")
def appointment_form():
    return _form_page(error=None)


@bp.post("/appointment")
def appointment_request():
    started = time.perf_counter()
    try:
        return _request()
    finally:
        pad(started)


def _request():
    s = settings()
    values = _values()
    if not allow_rate():
        return error_page(429)
    embed = g.form.get("k") == EMBED_KIND
    minimum = min(EMBED_MIN_SECONDS if embed else s.min_form_seconds, s.min_form_seconds)
    if request.form.get(HONEYPOT) or g.form_age < minimum:
        return redirect(url_for("appointments.thanks"), code=303)  # a bot: nothing stored
    meta = {"ip": client_ip(), "user_agent": request.headers.get("User-Agent", "")[:300]}
    moment, source = now(), "embed" if embed else "web"
    cookie = request.cookies.get(clicks.COOKIE)
    try:
        group_commit(
            lambda conn: appointments.create_request(conn, s, values, None, moment, source=source,
                                                     click_cookie=cookie, **meta)
        )
    except InputError as exc:
        return _form_page(
            400, form=values, kind=g.form.get("k", "appointment"), rendered_at=float(g.form["t"]),
            error=reader_message(exc), error_field=str(exc).partition(":")[0],
        )  # fmt: skip
    return redirect(url_for("appointments.thanks", m=values["contact_method"]), code=303)


@bp.get("/appointment/thanks")
def thanks():
    method = appointments.METHODS.get(request.args.get("m", ""))
    return page("appointment_thanks.html.j2", method=method)


@bp.post("/appointment/embed")
@csrf_exempt
def appointment_embed():
    # Stores nothing: it shows our own form, prefilled, with a CSRF token.
    if request.form.get(HONEYPOT):
        return redirect(url_for("appointments.thanks"), code=303)
    return _form_page(form=_values(), kind=EMBED_KIND, error=None, embedded=True)


def appointment_snippet(settings: Settings) -> str:
    """HTML for the clinic's own site: a form that posts to BASE_URL/appointment/embed."""
    app = Flask(__name__, template_folder=str(TEMPLATES / "pages"))
    app.jinja_env.autoescape = True
    with app.app_context():
        return (
            render_template(
                "appointment_snippet.html.j2",
                s=settings,
                action=settings.url("/appointment/embed"),
                honeypot=HONEYPOT,
                methods=appointments.METHODS,
                times=appointments.TIMES,
                consent_text=appointments.contact_consent(settings),
                max_reason=appointments.MAX_REASON,
            ).strip()
            + "\n"
        )


__all__ = ["appointment_snippet", "bp"]
