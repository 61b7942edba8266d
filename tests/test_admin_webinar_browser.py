"""Upload the attendance of a past webinar in a real Chromium, at 1280 px and 375 px.

The webinar and its two registrants are made as they would have been two days
ago; the admin uploads Zoom's attendance CSV on the webinar's page and sees
who attended and who did not.  Screenshots go to tests/artifacts/.
"""

# ruff: noqa: F811
from __future__ import annotations

from datetime import timedelta

import pytest
from browser_support import (  # noqa: F401 (fixtures)
    ARTIFACTS,
    chromium,
    fits,
    live,
    signed_in_page,
    zone,
)

from campaigns import webinars
from funnel.db import utcnow
from subscribers import optin

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("width", [1280, 375])
def test_upload_attendance_for_a_past_webinar(live, chromium, zone, width, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    then = utcnow() - timedelta(days=2)
    start = then + timedelta(days=1)
    webinars.create_webinar(live.db, live.settings, {
        "slug": "spine-health", "title": "Spine Health Webinar", "timezone": "UTC",
        "start": f"{start:%Y-%m-%d %H:%M}", "join_url": "https://meet.clinic.example/spine",
    }, then)
    for addr in ("ana@example.com", "bo@example.com"):
        sid = optin.signup(live.db, live.settings, addr, then).subscriber_id
        optin.activate_imported(live.db, live.settings, sid, then, "browser test")
        webinars.register(live.db, live.settings, "spine-health", then, email=addr)
    report = tmp_path / "zoom.csv"
    report.write_text("User Email,Duration (Minutes)\nana@example.com,52\n", encoding="utf-8")

    with signed_in_page(live, chromium, zone, width, "/admin/webinars/spine-health") as pg:
        assert "2 registered" in pg.inner_text("main")
        pg.set_input_files("#file", str(report))
        pg.click("#upload")
        pg.wait_for_url("**/admin/webinars/spine-health/attendance")
        assert "1 attended, 1 no-show" in pg.inner_text("main")
        assert fits(pg)
        pg.screenshot(path=str(ARTIFACTS / f"admin-attendance-{width}.png"), full_page=True)
        pg.click("text=Back to the webinar")
        pg.wait_for_url("**/admin/webinars/spine-health")
        people = pg.inner_text("main table")
        assert "attended" in people and "no_show" in people
        assert fits(pg)
        pg.screenshot(path=str(ARTIFACTS / f"admin-webinar-{width}.png"), full_page=True)
    statuses = dict(live.db.execute("SELECT s.email, r.status FROM registrations r "
                                    "JOIN subscribers s ON s.id = r.subscriber_id").fetchall())
    assert statuses == {"ana@example.com": "attended", "bo@example.com": "no_show"}
    assert pg.console_errors == []
