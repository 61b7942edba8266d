"""What every admin screen shares: the guard, the session cookie, rendering, audit.

* :func:`guard` runs before every request under /admin (see web/admin/__init__.py):
  the ``admin_allowed_ips`` allowlist, https outside dev mode (the scheme as
  waitress sees it, so X-Forwarded-Proto counts only from a trusted proxy,
  like :func:`web.common.client_ip`), a live session for everything but the
  login page (else 302 to it), and on every POST a form token bound to this
  session (the app's CSRF check has already verified its signature, cookie and
  age; a token from another session or from no session is stale: 403).
* The session cookie is ``__Host-funnel_admin``: Secure (plain http is only
  allowed in dev mode, where it is ``funnel_admin``), HttpOnly,
  SameSite=Strict, Path=/; it holds a random id, the database a hash of it.
* :func:`render_admin` renders ``templates/pages/admin/<template>`` in the
  console's layout; ``csrf_field()`` in those templates makes the bound token,
  and ``<body hx-vals>`` carries it for htmx requests.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from flask import abort, current_app, g, redirect, render_template, request, url_for
from markupsafe import Markup

from funnel.errors import FunnelError, InputError, NotFound
from subscribers import admins

from .. import common as web

#: The login page: the one admin endpoint that needs no session.
PUBLIC = {"admin.auth.login", "admin.auth.login_post"}
#: Where a half-finished login may go: its second-factor page and logout.
STAGES = {
    "totp": ("admin.auth.totp", {"admin.auth.totp", "admin.auth.totp_post", "admin.auth.logout"}),
    "enrol": ("admin.auth.enrol", {"admin.auth.enrol", "admin.auth.enrol_post", "admin.auth.logout"}),
}
LOGIN_KIND = "admin-login"
#: The console's nav: (label, blueprint).  An entry shows when its blueprint is registered.
NAV = (
    ("Dashboard", "dashboard"),
    ("People", "people"),
    ("Broadcasts", "broadcasts"),
    ("Series", "series"),
    ("Webinars", "webinars"),
    ("Appointments", "appointments"),
    ("Settings", "settings"),
)

__all__ = [
    "EMAIL_CSP_ANCESTORS",
    "UPLOAD_MARGIN",
    "FunnelError",
    "InputError",
    "NotFound",
    "audit",
    "client_ip",
    "confirm_typed",
    "csrf_field",
    "current_admin",
    "db",
    "download",
    "email_response",
    "now",
    "render_admin",
    "settings",
    "zones",
]

db = web.db
now = web.now
settings = web.settings
client_ip = web.client_ip
zones = web.zones
email_response = web.email_response
#: A sent email shown inside the console may be framed by the console only.
EMAIL_CSP_ANCESTORS = "'self'"
#: The multipart envelope around an uploaded file (its size is checked on its own).
UPLOAD_MARGIN = 1024 * 1024


# ----------------------------------------------------------------- cookie
def secure() -> bool:
    return not settings().dev or request.scheme == "https"


def cookie_name() -> str:
    return "__Host-funnel_admin" if secure() else "funnel_admin"


def session_cookie() -> str | None:
    return request.cookies.get(cookie_name())


def set_session_cookie(response, session_id: str):
    response.set_cookie(cookie_name(), session_id, path="/", secure=secure(), httponly=True,
                        samesite="Strict")
    return response


def clear_session_cookie(response):
    response.delete_cookie(cookie_name(), path="/", secure=secure(), httponly=True,
                           samesite="Strict")
    return response


# ----------------------------------------------------------------- guard
def _allowed(ip: str, networks: tuple[str, ...]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(n, strict=False) for n in networks)


def guard():
    """Before every /admin request: allowlist, https, session, session-bound CSRF."""
    s = settings()
    if s.admin_allowed_ips and not _allowed(client_ip(), s.admin_allowed_ips):
        return web.error_page(403, "The admin console is not open to your network.", "Not allowed")
    if not s.dev and request.scheme != "https":
        return web.error_page(403, "The admin console only answers over https.", "https only")
    session = admins.session(db(), session_cookie(), now(), ip=client_ip())
    g.admin_session = session
    endpoint = request.endpoint or ""
    if request.method == "POST":
        expected = LOGIN_KIND if endpoint in PUBLIC or session is None else _bound_kind(session)
        if g.get("form", {}).get("k") != expected:
            abort(403)
    if endpoint in PUBLIC:
        return None
    if session is None:
        target = request.full_path if request.method == "GET" else None
        return redirect(url_for("admin.auth.login", next=target), 302)
    if session.stage in STAGES:
        page, allowed = STAGES[session.stage]
        if endpoint not in allowed:
            return redirect(url_for(page), 302)
    return None


def _bound_kind(session: admins.Session) -> str:
    return "admin:" + admins.csrf_binding(session)


def safe_next(target: str | None) -> str:
    """Only a path inside the console, never another host."""
    if target and target.startswith("/admin") and not target.startswith("//"):
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc:
            return target.rstrip("?")
    return url_for("admin.dashboard.index")


# ----------------------------------------------------------------- helpers
def current_admin() -> admins.Admin | None:
    """The logged-in admin (None on the login page)."""
    session = g.get("admin_session")
    return session.admin if session is not None else None


def current_session() -> admins.Session | None:
    return g.get("admin_session")


def csrf_field(login: bool = False) -> Markup:
    """The hidden CSRF input for a console form, bound to this session (or the login form's)."""
    session = current_session()
    kind = LOGIN_KIND if login or session is None else _bound_kind(session)
    return web.csrf_field(kind)


def csrf_token() -> str:
    session = current_session()
    return web.form_token(LOGIN_KIND if session is None else _bound_kind(session))


def audit(action: str, target: str | None, detail: str | None = None, *,
          subscriber_id: int | None = None) -> None:
    """Write the logged-in admin's action to the events log (who, what, when, IP)."""
    admin = current_admin()
    admins.record(db(), admin.email if admin else "?", action, target, now(), detail=detail,
                  ip=client_ip(), subscriber_id=subscriber_id)


def confirm_typed(name: str, field: str = "confirm") -> None:
    """A destructive action goes ahead only when ``name`` was typed into the form.

    Raises InputError (shown as a 400 page, nothing changed) otherwise.
    """
    typed = request.form.get(field, "").strip()
    if not name or typed.casefold() != name.strip().casefold():
        raise InputError(f"{field}: type {name} exactly to confirm; nothing was changed")


def nav() -> list[tuple[str, str, bool]]:
    """(label, url, current) for each registered screen."""
    entries = []
    current = (request.blueprint or "").split(".")
    for label, name in NAV:
        endpoint = f"admin.{name}.index"
        if endpoint in current_app.view_functions:
            entries.append((label, url_for(endpoint), name in current))
    return entries


def template_values() -> dict:
    session = current_session()
    return {"csrf_field": csrf_field, "csrf_token": csrf_token, "admin": current_admin(),
            "signed_in": session is not None and session.stage == "active", "nav": nav}


def render_admin(template: str, status: int = 200, **context):
    """Render ``templates/pages/admin/<template>`` with the console's common values."""
    return render_template(f"admin/{template}", s=settings(), **context), status


def download(body: str, filename: str, mimetype: str):
    response = current_app.response_class(body, mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def too_large(exc):
    return render_admin("error.html.j2", 413, title="That file is too large",
                        message="file: the file is larger than 50 MB; split it, or import it on "
                                "the server with `funnel subscribers import`")


def funnel_error(exc: FunnelError):
    status = 404 if isinstance(exc, NotFound) else 400
    return render_admin("error.html.j2", status, title="That didn't work", message=str(exc))
