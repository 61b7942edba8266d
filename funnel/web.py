"""The public door: signup, confirm, unsubscribe, preferences, view-in-browser, dev inbox.

Like ``cli.py`` this module only parses input, calls one domain function and
formats the result; it holds no SQL and no business rules (DESIGN.md).

Rules every page follows
------------------------
* **A GET never changes state, and never writes to the database.**  Link
  scanners fetch every URL in an email.  Confirm and unsubscribe links open a
  page whose button POSTs; the confirm page submits itself with a static
  script (CSP forbids inline script), so a person sees one click and a
  scanner, which runs no scripts, changes nothing.  CSRF tokens live in a
  cookie and a signed form field; the rate limiter lives in memory.
* **CSRF: double submit, signed.**  Every page with a form sets a random
  cookie (``__Host-funnel_csrf`` on https, SameSite=Lax, HttpOnly) and embeds
  a form token signed with the secret keys that names a hash of that cookie,
  the time the form was rendered and the consent text version shown.  Every
  POST must carry both, or gets a 403 page, except two: the RFC 8058
  one-click unsubscribe (mail providers POST it without cookies) and
  ``/subscribe/embed`` (the snippet on the clinic's own site posts there; it
  only shows a prefilled form and stores nothing).
* **Signup reveals nothing.**  Whatever the address's state (new, pending,
  active, unsubscribed, suppressed), a valid submission is answered with the
  same redirect to "check your inbox", no sooner than ``SIGNUP_FLOOR_SECONDS``
  after it arrived, so neither the body nor the timing tells whether the
  address is known.  A filled honeypot or a form sent faster than
  ``min_form_seconds`` gets the same answer and stores nothing.  Mail is only
  queued (``optin.signup``); the worker sends it.
* Every value is escaped (Jinja autoescape is on for ``*.html.j2``); security
  headers are added to every response (see :func:`_security_headers`).

Extensions
----------
``funnel.web_webinars`` (if present) exposes a Flask Blueprint ``bp`` that is
registered here.  Blueprints use :func:`db`, :func:`settings`, :func:`now`,
:func:`page`, :func:`client_ip`, :func:`csrf_exempt` and, in templates,
``{{ csrf_field() }}``; the CSRF check below covers their POSTs too.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import ipaddress
import logging
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import available_timezones

from flask import (
    Flask,
    abort,
    current_app,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from itsdangerous import BadData, URLSafeSerializer
from markupsafe import Markup, escape
from werkzeug.exceptions import HTTPException

from campaigns import views
from subscribers import optin, preferences, tokens

from . import clock as clocks
from . import devmail, health
from .db import connect, transaction
from .errors import DatabaseError, FunnelError, InputError, NotFound, TokenError
from .settings import Settings

log = logging.getLogger("funnel.web")

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"

#: A valid signup is answered no sooner than this (seconds): see the module doc.
SIGNUP_FLOOR_SECONDS = 0.025
#: The GIL switch interval the web server sets (see WebServer.start).
SWITCH_INTERVAL = 0.001
#: A form token is accepted for this long after the page was rendered.
FORM_MAX_AGE = timedelta(hours=24)
CSRF_COOKIE_AGE = 7 * 24 * 3600
#: The honeypot field: hidden from people, irresistible to form-filling bots.
HONEYPOT = "website"
#: The snippet flow's confirm page needs one click, which can be quick.
EMBED_MIN_SECONDS = 1.0

# Our own pages: no inline script or style, nothing from elsewhere.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
# A rendered email: its inline styles and remote images, but never a script,
# a form or a plugin.  The dev inbox frames it (same origin), nobody else may.
EMAIL_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src https: http: data:; "
    "font-src https: data:; base-uri 'none'; form-action 'none'; frame-ancestors {ancestors}; "
    "sandbox allow-popups allow-popups-to-escape-sandbox allow-top-navigation-by-user-activation"
)


# ----------------------------------------------------------------- rate limit
class SlidingWindowLimiter:
    """At most ``limit`` hits per key in any ``window`` seconds, in memory.

    In memory on purpose: a GET must not write to the database, and a POST
    refused for going too fast should cost nothing.  Each process keeps its
    own window (one ``funnel serve`` process is the expected set-up); behind a
    reverse proxy set ``trusted_proxies`` so the key is the reader's address,
    not the proxy's.
    """

    def __init__(self, limit: int, window: float = 60.0, max_keys: int = 50_000):
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._hits: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str, now: float) -> bool:
        with self._lock:
            hits = self._hits.get(key)
            if hits is None:
                if len(self._hits) >= self.max_keys:
                    self._prune(now)
                hits = self._hits[key] = collections.deque()
            while hits and hits[0] <= now - self.window:
                hits.popleft()
            if len(hits) >= self.limit:
                return False
            hits.append(now)
            return True

    def _prune(self, now: float) -> None:
        stale = [k for k, d in self._hits.items() if not d or d[-1] <= now - self.window]
        for k in stale:
            del self._hits[k]
        if len(self._hits) >= self.max_keys:  # a flood of distinct addresses: start over
            self._hits.clear()


# ----------------------------------------------------------------- group commit
class _Pending:
    __slots__ = ("fn", "result", "error", "done")

    def __init__(self, fn):
        self.fn = fn
        self.result = None
        self.error: BaseException | None = None
        self.done = False


class GroupCommit:
    """Run concurrent writes in shared transactions: one fsync for many signups.

    Why: every commit fsyncs the WAL (``synchronous=FULL``), and a thread
    holding SQLite's write lock must win the GIL back after each statement
    while other request threads run Python, so one transaction per request
    caps a busy site far below what SQLite can do.  Here each request queues
    its write and waits for the write lock; whoever gets it (the "leader")
    runs *everything* queued so far in one ``BEGIN IMMEDIATE`` transaction,
    each write in its own savepoint (a bad one rolls back alone), commits
    once, and hands every waiter its own result or exception.  A request is
    only answered after the commit that holds its write, so an accepted
    signup is durable.  No extra thread: the waiting request threads take
    turns leading.
    """

    def __init__(self, max_batch: int = 256):
        self.max_batch = max_batch
        self._turn = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Pending] = []

    def run(self, database, fn: Callable):
        """Run ``fn(database)`` inside a shared transaction; returns its result or raises."""
        item = _Pending(fn)
        with self._queue_lock:
            self._queue.append(item)
        while not item.done:
            with self._turn:
                if item.done:  # an earlier leader's batch took it
                    break
                with self._queue_lock:
                    batch = self._queue[: self.max_batch]
                    del self._queue[: self.max_batch]
                self._commit(database, batch)
        if item.error is not None:
            raise item.error
        return item.result

    @staticmethod
    def _commit(database, batch: list[_Pending]) -> None:
        try:
            with transaction(database):
                for item in batch:
                    try:
                        with transaction(database):  # a savepoint: one bad write rolls back alone
                            item.result = item.fn(database)
                    except Exception as exc:  # handed to its own request, re-raised there
                        item.error = exc
        except Exception as exc:  # BEGIN or COMMIT failed: nothing in the batch was stored
            for item in batch:
                item.result, item.error = None, exc
        finally:
            for item in batch:
                item.done = True


# ----------------------------------------------------------------- app state
@dataclass
class _State:
    settings: Settings
    clock: Callable[[], datetime]
    limiter: SlidingWindowLimiter
    local: threading.local = field(default_factory=threading.local)
    connections: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Signups are written in shared transactions; see GroupCommit.
    signups: GroupCommit = field(default_factory=lambda: GroupCommit())
    checker: health.Checker = field(default_factory=lambda: health.Checker())

    def db(self):
        conn = getattr(self.local, "db", None)
        if conn is None:
            conn = self.local.db = connect(self.settings.db)
            with self.lock:
                self.connections.append(conn)
        return conn

    def close(self) -> None:
        with self.lock:
            for conn in self.connections:
                conn.close()
            self.connections.clear()


def _state() -> _State:
    return current_app.extensions["funnel"]


def settings() -> Settings:
    return _state().settings


def db():
    """This thread's database connection (one per server thread)."""
    return _state().db()


