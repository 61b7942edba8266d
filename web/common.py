"""Request helpers every blueprint of the public door shares.

The database connection, clock and settings of the running app; rendering a
page or an error page; CSRF form tokens; the in-memory rate limiter; group
commit for signups; the honeypot and the timing floor.  Blueprints
(:mod:`web.pages`, :mod:`web.webinars`) import this module and the domain,
never each other.

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
  only shows a prefilled form and stores nothing).  :func:`init_app` installs
  the check for every blueprint's POSTs; :func:`csrf_exempt` opts a view out.
* **Signup reveals nothing.**  Whatever the address's state (new, pending,
  active, unsubscribed, suppressed), a valid submission is answered with the
  same redirect to "check your inbox", no sooner than ``SIGNUP_FLOOR_SECONDS``
  after it arrived (:func:`pad`), so neither the body nor the timing tells
  whether the address is known.  A filled honeypot or a form sent faster than
  ``min_form_seconds`` gets the same answer and stores nothing.
* Every value is escaped (Jinja autoescape is on for ``*.html.j2``); security
  headers are added to every response (see :func:`security_headers`).
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import ipaddress
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import available_timezones

from flask import Flask, abort, current_app, g, render_template, request
from itsdangerous import BadData, URLSafeSerializer
from markupsafe import Markup
from werkzeug.exceptions import HTTPException

from funnel import health
from funnel.db import connect, transaction
from funnel.errors import DatabaseError, FunnelError, NotFound, TokenError
from funnel.settings import Settings

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


def allow_rate() -> bool:
    """One hit for this reader's address in the rate limiter; False when over the limit."""
    return _state().limiter.allow(client_ip(), now().timestamp())


def group_commit(fn: Callable):
    """Run ``fn(conn)`` in a transaction shared with concurrent requests (see GroupCommit)."""
    return _state().signups.run(db(), fn)


def health_problems() -> list[str]:
    """What /healthz reports: an empty list when all is well."""
    return _state().checker.problems(db(), settings(), now())


def csrf_exempt(view):
    """Mark a view whose POST needs no CSRF token (it must check on its own if needed)."""
    view._csrf_exempt = True
    return view


# ----------------------------------------------------------------- CSRF / form tokens
def _cookie_name() -> str:
    # __Host- cookies must be Secure, Path=/ and domain-less: no subdomain can plant one.
    return "__Host-funnel_csrf" if settings().https else "funnel_csrf"


def _serializer() -> URLSafeSerializer:
    return _form_serializer(tuple(settings().secret_keys))


@lru_cache(maxsize=8)
def _form_serializer(keys: tuple[str, ...]) -> URLSafeSerializer:
    # Built once per key set, not per request (a fifth of the form check's CPU).
    # itsdangerous signs with the last key and tries all: settings list newest first.
    return URLSafeSerializer(list(reversed(keys)), salt="funnel.form.v1")


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


def check_csrf() -> dict:
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


def csrf_guard() -> None:
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    if request.routing_exception is not None:
        return  # 404 / 405 answer first
    view = current_app.view_functions.get(request.endpoint or "")
    if getattr(view, "_csrf_exempt", False):
        return
    check_csrf()


def security_headers(response):
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
        return error_page(400, reader_message(exc))

    @app.errorhandler(Exception)
    def crash(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_page(500)


def reader_message(exc: FunnelError) -> str:
    """Our errors are 'field: sentence'; a reader needs the sentence."""
    text = str(exc)
    field_name, sep, rest = text.partition(": ")
    if sep and field_name.replace("_", "").isalnum():
        text = rest
    return text[:1].upper() + text[1:]


def _link_problem(reason: str = "", status: int = 400):
    return page("link_problem.html.j2", status, reason=reason, form=signup_values())


# ----------------------------------------------------------------- helpers
def signup_values(**values) -> dict:
    return {"email": "", "name": "", "consent": False, **values}


@lru_cache(maxsize=1)
def zones() -> list[str]:
    return sorted(
        z for z in available_timezones() if "/" in z and not z.startswith(("Etc/", "SystemV/"))
    )


def pad(started: float) -> None:
    """Answer no sooner than SIGNUP_FLOOR_SECONDS after the request arrived."""
    left = SIGNUP_FLOOR_SECONDS - (time.perf_counter() - started)
    if left > 0:
        time.sleep(left)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def dev_only() -> None:
    """The dev inbox: only in dev mode, only from this machine, only by a loopback name."""
    if not settings().dev:
        abort(404)
    # The Host check stops DNS rebinding: a page on evil.example resolving to 127.0.0.1.
    hostname = (urlsplit("//" + request.host).hostname or "") if request.host else ""
    if not is_loopback(client_ip()) or not is_loopback(hostname):
        abort(403)


def email_response(html: str, ancestors: str):
    response = current_app.response_class(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = EMAIL_CSP.format(ancestors=ancestors)
    return response


def init_app(app: Flask, settings: Settings, clock: Callable[[], datetime]) -> None:
    """Give ``app`` its state (settings, clock, limiter, connections) and the page rules.

    The CSRF check runs before every POST of every blueprint; security headers
    are added to every response; errors become friendly pages.
    """
    app.jinja_env.globals.update(csrf_field=csrf_field)
    app.extensions["funnel"] = _State(
        settings, clock, SlidingWindowLimiter(settings.signup_rate_per_minute)
    )
    # X-Forwarded-* is handled by waitress alone (WebServer: trusted_proxy_*),
    # so the app sees the reader's address in REMOTE_ADDR and never reads the
    # header itself.
    app.before_request(csrf_guard)
    app.after_request(security_headers)
    _register_errors(app)
