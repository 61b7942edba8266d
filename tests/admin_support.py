"""Helpers for the admin console tests: a cheap password hasher, a console client.

Tests import the fixtures from here (like browser_support), so their names
reappear as parameters.
"""

from __future__ import annotations

import re

import pyotp
import pytest
from argon2 import PasswordHasher

from subscribers import admins
from web import create_app
from web.admin import auth

HTTPS = "https://news.backinmotion-physio.co.uk"
EMAIL = "manager@backinmotion-physio.co.uk"
PASSWORD = "calm-lumbar-heron-42"
_TOKEN = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def fast_hash(monkeypatch):
    """argon2id with tiny costs: the tests hash and verify many times."""
    monkeypatch.setattr(admins, "HASHER", PasswordHasher(time_cost=1, memory_cost=256, parallelism=1))
    admins._dummy_hash.cache_clear()
    monkeypatch.setattr(auth, "LOGIN_FLOOR_SECONDS", 0.0)
    yield
    admins._dummy_hash.cache_clear()


class Console:
    """A browser-like test client for /admin over https."""

    def __init__(self, app, ip: str = "203.0.113.5"):
        self.app = app
        self.ip = ip
        self.client = app.test_client()

    def _env(self) -> dict:
        return {"REMOTE_ADDR": self.ip}

    def get(self, path: str, **kw):
        return self.client.get(path, base_url=HTTPS, environ_base=self._env(), **kw)

    def post(self, path: str, data: dict | None = None, *, token: str | None = None, **kw):
        data = dict(data or {})
        if token is not None:
            data["csrf"] = token
        return self.client.post(path, data=data, base_url=HTTPS, environ_base=self._env(), **kw)

    def token(self, path: str = "/admin/login") -> str:
        r = self.get(path)
        found = _TOKEN.findall(r.get_data(as_text=True))
        assert found, f"no CSRF token on {path} ({r.status_code})"
        return found[-1]  # the page's own form (the header's logout form comes first)

    def login(self, email: str = EMAIL, password: str = PASSWORD, **kw):
        return self.post("/admin/login", {"email": email, "password": password},
                         token=self.token(), **kw)

    def code(self, secret: str, now, path: str = "/admin/login/code"):
        return self.post(path, {"code": pyotp.TOTP(secret).at(now)}, token=self.token(path))

    def session_cookie(self):
        return self.client.get_cookie("__Host-funnel_admin", domain="news.backinmotion-physio.co.uk")


@pytest.fixture
def admin_user(db, clock, fast_hash):
    return admins.add_user(db, EMAIL, PASSWORD, clock())


@pytest.fixture
def console(settings, clock, admin_user):
    return Console(create_app(settings, clock=clock))


@pytest.fixture
def signed_in(console):
    r = console.login()
    assert r.status_code == 303, r.get_data(as_text=True)
    return console