def now() -> datetime:
    """The app's clock (tests pass a fake one)."""
    if "now" not in g:
        g.now = _state().clock()
    return g.now


def client_ip() -> str:
    return request.remote_addr or "unknown"


def page(template: str, status: int = 200, **context):
    """Render one of templates/pages with the site's common values."""
    return render_template(template, s=settings(), **context), status


def csrf_exempt(view):
    """Mark a view whose POST needs no CSRF token (it must check on its own if needed)."""
    view._csrf_exempt = True
    return view


# ----------------------------------------------------------------- CSRF / form tokens
def _cookie_name() -> str:
    # __Host- cookies must be Secure, Path=/ and domain-less: no subdomain can plant one.
    return "__Host-funnel_csrf" if settings().https else "funnel_csrf"


def _serializer() -> URLSafeSerializer:
    # itsdangerous signs with the last key and tries all: settings list newest first.
    return URLSafeSerializer(list(reversed(settings().secret_keys)), salt="funnel.form.v1")


def _binding(cookie: str) -> str:
    return hashlib.sha256(("funnel.csrf:" + cookie).encode()).hexdigest()[:32]


def _csrf_cookie() -> str:
    """The reader's CSRF cookie value, minting one (set after the request) if needed."""
    if "csrf_cookie" in g:
        return g.csrf_cookie
    value = request.cookies.get(_cookie_name(), "")
    if len(value) != 43 or not value.replace("-", "").replace("_", "").isalnum():
        value = secrets.token_urlsafe(32)
        g.set_csrf_cookie = value
    g.csrf_cookie = value
    return value


