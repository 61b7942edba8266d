"""Tracked links: ``GET /c/TOKEN.N`` records a click and redirects (302);
``GET /px/TOKEN`` (only in mail sent with ``track_opens``) records an open.

Registered by ``web.create_app``.  The domain is :mod:`campaigns.clicks`: it
verifies the token, finds link N of that very message (so this is no open
redirect: anything else is 404 and counted nowhere) and classifies the click
(human, repeat, scanner).  A HEAD gets the same redirect and counts as a
scanner's.  When the link is a page of this site (the appointment page...),
the answer sets the signed ``funnel_attr`` cookie (HttpOnly, SameSite=Lax,
30 days) naming the click, for attribution.
"""

from __future__ import annotations

from flask import Blueprint, redirect, request

from campaigns import clicks

from .common import client_ip, db, now, settings

bp = Blueprint("clicks", __name__)


@bp.route("/c/<value>", methods=["GET", "HEAD"])
def click(value: str):
    # This GET records an event: a click is analytics only, never consent or a
    # change of anyone's state, so the rule "a GET never changes state" holds.
    moment = now()
    found = clicks.follow(
        db(), settings(), value[:400], moment,
        head=request.method == "HEAD", user_agent=request.headers.get("User-Agent", "")[:400],
    )
    response = redirect(found.url, code=302)
    if found.same_origin:
        response.set_cookie(
            clicks.COOKIE, clicks.cookie_value(settings(), found, moment),
            max_age=clicks.ATTRIBUTION_DAYS * 86400, httponly=True, samesite="Lax",
            secure=settings().https, path="/",
        )
    return response


#: A transparent 1x1 GIF.
PIXEL = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00"
         b"\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")


@bp.get("/px/<token>")
def opened(token: str):
    clicks.record_open(db(), settings(), token[:400], now(),
                       user_agent=request.headers.get("User-Agent", "")[:400], ip=client_ip())
    return PIXEL, 200, {"Content-Type": "image/gif"}
