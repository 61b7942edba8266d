"""Fixtures for the browser tests: the real stack on loopback and Debian's Chromium.

The stack is what ``funnel up`` runs (waitress + worker thread + embedded SMTP
server) against a temp database, with the real clock.  Chromium is Debian's
``/usr/bin/chromium`` driven by Python playwright; we never download browsers.
Without it the tests skip, except under CI=true, where a missing browser fails.
"""

from __future__ import annotations

import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pyotp
import pytest
from conftest import free_port

from funnel import clock as clocks
from funnel import devmail
from funnel.db import connect, utcnow
from funnel.settings import test_settings
from subscribers import admins
from web.serve import start_stack

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
#: Zones spread around the world; the tests pick one where it is daytime now,
#: so part 1 is not held back by quiet hours.
ZONES = (
    "Europe/London",
    "America/New_York",
    "America/Los_Angeles",
    "Asia/Tokyo",
    "Australia/Sydney",
    "Asia/Kolkata",
    "Europe/Berlin",
    "America/Sao_Paulo",
    "Pacific/Auckland",
    "Asia/Dubai",
    "America/Chicago",
    "Asia/Singapore",
)


def daytime_zone(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    for name in ZONES:
        if 10 <= now.astimezone(ZoneInfo(name)).hour <= 18:
            return name
    raise AssertionError("no daytime zone found")  # pragma: no cover - the zones span the globe


def wait_for(predicate: Callable[[], object], timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class LiveStack:
    def __init__(self, stack, settings):
        self.stack = stack
        self.settings = settings
        self.url = stack.url
        self.db = connect(settings.db)

    def inbox(self) -> list[dict]:
        return devmail.listing(self.db)

    def wait_for_mail(self, to: str, subject_part: str, timeout: float = 15.0) -> dict:
        def find():
            for m in self.inbox():
                if to in m["rcpt_tos"] and subject_part.lower() in m["subject"].lower():
                    return m
            return None

        return wait_for(find, timeout, f"a message to {to} about {subject_part!r}")

    def message(self, message_id: int) -> devmail.DevMessage:
        return devmail.get(self.db, message_id)

    def get(self, url: str) -> int:
        """A plain GET like a link scanner's: no cookies, no scripts, redirects not followed
        (a tracked link's 302 may lead off this machine; its target is fetched on its own)."""
        try:
            with _NO_REDIRECTS.open(url, timeout=10) as r:
                r.read()
                return r.status
        except urllib.error.HTTPError as exc:
            exc.read()
            exc.close()
            return exc.code


class _Keep302(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


_NO_REDIRECTS = urllib.request.build_opener(_Keep302)


@contextmanager
def running_stack(tmp_path, **overrides):
    """The real stack on loopback with test settings (``overrides`` on top), on the real clock."""
    port = free_port()
    settings = test_settings(
        tmp_path,
        dev=True,
        base_url=f"http://127.0.0.1:{port}",
        min_form_seconds=0.3,
        smtp_urls=(f"smtp://127.0.0.1:{free_port()}",),
        **overrides,
    )
    # A real browser takes real time: the stack and the test both run on the real
    # clock (installed over the test's fake one for the length of the test).
    with clocks.use(clocks.real):
        stack = start_stack(
            settings, port=port, smtp_port=settings.relays[0].port, worker_interval=0.2,
            clock=clocks.real,
        )  # fmt: skip
        live = LiveStack(stack, stack.settings)
        try:
            yield live
        finally:
            live.db.close()
            stack.stop()


@pytest.fixture
def live(tmp_path):
    with running_stack(tmp_path) as stack:
        yield stack


@pytest.fixture(scope="module")
def chromium():
    if not CHROMIUM.exists():
        message = f"browser tests need Debian's Chromium at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def zone() -> str:
    return daytime_zone()


@contextmanager
def new_page(chromium, zone: str, width: int = 800):
    """A page in a fresh context *width* px wide in *zone*; its console errors are
    collected in ``pg.console_errors``; the context is closed afterwards."""
    context = chromium.new_context(timezone_id=zone, viewport={"width": width, "height": 900})
    context.set_default_timeout(15_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    pg.console_errors = errors
    try:
        yield pg
    finally:
        context.close()


@pytest.fixture
def page(chromium, zone):
    with new_page(chromium, zone) as pg:
        yield pg


ADMIN = "manager@backinmotion-physio.co.uk"
ADMIN_PASSWORD = "calm-lumbar-heron-42"


def fits(pg) -> bool:
    """The page is no wider than the viewport (nothing to scroll sideways)."""
    return pg.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


@contextmanager
def signed_in_page(live, chromium, zone: str, width: int, path: str, *, totp: bool = False):
    """A Chromium page *width* px wide, signed in to the console as ADMIN on *path*.

    The admin is created here (with a TOTP second factor when *totp*); opening
    *path* bounces to the login page, and signing in lands back on *path*.
    The page's console errors are collected in ``pg.console_errors``.
    """
    admins.add_user(live.db, ADMIN, ADMIN_PASSWORD, utcnow())
    secret = admins.totp_setup(live.db, ADMIN, utcnow()) if totp else None
    with new_page(chromium, zone, width) as pg:
        pg.goto(live.url + path)
        pg.wait_for_url(re.compile(r".*/admin/login\?.*"))
        pg.fill("#email", ADMIN)
        pg.fill("#password", ADMIN_PASSWORD)
        pg.click("button[type=submit]")
        if secret is not None:
            pg.wait_for_url(re.compile(r".*/admin/login/code.*"))
            pg.fill("#code", pyotp.TOTP(secret).now())
            pg.click("main button[type=submit]")
        pg.wait_for_url(live.url + path)
        yield pg