def form_token(kind: str = "form", rendered_at: float | None = None) -> str:
    """A signed token for one form: cookie binding, render time, consent version."""
    payload = {
        "c": _binding(_csrf_cookie()),
        "t": round(rendered_at if rendered_at is not None else now().timestamp(), 3),
        "k": kind,
        "v": settings().consent_version,
    }
    return _serializer().dumps(payload)


def csrf_field(kind: str = "form", rendered_at: float | None = None) -> Markup:
    return Markup('<input type="hidden" name="csrf" value="{}">').format(
        form_token(kind, rendered_at)
    )


def _check_csrf() -> dict:
    """Verify the POST's form token against the cookie; 403 otherwise.  Returns the payload."""
    origin = request.headers.get("Origin")
    if origin and origin != "null":
        allowed = {_origin(settings().base_url), _origin(request.host_url)}
        if _origin(origin) not in allowed:
            abort(403)
    cookie = request.cookies.get(_cookie_name(), "")
    token = request.form.get("csrf", "")
    if not cookie or not token:
        abort(403)
    try:
        payload = _serializer().loads(token)
    except BadData:
        abort(403)
    if not isinstance(payload, dict) or not hmac.compare_digest(
        str(payload.get("c", "")), _binding(cookie)
    ):
        abort(403)
    try:
        age = now().timestamp() - float(payload["t"])
    except (KeyError, TypeError, ValueError):
        abort(403)
    if age > FORM_MAX_AGE.total_seconds() or age < -300:
        abort(403)
    g.form = payload
    g.form_age = age
    return payload


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


# ----------------------------------------------------------------- the app
def create_app(settings: Settings, *, clock: Callable[[], datetime] = clocks.now) -> Flask:
    """The public web app.  Migrates the database once, then one connection per thread."""
    connect(settings.db, migrate=True).close()

    app = Flask(
        __name__,
        template_folder=str(TEMPLATES / "pages"),
        static_folder=str(TEMPLATES / "static"),
        static_url_path="/static",
    )
    # Flask autoescapes only *.html; our pages are *.html.j2, so turn it on for all.
    app.jinja_env.autoescape = True
    app.jinja_env.globals.update(csrf_field=csrf_field)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        MAX_FORM_MEMORY_SIZE=settings.max_request_bytes,
        MAX_FORM_PARTS=50,
        TRAP_BAD_REQUEST_ERRORS=False,
        JSON_SORT_KEYS=False,
    )
    app.extensions["funnel"] = _State(
        settings, clock, SlidingWindowLimiter(settings.signup_rate_per_minute)
    )
    # X-Forwarded-* is handled by waitress alone (WebServer: trusted_proxy_*),
    # so the app sees the reader's address in REMOTE_ADDR and never reads the
    # header itself.

    app.before_request(_csrf_guard)
    app.after_request(_security_headers)
    _register_errors(app)
    _register_routes(app)
    try:
        from funnel.web_webinars import bp as webinars_bp
    except ImportError as exc:
        if exc.name != "funnel.web_webinars":
            raise
    else:
        app.register_blueprint(webinars_bp)
    return app


