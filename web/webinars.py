"""Public webinar pages: registration (``/w/SLUG``) and the offer link (``/o/TOKEN``).

Registered by ``web.create_app``; :mod:`web.common` supplies the CSRF check (every
POST here needs the signed form token and its cookie), security headers and
the rate limiter; this module only parses input, calls one function of
``campaigns.webinars`` and renders the answer.

* ``GET /w/SLUG`` shows the webinar.  The start time is printed in the
  webinar's own zone and carried as UTC ISO in ``data-utc``;
  ``static/webinar-time.js`` rewrites it in the visitor's zone with ``Intl``.
  With ``?t=TOKEN`` (the invite's "Reserve my spot" link) the page greets the
  invitee and offers a one-click POST button.  A GET never registers anyone:
  link scanners open every URL in an email.
* ``POST /w/SLUG`` registers: by token, or by email + first name with a
  separate, unticked newsletter box (double opt-in).  Honeypot, minimum form
  time and the rate limit apply; a bot gets the success page and nothing is
  stored.  **The email form reveals nothing**: new, known, registered,
  waitlisted and suppressed addresses all get the same "check your inbox"
  page, no sooner than ``/subscribe``'s floor (the same ``pad``).  Whether
  it is a seat, the waitlist or a verification goes by email only.
* ``GET /w/SLUG/verify/TOKEN`` shows the button that registers an address
  which unsubscribed or is suppressed; only ``POST`` (the owner's press)
  registers them, for this webinar only.
* ``GET /o/TOKEN`` is an interstitial whose button POSTs (auto-submitted by
  the same static script the confirm page uses), and ``POST /o/TOKEN`` records
  ``clicked_offer`` and redirects to the appointment or programme page.  So
  a scanner fetching the link is not counted as a click.
"""

from __future__ import annotations

import time
from datetime import UTC

from flask import Blueprint, g, redirect, request

from campaigns import webinars
from funnel.errors import InputError, TokenError
from subscribers import optin

from .common import (
    HONEYPOT,
    allow_rate,
    client_ip,
    db,
    error_page,
    now,
    pad,
    page,
    reader_message,
    settings,
)

bp = Blueprint("webinars", __name__)


def _view(w: webinars.Webinar, **extra):
    moment = now()
    return {
        "w": w,
        "utc_iso": w.starts_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "when": webinars.format_when(w.starts_at, w.zone),
        "closed": w.status == "cancelled" or w.starts_at <= moment,
        "cancelled": w.status == "cancelled",
        "full": webinars.is_full(db(), w),
        "form": {"email": "", "name": "", "newsletter": False},
        "invitee": None,
        "token": "",
        "error": None,
        "notice": None,
        **extra,
    }


@bp.get("/w/<slug>")
def register_page(slug: str):
    w = webinars.get_webinar(db(), slug)
    token = request.args.get("t", "")[:2000]
    invitee, notice = None, None
    if token:
        try:
            invitee = webinars.invitee(db(), settings(), slug, token, now())
        except TokenError:
            token, notice = "", "This invitation link didn't work, but you can register below."
    return page("webinar.html.j2", **_view(w, invitee=invitee, token=token, notice=notice))


@bp.post("/w/<slug>")
def register(slug: str):
    started = time.perf_counter()
    try:
        return _register(slug)
    finally:
        pad(started)


def _sent(w: webinars.Webinar, newsletter: bool):
    """The one answer the email form gives, whatever the address's state."""
    return page("webinar_done.html.j2", w=w, outcome="sent", by_token=False, newsletter=newsletter)


def _register(slug: str):
    s = settings()
    w = webinars.get_webinar(db(), slug)
    if not allow_rate():
        return error_page(429)
    form = request.form
    token = form.get("t", "")[:2000]
    values = {
        "email": form.get("email", "")[:300],
        "name": form.get("name", "")[:300],
        "newsletter": form.get("newsletter") == "yes",
    }
    if not token and (form.get(HONEYPOT) or g.form_age < s.min_form_seconds):
        # A bot: the same answer a person gets, nothing stored.
        return _sent(w, values["newsletter"])
    meta = {"ip": client_ip(), "user_agent": request.headers.get("User-Agent", "")}
    try:
        if token:
            result = webinars.register_with_token(db(), s, slug, token, now(), **meta)
        else:
            try:
                timezone = optin.clean_timezone(form.get("tz", "")[:64])
            except InputError:
                timezone = None  # a zone we don't know: the clinic's default
            result = webinars.register(
                db(),
                s,
                slug,
                now(),
                email=values["email"],
                name=values["name"],
                timezone=timezone,
                newsletter=values["newsletter"],
                source="web",
                **meta,
            )
    except TokenError:
        return page(
            "webinar.html.j2",
            400,
            **_view(
                w,
                form=values,
                notice="This invitation link didn't work, but you can register below.",
            ),
        )
    except InputError as exc:
        return page("webinar.html.j2", 400, **_view(w, form=values, error=reader_message(exc)))
    if not token:
        return _sent(w, values["newsletter"])  # the form never tells whether an address is known
    return page(
        "webinar_done.html.j2",
        w=w,
        outcome=result.status,
        by_token=True,
        newsletter=False,
        registration_status=result.registration_status,
    )


@bp.get("/w/<slug>/verify/<token>")
def verify_page(slug: str, token: str):
    try:
        w = webinars.check_verification(db(), settings(), slug, token[:2000], now())
    except InputError as exc:  # registration has closed since
        return error_page(400, reader_message(exc))
    return page("webinar_verify.html.j2", w=w, token=token)


@bp.post("/w/<slug>/verify/<token>")
def verify(slug: str, token: str):
    try:
        result = webinars.confirm_verification(
            db(),
            settings(),
            slug,
            token[:2000],
            now(),
            ip=client_ip(),
            user_agent=request.headers.get("User-Agent", ""),
        )
    except InputError as exc:
        return error_page(400, reader_message(exc))
    return page(
        "webinar_done.html.j2",
        w=result.webinar,
        outcome=result.status,
        by_token=True,
        newsletter=False,
        registration_status=result.registration_status,
    )


@bp.get("/o/<token>")
def offer_page(token: str):
    w, _url = webinars.offer_target(db(), settings(), token, now())
    setting, text = webinars.OFFERS[w.offer]
    return page("webinar_offer.html.j2", w=w, token=token, offer_text=text)


@bp.post("/o/<token>")
def offer_click(token: str):
    url = webinars.record_offer_click(db(), settings(), token, now())
    return redirect(url, code=303)


__all__ = ["bp"]
