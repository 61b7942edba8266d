"""The registration page in a real Chromium: invite link -> one click, time in the visitor's zone.

Needs /usr/bin/chromium (``apt-get install chromium``).  Skipped with a
message when it is missing, except on CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import pytest
from browser_support import chromium  # noqa: F401 (a fixture)

from campaigns import webinars
from subscribers import optin

pytestmark = pytest.mark.browser


@pytest.fixture
def site(settings, db, clock):
    from web import create_app
    from web.serve import WebServer

    web = WebServer(create_app(settings, clock=clock), "127.0.0.1", 0, threads=4).start()
    try:
        yield web.url
    finally:
        web.stop()


def test_invite_link_registers_with_one_click_in_the_visitors_zone(
    chromium, site, settings, db, clock  # noqa: F811 (fixture parameter)
):
    now = clock()
    sid = optin.signup(db, settings, "alex@example.com", now, name="Alex Ng").subscriber_id
    optin.activate_imported(db, settings, sid, now, "test fixture")
    webinars.create_webinar(
        db,
        settings,
        {
            "slug": "spine-health",
            "title": "Spine Health Webinar",
            "start": "2026-12-10 18:00",
            "timezone": "Europe/London",
            "join_url": "https://meet.example/spine",
            "description": "Live answers about recurring low back pain.",
        },
        now,
    )
    token = webinars.invite_token(settings, "spine-health", sid, now)

    context = chromium.new_context(timezone_id="America/New_York", locale="en-US")
    page = context.new_page()
    errors: list[str] = []
    page.on(
        "console",
        lambda m: (
            errors.append(m.text)
            if m.type == "error" and "Failed to load resource" not in m.text
            else None
        ),
    )
    page.on(
        "response",
        lambda r: (
            errors.append(f"{r.status} {r.url}")
            if r.status >= 400 and not r.url.endswith("/favicon.ico")
            else None
        ),
    )
    page.goto(f"{site}/w/spine-health?t={token}")

    when = page.locator("[data-webinar-time]")
    when.and_(page.locator("[data-local='1']")).wait_for()
    text = when.inner_text()
    # 18:00 in London on 10 December is 1:00 PM in New York (EST).
    assert "December 10, 2026" in text and "1:00 PM" in text and "EST" in text, text
    assert "Shown in your time zone (America/New_York)" in page.inner_text("[data-tz-note]")
    assert "alex@example.com" in page.inner_text("form.register")
    assert (
        db.execute("SELECT COUNT(*) FROM registrations").fetchone()[0] == 0
    )  # the GET did nothing

    page.get_by_role("button", name="Reserve my spot").click()
    page.get_by_role("heading", name="You're registered").wait_for()
    assert db.execute("SELECT subscriber_id, status, source FROM registrations").fetchall() == [
        (sid, "registered", "invite")
    ]
    assert "1:00 PM" in page.inner_text("[data-webinar-time]")
    assert not errors, errors  # no CSP violations or script errors

    # A new visitor: the form carries their zone; the newsletter box starts unticked.
    other = chromium.new_context(timezone_id="Asia/Tokyo", locale="en-US").new_page()
    other.goto(f"{site}/w/spine-health")
    assert "3:00 AM" in other.inner_text("[data-webinar-time]")  # Friday 03:00 JST
    assert not other.is_checked("input[name=newsletter]")
    other.fill("#email", "kenji@example.com")
    other.fill("#name", "Kenji")
    clock.advance(seconds=5)  # the form's minimum fill time, on the app's clock
    other.get_by_role("button", name="Reserve my spot").click()
    # The email form says the same to everyone; the seat is confirmed by email.
    other.get_by_role("heading", name="Check your inbox").wait_for()
    row = db.execute(
        "SELECT s.timezone, s.status FROM subscribers s WHERE email = 'kenji@example.com'"
    )
    assert row.fetchone() == ("Asia/Tokyo", "pending")