def _csrf_guard() -> None:
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    if request.routing_exception is not None:
        return  # 404 / 405 answer first
    view = current_app.view_functions.get(request.endpoint or "")
    if getattr(view, "_csrf_exempt", False):
        return
    _check_csrf()


def _security_headers(response):
    h = response.headers
    h.setdefault("Content-Security-Policy", PAGE_CSP)
    h.setdefault("X-Frame-Options", "DENY")
    h["X-Content-Type-Options"] = "nosniff"
    # Links carry tokens in the path: never hand them to another site.
    h["Referrer-Policy"] = "no-referrer"
    h["Cross-Origin-Opener-Policy"] = "same-origin"
    h["Permissions-Policy"] = "camera=(), microphone=(), geolocation=(), interest-cohort=()"
    if settings().https:
        h["Strict-Transport-Security"] = "max-age=31536000"
    if request.path != "/" and not request.path.startswith("/static/"):
        h.setdefault("Cache-Control", "no-store")
        h["X-Robots-Tag"] = "noindex, nofollow"
    value = g.get("set_csrf_cookie")
    if value:
        response.set_cookie(
            _cookie_name(),
            value,
            max_age=CSRF_COOKIE_AGE,
            path="/",
            secure=settings().https,
            httponly=True,
            samesite="Lax",
        )
    return response


# ----------------------------------------------------------------- errors
ERROR_PAGES = {
    400: (
        "Something in the form needs a second look",
        "Please go back, check what you entered and try again.",
    ),
    403: (
        "This form has expired",
        "For your safety each form works only in the browser that opened it, for a day. "
        "Please go back, reload the page and try again (cookies must be on).",
    ),
    404: (
        "Page not found",
        "This page doesn't exist, or the link was cut short. "
        "If you copied it from an email, please copy the whole link.",
    ),
    405: (
        "That didn't work",
        "This address doesn't accept that kind of request. "
        "Please start again from the signup page.",
    ),
    413: (
        "That was too much",
        "The form you sent was larger than we accept. Please shorten what you typed and try again.",
    ),
    429: (
        "Slow down a little",
        "We've had a lot of signups from your network in the last "
        "minute. Please wait a minute and try again.",
    ),
    500: (
        "Sorry, something went wrong",
        "It's our fault, not yours. Please try again in a few minutes.",
    ),
    503: ("We're busy", "The site is busy right now. Please try again in a minute."),
}


def error_page(code: int, message: str | None = None, title: str | None = None):
    default_title, default_message = ERROR_PAGES.get(code, ERROR_PAGES[500])
    return page(
        "error.html.j2",
        code,
        title=title or default_title,
        message=message or default_message,
        code=code,
    )


