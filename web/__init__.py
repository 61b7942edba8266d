"""The public door: ``create_app`` builds the Flask app and registers the blueprints.

* :mod:`web.common`: request helpers (db, clock, settings, pages, CSRF, limiter,
  group commit, honeypot, timing floor) and the rules every page follows.
* :mod:`web.pages`: signup, confirm, unsubscribe, preferences, view in
  browser, /healthz and the dev inbox.
* :mod:`web.webinars`: webinar registration and the offer link.
* :mod:`web.appointments`: the appointment request page and its snippet.
* :mod:`web.admin`: the admin console under /admin (off with ``admin_enabled = false``).
* :mod:`web.serve`: the waitress server, ``funnel serve``, ``funnel up``'s dev
  stack and the worker loop.

Blueprints import :mod:`web.common` and the domain (campaigns/, subscribers/,
funnel/), never each other.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from flask import Flask

from funnel import clock as clocks
from funnel.db import connect
from funnel.settings import Settings

from . import appointments, common, pages, webinars
from .admin import admin_bp


def create_app(settings: Settings, *, clock: Callable[[], datetime] = clocks.now) -> Flask:
    """The public web app.  Migrates the database once, then one connection per thread."""
    connect(settings.db, migrate=True).close()

    app = Flask(
        __name__,
        template_folder=str(common.TEMPLATES / "pages"),
        static_folder=str(common.TEMPLATES / "static"),
        static_url_path="/static",
    )
    # Flask autoescapes only *.html; our pages are *.html.j2, so turn it on for all.
    app.jinja_env.autoescape = True
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        MAX_FORM_MEMORY_SIZE=settings.max_request_bytes,
        MAX_FORM_PARTS=50,
        TRAP_BAD_REQUEST_ERRORS=False,
        JSON_SORT_KEYS=False,
    )
    common.init_app(app, settings, clock)
    app.register_blueprint(pages.bp)
    app.register_blueprint(webinars.bp)
    app.register_blueprint(appointments.bp)
    if settings.admin_enabled:
        app.register_blueprint(admin_bp)
    return app


__all__ = ["create_app"]
