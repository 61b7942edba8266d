"""Every /admin route is closed without a session, and every POST needs a session-bound token.

The routes are read from the app's url_map, so a screen added later is
covered without touching this file.
"""

# ruff: noqa: F811
from __future__ import annotations

import re

import pytest
from admin_support import (  # noqa: F401 (fixtures)
    HTTPS,
    Console,
    admin_user,
    console,
    fast_hash,
    signed_in,
)

from web import create_app


def admin_rules(app):
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/admin"):
            yield rule


def concrete(rule) -> str:
    """The rule's path with a plausible value in each variable."""
    return re.sub(r"<(?:(\w+):)?(\w+)>", lambda m: "1" if m.group(1) == "int" else "x", rule.rule)


def test_every_admin_route_needs_a_session(console):
    app = console.app
    open_pages = {"admin.auth.login"}
    rules = list(admin_rules(app))
    assert len(rules) >= 5
    for rule in rules:
        path = concrete(rule)
        if "GET" in rule.methods and rule.endpoint not in open_pages:
            r = console.get(path)
            assert r.status_code in (302, 401), (rule.rule, r.status_code)
            if r.status_code == 302:
                assert "/admin/login" in r.headers["Location"], rule.rule
        if "POST" in rule.methods:
            # With a valid login-form token but no session: not allowed either.
            r = console.post(path, token=console.token())
            assert r.status_code != 200 and r.status_code in (302, 401, 403), (rule.rule, r.status_code)


def test_every_admin_post_without_csrf_is_refused(signed_in):
    for rule in admin_rules(signed_in.app):
        if "POST" not in rule.methods:
            continue
        path = concrete(rule)
        assert signed_in.post(path).status_code == 403, rule.rule
        assert signed_in.post(path, token="forged").status_code == 403, rule.rule
    assert signed_in.get("/admin/").status_code == 200  # still signed in: nothing happened


def test_plain_http_is_refused_outside_dev_mode(console):
    r = console.client.get("/admin/login", base_url="http://news.backinmotion-physio.co.uk")
    assert r.status_code == 403 and "https" in r.get_data(as_text=True)
    assert console.get("/admin/login").status_code == 200


def test_dev_mode_allows_plain_http_with_a_non_secure_cookie(settings, clock, admin_user):
    app = create_app(settings.replace(dev=True), clock=clock)
    client = app.test_client()
    page = client.get("/admin/login").get_data(as_text=True)
    token = re.findall(r'name="csrf" value="([^"]+)"', page)[-1]
    r = client.post("/admin/login", data={"email": admin_user.email,
                                          "password": "calm-lumbar-heron-42", "csrf": token})
    assert r.status_code == 303
    header = next(h for h in r.headers.getlist("Set-Cookie") if h.startswith("funnel_admin="))
    assert "Secure" not in header and "HttpOnly" in header and "SameSite=Strict" in header


def test_allowlist(settings, clock, admin_user):
    app = create_app(settings.replace(admin_allowed_ips=("10.0.0.0/8",)), clock=clock)
    assert Console(app, ip="203.0.113.5").get("/admin/login").status_code == 403
    assert Console(app, ip="10.1.2.3").get("/admin/login").status_code == 200


def test_admin_can_be_turned_off(settings, clock):
    app = create_app(settings.replace(admin_enabled=False), clock=clock)
    assert not list(admin_rules(app))
    assert app.test_client().get("/admin/login", base_url=HTTPS).status_code == 404


@pytest.mark.parametrize("path", ["/admin/", "/admin/login"])
def test_admin_pages_run_no_inline_script(signed_in, path):
    r = signed_in.get(path)
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    body = r.get_data(as_text=True)
    assert "<script>" not in body and " onclick=" not in body and "javascript:" not in body
    assert r.headers["Cache-Control"] == "no-store"