def _register_errors(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        body, status = error_page(exc.code or 500)
        response = current_app.make_response((body, status))
        if exc.code == 405 and isinstance(exc.valid_methods, list | tuple | set):
            response.headers["Allow"] = ", ".join(sorted(exc.valid_methods))
        return response

    @app.errorhandler(TokenError)
    def token_error(exc: TokenError):
        return _link_problem(str(exc))

    @app.errorhandler(NotFound)
    def not_found(exc: NotFound):
        return error_page(404)

    @app.errorhandler(DatabaseError)
    def db_error(exc: DatabaseError):
        log.error("database error: %s", exc)
        return error_page(503)

    @app.errorhandler(FunnelError)
    def funnel_error(exc: FunnelError):
        return error_page(400, _reader_message(exc))

    @app.errorhandler(Exception)
    def crash(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_page(500)


def _reader_message(exc: FunnelError) -> str:
    """Our errors are 'field: sentence'; a reader needs the sentence."""
    text = str(exc)
    field_name, sep, rest = text.partition(": ")
    if sep and field_name.replace("_", "").isalnum():
        text = rest
    return text[:1].upper() + text[1:]


def _link_problem(reason: str = "", status: int = 400):
    return page("link_problem.html.j2", status, reason=reason, form=_signup_values())


# ----------------------------------------------------------------- helpers
def _signup_values(**values) -> dict:
    return {"email": "", "name": "", "consent": False, **values}


@lru_cache(maxsize=1)
def _zones() -> list[str]:
    return sorted(
        z for z in available_timezones() if "/" in z and not z.startswith(("Etc/", "SystemV/"))
    )


def _pad(started: float) -> None:
    """Answer no sooner than SIGNUP_FLOOR_SECONDS after the request arrived."""
    left = SIGNUP_FLOOR_SECONDS - (time.perf_counter() - started)
    if left > 0:
        time.sleep(left)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _dev_only() -> None:
    """The dev inbox: only in dev mode, only from this machine, only by a loopback name."""
    if not settings().dev:
        abort(404)
    # The Host check stops DNS rebinding: a page on evil.example resolving to 127.0.0.1.
    hostname = (urlsplit("//" + request.host).hostname or "") if request.host else ""
    if not _is_loopback(client_ip()) or not _is_loopback(hostname):
        abort(403)


# ----------------------------------------------------------------- routes
def _register_routes(app: Flask) -> None:  # noqa: C901 - one small function per page
    # --- signup ------------------------------------------------------------
    @app.get("/")
    def signup_form():
        return page("signup.html.j2", form=_signup_values(), error=None)

    @app.post("/subscribe")
    def subscribe():
        started = time.perf_counter()
        try:
            return _subscribe()
        finally:
            _pad(started)

    def _subscribe():
        s = settings()
        form = request.form
        values = _signup_values(
            email=form.get("email", "")[:300],
            name=form.get("name", "")[:300],
            consent=form.get("consent") == "yes",
        )
        if not _state().limiter.allow(client_ip(), now().timestamp()):
            return error_page(429)
        check_inbox = redirect(url_for("check_inbox"), code=303)
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
            _state().signups.run(db(), lambda conn: optin.signup(conn, s, email, moment, **kwargs))
        except InputError as exc:
            return page(
                "signup.html.j2",
                400,
                form=values,
                rendered_at=rendered_at,
                error=_reader_message(exc),
            )
        return check_inbox

    @app.get("/check-your-inbox")
    def check_inbox():
        return page("check_inbox.html.j2")

    @app.post("/subscribe/embed")
    @csrf_exempt
    def subscribe_embed():
        # Stores nothing: it shows our own form, prefilled, with a CSRF token.
        form = request.form
        if form.get(HONEYPOT):
            return redirect(url_for("check_inbox"), code=303)
        values = _signup_values(
            email=form.get("email", "")[:300],
            name=form.get("name", "")[:300],
            consent=form.get("consent") == "yes",
        )
        return page("embed_confirm.html.j2", form=values)

    # --- confirm -------------------------------------------------------------
    @app.get("/confirm/<token>")
    def confirm_page(token: str):
        tokens.read_confirm_token(settings(), token, now())  # signature and age only; no writes
        return page("confirm.html.j2", token=token)

    @app.post("/confirm/<token>")
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
        return redirect(url_for("confirmed"), code=303)

    @app.get("/confirmed")
    def confirmed():
        s = settings()
        series = [preferences.stream_label(s, f"series:{slug}") for slug in s.enroll_series]
        return page("confirmed.html.j2", series=series)

    # --- unsubscribe -----------------------------------------------------------
    @app.get("/u/<token>")
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
            preferences_url=url_for("preferences_page", token=prefs),
        )

    @app.post("/u/<token>")
    @csrf_exempt  # RFC 8058: mail providers POST without our cookie; page buttons check below
    def unsubscribe(token: str):
        s = settings()
        data = tokens.read_subscriber_token(s, "unsubscribe", token, now())
        stream = data.get("st") if isinstance(data.get("st"), str) else None
        one_click = request.form.get("List-Unsubscribe") == "One-Click"
        if one_click:
            everything, source = False, "one-click"
        else:
            _check_csrf()
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
            preferences_url=url_for("preferences_page", token=prefs),
        )

    # --- preferences -------------------------------------------------------------
    @app.get("/p/<token>")
    def preferences_page(token: str):
        s = settings()
        data = tokens.read_subscriber_token(s, "preferences", token, now())
        view = preferences.preferences_view(db(), s, data["s"], now())
        return page(
            "preferences.html.j2",
            token=token,
            view=view,
            zones=_zones(),
            pause_choices=preferences.PAUSE_CHOICES,
            saved=request.args.get("saved") == "1",
            error=None,
        )

    @app.post("/p/<token>")
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
                zones=_zones(),
                pause_choices=preferences.PAUSE_CHOICES,
                saved=False,
                error=_reader_message(exc),
            )
        return redirect(url_for("preferences_page", token=token, saved=1), code=303)

    # --- view in browser -------------------------------------------------------------
    @app.get("/m/<token>")
    def view_in_browser(token: str):
        s = settings()
        data = tokens.read_subscriber_token(s, "view", token, now())
        row_id = data.get("r")
        if not isinstance(row_id, int) or row_id <= 0:
            abort(404)
        shown = views.show(db(), s, data["s"], row_id, now())
        if shown.expired_at is not None:  # its link is dead: say so, never mint a new one
            return page("view_expired.html.j2", token=token, view=shown)
        return _email_response(shown.rendered.html, ancestors="'none'")

    @app.post("/m/<token>/resend")
    def view_resend(token: str):
        s = settings()
        data = tokens.read_subscriber_token(s, "view", token, now())
        row_id = data.get("r")
        if not isinstance(row_id, int) or row_id <= 0:
            abort(404)
        if not _state().limiter.allow(client_ip(), now().timestamp()):
            return error_page(429)
        views.resend_confirmation(
            db(), s, data["s"], row_id, now(),
            ip=client_ip(), user_agent=request.headers.get("User-Agent", ""),
        )  # fmt: skip
        return redirect(url_for("check_inbox"), code=303)

    # --- health ----------------------------------------------------------------------
    @app.get("/healthz")
    def healthz():
        found = _state().checker.problems(db(), settings(), now())
        body = "\n".join(found or ["ok"]) + "\n"
        response = current_app.response_class(
            body, status=503 if found else 200, mimetype="text/plain"
        )
        response.headers["Cache-Control"] = "no-store"
        return response

    # --- dev inbox ----------------------------------------------------------------------
    @app.get("/dev/inbox")
    def dev_inbox():
        _dev_only()
        return page("inbox.html.j2", messages=devmail.listing(db()))

    @app.get("/dev/inbox/<int:message_id>")
    def dev_message(message_id: int):
        _dev_only()
        return page("inbox_message.html.j2", m=devmail.get(db(), message_id))

    @app.get("/dev/inbox/<int:message_id>/html")
    def dev_message_html(message_id: int):
        _dev_only()
        html = devmail.get(db(), message_id).html or "<p>(this message has no HTML part)</p>"
        response = _email_response(html, ancestors="'self'")
        response.headers["X-Frame-Options"] = "SAMEORIGIN"
        return response

    @app.get("/dev/inbox/<int:message_id>/raw")
    def dev_message_raw(message_id: int):
        _dev_only()
        data = devmail.get(db(), message_id).data
        return current_app.response_class(data, mimetype="text/plain")

    @app.post("/dev/inbox/clear")
    def dev_inbox_clear():
        _dev_only()
        devmail.clear(db())
        return redirect(url_for("dev_inbox"), code=303)


