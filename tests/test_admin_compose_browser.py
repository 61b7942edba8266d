"""Compose a broadcast in a real Chromium against the real stack, at 1280 px and 375 px.

Write it with the live preview showing the real email at phone and desktop
width, save it, test-send it to yourself and find it in the dev inbox,
schedule it, pause it, resume it.  Screenshots go to tests/artifacts/ (the
1280 px compose screenshot is also the README's, docs/images/admin-compose.png).
"""

# ruff: noqa: F811
from __future__ import annotations

import re
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from browser_support import (  # noqa: F401 (fixtures)
    ADMIN,
    ARTIFACTS,
    chromium,
    fits,
    live,
    signed_in_page,
    wait_for,
    zone,
)

from campaigns import broadcasts
from funnel.db import utcnow
from subscribers import admins, optin

pytestmark = pytest.mark.browser

DOCS_IMAGE = Path(__file__).resolve().parent.parent / "docs" / "images" / "admin-compose.png"
BODY = ("We are opening **on Saturday mornings** from January.\n\n"
        "- 8:00 to 12:00, all physiotherapists\n- Book online as usual\n")


def preview_text(pg) -> str:
    """The text of the phone-width email inside the preview frame ('' until it is there)."""
    pg.wait_for_timeout(100)  # let playwright take in the frames that came and went
    outer = pg.frame(name="preview")
    if outer is None or not outer.child_frames:
        return ""
    try:
        return outer.child_frames[0].inner_text("body")
    except Exception:  # the frame is being replaced by a newer preview
        return ""


def whole_page_shot(pg, path: Path) -> None:
    """A screenshot of the whole page with the viewport made that tall first: a full_page
    screenshot catches the preview's nested frames half painted."""
    size = pg.viewport_size
    pg.set_viewport_size({"width": size["width"], "height": pg.evaluate("document.body.scrollHeight")})
    pg.wait_for_timeout(700)
    pg.screenshot(path=str(path))
    pg.set_viewport_size(size)


def status(pg) -> str:
    return pg.inner_text("#status").strip()


@pytest.mark.parametrize("width", [1280, 375])
def test_compose_preview_test_send_schedule_pause_resume(live, chromium, zone, width):
    ARTIFACTS.mkdir(exist_ok=True)
    sid = optin.signup(live.db, live.settings, "reader@example.com", utcnow(), name="Robin").subscriber_id
    optin.activate_imported(live.db, live.settings, sid, utcnow(), "browser test")

    with signed_in_page(live, chromium, zone, width, "/admin/broadcasts/new") as pg:
        wait_for(lambda: "would get it now" in pg.inner_text("#audience"), what="the live count")
        assert pg.inner_text("#audience").startswith("1 reader")

        pg.fill("#subject", "Saturday mornings, {{ name }}")
        pg.fill("#preheader", "From January")
        pg.fill("#body", BODY)
        wait_for(lambda: "Saturday mornings" in preview_text(pg), what="the live preview")
        # The subject with {{ name }} rendered for the sample reader, two widths side by side.
        outer = pg.frame(name="preview")
        assert "Saturday mornings, Alex" in outer.inner_text("h1")
        assert len(outer.child_frames) == 2
        assert "on Saturday mornings" in outer.child_frames[1].inner_text("body")
        assert fits(pg)
        shot = ARTIFACTS / f"admin-compose-{width}.png"
        whole_page_shot(pg, shot)
        if width == 1280:
            shutil.copyfile(shot, DOCS_IMAGE)

        pg.click("#save")
        pg.wait_for_url(re.compile(r".*/admin/broadcasts/\d+$"))
        cid = int(pg.url.rsplit("/", 1)[1])
        assert status(pg) == "draft"

        pg.click("#test-send")
        pg.wait_for_url(re.compile(r".*\?done=test$"))
        live.wait_for_mail(ADMIN, "[Test] Saturday mornings")
        pg.goto(live.url + "/dev/inbox")
        pg.click("text=[Test] Saturday mornings")
        pg.wait_for_url(re.compile(r".*/dev/inbox/\d+$"))
        assert "Saturday mornings" in pg.frame_locator("iframe.email").locator("body").inner_text()
        pg.screenshot(path=str(ARTIFACTS / f"admin-compose-inbox-{width}.png"), full_page=True)

        pg.goto(live.url + f"/admin/broadcasts/{cid}")
        when = utcnow() + timedelta(days=2)
        pg.fill("#when", f"{when:%Y-%m-%d} 09:00")
        pg.select_option("#zone", "utc")
        pg.click("#schedule")
        pg.wait_for_url(re.compile(r".*\?done=scheduled$"))
        assert status(pg) == "scheduled"
        pg.click("#pause")
        pg.wait_for_url(re.compile(r".*\?done=paused$"))
        assert status(pg) == "paused"
        pg.click("#resume")
        pg.wait_for_url(re.compile(r".*\?done=resumed$"))
        assert status(pg) == "scheduled"
        assert fits(pg)
        pg.screenshot(path=str(ARTIFACTS / f"admin-broadcast-{width}.png"), full_page=True)
    c = broadcasts.get(live.db, cid)
    assert c.status == "scheduled" and c.send_at.startswith(f"{when:%Y-%m-%d}T09:00")
    # The test message was not counted as the campaign's progress.
    assert broadcasts.status(live.db, live.settings, cid, utcnow()).total == 0
    assert [r["action"] for r in admins.audit_log(live.db, 10)][:5] == [
        "broadcast_resume", "broadcast_pause", "broadcast_schedule", "broadcast_test", "broadcast_create"]
    assert pg.console_errors == []
