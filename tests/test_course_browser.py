"""The 28-day programme's start button in a real Chromium on a phone-sized screen,
against the real stack (see browser_support): from part 1's preferences link to
day 1 in the dev inbox."""

# The fixtures are imported from browser_support, so their names reappear as parameters.
# ruff: noqa: F811
from __future__ import annotations

import pytest
from browser_support import (  # noqa: F401 (fixtures)
    ARTIFACTS,
    chromium,
    daytime_zone,
    live,
    page,
    zone,
)

from campaigns.series import find_series
from subscribers import lifecycle, optin, tokens

pytestmark = pytest.mark.browser


def _now():
    from funnel.db import utcnow

    return utcnow()


def test_start_the_programme_from_the_preferences_page(live, page):
    s = live.settings
    sid = optin.signup(live.db, s, "pat@example.com", _now(), timezone=daytime_zone()).subscriber_id
    optin.confirm(live.db, s, tokens.confirm_token(
        s, sid, lifecycle.get(live.db, sid).confirm_nonce, _now()), _now())  # fmt: skip
    part1 = find_series(s.content_paths, "importance-of-exercise").steps[0].subject
    mail = live.wait_for_mail("pat@example.com", part1)
    prefs = next(u for u in live.message(mail["id"]).links if "/p/" in u)

    page.set_viewport_size({"width": 375, "height": 800})
    page.goto(prefs)
    page.get_by_role("button", name="Start the 28-day programme").click()
    page.wait_for_selector("text=You've started the 28-day programme")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "programme-started-375.png"), full_page=True)
    day1 = find_series(s.content_paths, "28-day-programme").steps[0].subject
    live.wait_for_mail("pat@example.com", day1)
    subs = lifecycle.subscriptions(live.db, sid)
    assert subs["series:28-day-programme"]["status"] == "subscribed"
    assert subs["broadcasts"]["status"] == "subscribed"

    # Back on the preferences page the button is gone and the course is a list of its own.
    page.goto(prefs)
    assert page.get_by_role("button", name="Start the 28-day programme").count() == 0
    assert page.get_by_text("The 28-day programme: one short email a day").count() == 1