def _email_response(html: str, ancestors: str):
    response = current_app.response_class(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = EMAIL_CSP.format(ancestors=ancestors)
    return response


# ----------------------------------------------------------------- snippet
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


# ----------------------------------------------------------------- serving
class WebServer:
    """waitress on host:port in a thread; ``stop()`` closes it and joins the thread.

    If the server loop ever dies (it should not; select() used to, above fd
    1024), :attr:`failure` says why and :func:`wait_for_signal` ends the
    process with it, so systemd restarts the site instead of leaving a process
    that accepts connections nobody answers.
    """

    def __init__(
        self, app: Flask, host: str = "127.0.0.1", port: int = 8000, threads: int | None = None
    ):
        import waitress

        self.app = app
        self.failure: str | None = None
        self._stopping = False
        s = app.extensions["funnel"].settings
        try:
            self.server = self._create(waitress, app, s, host, port, threads or s.server_threads)
        except OSError as exc:
            raise FunnelError(
                f"web server: cannot listen on {host}:{port} ({exc.strerror or exc}); "
                "is another funnel running there? Pick another port with --port"
            ) from exc
        self.host = host
        self.port = int(self.server.effective_port)
        self._thread = threading.Thread(target=self._run, name="funnel-web", daemon=True)

    @staticmethod
    def _create(waitress, app: Flask, s: Settings, host: str, port: int, threads: int):
        proxy: dict = {"clear_untrusted_proxy_headers": True}  # without a trusted proxy: drop them
        if s.trusted_proxies:
            proxy.update(
                trusted_proxy=s.trusted_proxy_address,
                trusted_proxy_count=s.trusted_proxies,
                trusted_proxy_headers={"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"},
            )
        return waitress.create_server(
            app,
            host=host,
            port=port,
            threads=threads,
            ident="funnel",
            # Bodies up to this size reach Flask, which answers 413 with a friendly
            # page above max_request_bytes; beyond it waitress answers on its own.
            max_request_body_size=max(1 << 20, 4 * app.config["MAX_CONTENT_LENGTH"]),
            # poll() has no FD_SETSIZE (1024) limit; select() died above it.
            asyncore_use_poll=True,
            connection_limit=s.server_connection_limit,
            channel_timeout=s.server_channel_timeout,
            cleanup_interval=s.server_cleanup_interval,
            backlog=s.server_backlog,
            asyncore_loop_timeout=0.2,
            **proxy,
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _run(self) -> None:
        try:
            self.server.run()
        except BaseException as exc:  # noqa: BLE001 - reported, then the process exits
            if self._stopping:
                return  # the socket was closed under the loop by stop()
            self.failure = f"{type(exc).__name__}: {exc}"
        else:
            if self._stopping:
                return
            self.failure = "the server loop returned"
        log.error("web server thread stopped: %s", self.failure)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> WebServer:
        # Each SQLite call and socket operation releases the GIL; getting it
        # back waits for the switch interval (5 ms by default) while request
        # threads run Python, which stalls waitress's I/O thread and the
        # thread holding the write lock.  1 ms cut the signup p99 under load
        # by a fifth (bench/signup.py); it is process-wide, hence set here,
        # where the process becomes a server.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        self._thread.start()
        return self

    def stop(self) -> None:
        from waitress import wasyncore

        self._stopping = True
        self.server.task_dispatcher.shutdown(timeout=5)
        wasyncore.close_all(self.server._map)
        self._thread.join(timeout=5)
        state = self.app.extensions.get("funnel")
        if state is not None:
            state.close()


def raise_open_files_limit(wanted: int) -> int:
    """Lift this process's soft RLIMIT_NOFILE towards ``wanted`` (up to the hard limit).

    Each open connection is a file descriptor; a soft limit of 1024 (a common
    default) would make accept() fail long before ``server_connection_limit``.
    Returns the soft limit now in force.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit to %d: %s", target, exc)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning(
            "open-files limit is %d, below server_connection_limit + 100 = %d; "
            "raise LimitNOFILE in the systemd unit",
            soft,
            wanted,
        )
    return soft


def configure_logging() -> None:
    """Errors to stderr (systemd's journal); waitress's queue-depth notes only when dire."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    # "Task queue depth is N" is logged for every request that waits for a
    # thread: under a burst that is thousands of lines saying "busy".
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    # aiosmtpd (the dev SMTP server) logs every connection at INFO.
    logging.getLogger("mail.log").setLevel(logging.WARNING)


def wait_for_signal(stop: threading.Event, watch: Callable[[], str | None] | None = None) -> None:
    """Block until Ctrl-C / SIGTERM (or ``stop`` is set by someone else).

    ``watch`` is polled twice a second; when it returns a reason (a server or
    worker thread died), this raises FunnelError with it, so the command exits
    non-zero and systemd restarts the service.
    """

    def handler(signum, frame):
        stop.set()

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            reason = watch() if watch else None
            if reason:
                stop.set()
                raise FunnelError(f"{reason}; exiting so the service manager restarts funnel")
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def server_watch(web: WebServer) -> Callable[[], str | None]:
    """A ``watch`` for :func:`wait_for_signal`: why the web server thread died, if it did."""

    def watch() -> str | None:
        if web.alive():
            return None
        return f"web server thread stopped ({web.failure or 'no reason given'})"

    return watch


def serve(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8000,
    threads: int | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """``funnel serve``: the site alone (production runs ``funnel worker`` beside it).

    Returns on SIGINT/SIGTERM; raises FunnelError if the server thread dies.
    """
    configure_logging()
    raise_open_files_limit(settings.server_connection_limit + 100)
    web = WebServer(create_app(settings), host, port, threads).start()
    if on_ready:
        on_ready(web.url)
    try:
        wait_for_signal(threading.Event(), server_watch(web))
    finally:
        web.stop()


# ----------------------------------------------------------------- funnel up
def _worker_loop(
    settings: Settings,
    stop: threading.Event,
    clock: Callable[[], datetime],
    interval: float,
    on_summary: Callable | None,
) -> None:
    """The delivery worker, or (until it exists) a plain loop over ``send_due``."""
    try:
        from campaigns.worker import run_worker
    except ImportError as exc:
        if exc.name != "campaigns.worker":
            raise
        run_worker = None
    if run_worker is not None:
        run_worker(
            settings,
            stop,
            clock=clock,
            interval=interval,
            on_summary=on_summary,
            on_error=lambda exc: log.warning("worker: %s", exc),
        )
        return
    from campaigns.sender import send_due

    database = connect(settings.db)
    try:
        while not stop.is_set():
            try:
                summary = send_due(database, settings, clock)
            except FunnelError as exc:
                log.warning("worker: %s", exc)
            else:
                if on_summary:
                    on_summary({}, summary)
            stop.wait(interval)
    finally:
        database.close()


@dataclass
class Stack:
    """Everything ``funnel up`` runs: site, worker, dev SMTP server."""

    settings: Settings
    web: WebServer
    devmail: devmail.DevMailServer | None
    worker: threading.Thread | None
    stop_event: threading.Event

    @property
    def url(self) -> str:
        return self.web.url

    def problem(self) -> str | None:
        """Why the stack can't go on (a thread died), for :func:`wait_for_signal`."""
        if self.worker is not None and not self.worker.is_alive() and not self.stop_event.is_set():
            return "worker thread stopped (see the error above)"
        return server_watch(self.web)()

    def stop(self) -> None:
        self.stop_event.set()
        self.web.stop()
        if self.worker is not None:
            self.worker.join(timeout=30)
        if self.devmail is not None:
            self.devmail.stop()


def start_stack(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    smtp_port: int | None = None,
    worker: bool = True,
    worker_interval: float = 1.0,
    threads: int = 8,
    clock: Callable[[], datetime] = clocks.now,
    on_summary: Callable | None = None,
) -> Stack:
    """Start the dev stack: dev SMTP on ``smtp_port`` (None = no dev SMTP), worker, site.

    With a dev SMTP server the settings' relay is pointed at it, so every
    message lands in the dev inbox.  The caller stops it with ``Stack.stop()``.
    """
    connect(settings.db, migrate=True).close()
    mail = None
    thread = None
    stop_event = threading.Event()
    try:
        if smtp_port is not None:
            mail = devmail.DevMailServer(settings.db, "127.0.0.1", smtp_port, clock).start()
            settings = settings.replace(smtp_urls=(mail.url,))
        app = create_app(settings, clock=clock)
        web = WebServer(app, host, port, threads)  # binds now: a busy port fails here
        if worker:
            thread = threading.Thread(
                target=_worker_loop,
                args=(settings, stop_event, clock, worker_interval, on_summary),
                name="funnel-worker",
                daemon=True,
            )
            thread.start()
        web.start()
    except BaseException:
        stop_event.set()
        if thread is not None:
            thread.join(timeout=30)
        if mail is not None:
            mail.stop()
        raise
    return Stack(settings, web, mail, thread, stop_event)


__all__ = [
    "create_app",
    "form_snippet",
    "serve",
    "start_stack",
    "Stack",
    "WebServer",
    "server_watch",
    "raise_open_files_limit",
    "SlidingWindowLimiter",
    "db",
    "settings",
    "now",
    "page",
    "client_ip",
    "csrf_exempt",
    "csrf_field",
    "form_token",
    "error_page",
    "escape",
]
