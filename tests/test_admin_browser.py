"""The admin console in a real Chromium against the real stack, at 1280 px and 375 px.

Sign in with a password and a TOTP code (computed with pyotp), find a person,
open their timeline (with the view link of the email they were sent), erase
them by typing their address.  Screenshots go to tests/artifacts/.  The pages
must fit the width and raise no console errors (a CSP violation is one).
"""

# ruff: noqa: F811
from __future__ import annotations

import re

import pytest
from browser_support import (  # noqa: F401 (fixtures)
    ARTIFACTS,
    chromium,
    fits,
    live,
    signed_in_page,
    zone,
)

from funnel.db import utcnow
from subscribers import admins, lifecycle, optin

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("width", [1280, 375])
def test_sign_in_with_totp_find_a_person_and_erase_them(live, chromium, zone, width):
    ARTIFACTS.mkdir(exist_ok=True)
    sid = optin.signup(live.db, live.settings, "robin.walker@example.com", utcnow(), name="Robin Walker",
                       timezone=zone, ip="192.0.2.44").subscriber_id
    optin.signup(live.db, live.settings, "june.park@example.com", utcnow(), name="June Park")
    live.wait_for_mail("robin.walker@example.com", "confirm")  # the worker sent the confirmation

    with signed_in_page(live, chromium, zone, width, "/admin/", totp=True) as pg:
        assert "Dashboard" in pg.inner_text("h1")
        assert "Signups" in pg.inner_text("main")
        assert fits(pg)
        pg.screenshot(path=str(ARTIFACTS / f"admin-dashboard-{width}.png"), full_page=True)

        pg.click("nav >> text=People")
        pg.wait_for_url("**/admin/people/")
        pg.fill("#q", "robin")
        pg.click("form.search button[type=submit]")
        pg.wait_for_url(re.compile(r".*/admin/people/\?q=robin.*"))
        rows = pg.locator("table.people tbody tr")
        assert rows.count() == 1 and "robin.walker@example.com" in rows.inner_text()
        assert fits(pg)
        pg.screenshot(path=str(ARTIFACTS / f"admin-people-{width}.png"), full_page=True)

        pg.click("text=robin.walker@example.com")
        pg.wait_for_url(f"**/admin/people/{sid}")
        timeline = pg.inner_text("table.timeline")
        assert "subscribed" in timeline and "sent" in timeline and "192.0.2.44" in pg.inner_text("main")
        view = pg.locator("table.timeline a").first
        assert "/messages/" in view.get_attribute("href")
        assert fits(pg)
        pg.screenshot(path=str(ARTIFACTS / f"admin-person-{width}.png"), full_page=True)

        pg.fill("#confirm", "robin.walker@example.com")
        pg.click("button.danger")
        pg.wait_for_url(re.compile(rf".*/admin/people/{sid}\?done=.*"))
        assert pg.inner_text("#status") == "erased"
        assert "Erased" in pg.inner_text("main")
        pg.screenshot(path=str(ARTIFACTS / f"admin-erased-{width}.png"), full_page=True)
    assert lifecycle.get(live.db, sid).status == "erased"
    assert lifecycle.get(live.db, sid).email is None and lifecycle.get(live.db, sid).name == ""
    assert [r["action"] for r in admins.audit_log(live.db, 5)][0] == "erase"
    assert pg.console_errors == []
