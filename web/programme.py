"""The "Start the 28-day programme" button: ``/programme/start/TOKEN``.

``GET`` shows the course and one button and changes nothing (link scanners
open every URL in an email); the reader's ``POST`` (CSRF-checked like every
form) starts the course through :func:`campaigns.enrollment.start_course`.
A tampered token gets the friendly link-problem page (400), an erased
reader 404; both store nothing.
"""

from __future__ import annotations

from flask import Blueprint

from campaigns import course, enrollment

from .common import db, now, page, settings

bp = Blueprint("programme", __name__)


@bp.get("/programme/start/<token>")
def start_page(token: str):
    view = course.start_view(db(), settings(), token[:2000], now())
    return page("programme_start.html.j2", view=view, token=token)


@bp.post("/programme/start/<token>")
def start(token: str):
    outcome = enrollment.start_course(db(), settings(), token[:2000], now())
    return page("programme_started.html.j2", outcome=outcome)


__all__ = ["bp"]
