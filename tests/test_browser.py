"""A reader's whole path in a real Chromium, against the real stack (see browser_support).

Signup -> "check your inbox" -> dev inbox -> confirmation email -> confirm page
(the reader presses its one button) -> "you're in" -> part 1 in the dev inbox; then
the unsubscribe and preferences pages from a received email, screenshots at
phone and desktop widths, and a link scanner's GETs that must change nothing.
"""

# The fixtures are imported from browser_support, so their names reappear as parameters.
# ruff: noqa: F811
from __future__ import annotations

import re

import pytest
from browser_support import (  # noqa: F401 (fixtures)
    ARTIFACTS,
    chromium,
    daytime_zone,
    live,
    page,
    wait_for,
    zone,
)

from campaigns.series import find_series
from subscribers import lifecycle, optin, tokens

pytestmark = pytest.mark.browser


def step1_subject(settings) -> str:
    return find_series(settings.content_path, "importance-of-exercise").steps[0].subject


def confirmed_reader(live, email: str, name: str = "Robin") -> tuple[int, dict]:
    """A reader confirmed through the domain functions; returns (id, their part-1 message).

    They live where it is daytime now, so part 1 is not held back by quiet hours.
    """
    s = live.settings
    sid = optin.signup(live.db, s, email, _now(), name=name, timezone=daytime_zone()).subscriber_id
    token = tokens.confirm_token(s, sid, lifecycle.get(live.db, sid).confirm_nonce, _now())
    optin.confirm(live.db, s, token, _now())
    return sid, live.wait_for_mail(email, step1_subject(s))


def _now():
    from funnel.db import utcnow

    return utcnow()


def no_overflow(pg) -> bool:
    return pg.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_the_whole_funnel_in_a_browser(live, page, zone):
    pg = page
    pg.goto(live.url + "/")
    pg.fill("#email", "walker@example.com")
    pg.fill("#name", "Walker")
    pg.check("input[name=consent]")
    pg.wait_for_timeout(400)  # a person takes longer than min_form_seconds
    pg.click("button[type=submit]")
    pg.wait_for_url("**/check-your-inbox")
    assert "step 1 of 2" in pg.inner_text("main").lower() and "Check your inbox" in pg.inner_text(
        "h1"
    )
    sub = lifecycle.find(live.db, "walker@example.com")
    assert sub.status == "pending" and sub.timezone == zone  # filled in by static/tz.js

    # The dev inbox shows the confirmation email within a moment.
    live.wait_for_mail("walker@example.com", "confirm")
    pg.goto(live.url + "/dev/inbox")
    pg.click("text=Please confirm your subscription")
    pg.wait_for_url(re.compile(r".*/dev/inbox/\d+$"))
    frame = pg.frame_locator("iframe.email")
    assert "Walker" in frame.locator("body").inner_text()

    # The confirm link opens a page with one button; only pressing it confirms.
    pg.click("ul.links a[href*='/confirm/']")
    pg.wait_for_url("**/confirm/**")
    pg.wait_for_load_state("load")
    assert lifecycle.find(live.db, "walker@example.com").status == "pending"
    pg.click("button.big")
    pg.wait_for_url("**/confirmed")
    assert "You're in" in pg.inner_text("h1")
    assert lifecycle.find(live.db, "walker@example.com").status == "active"

    # Part 1 of the series arrives in the dev inbox.
    subject = step1_subject(live.settings)
    live.wait_for_mail("walker@example.com", subject)
    pg.goto(live.url + "/dev/inbox")
    assert subject in pg.inner_text("table.inbox")
    assert pg.console_errors == []  # CSP refused nothing we rely on


def test_unsubscribe_from_everything_through_the_page(live, page):
    sid, mail = confirmed_reader(live, "leaver@example.com")
    link = next(u for u in live.message(mail["id"]).links if "/u/" in u)
    page.goto(link)
    assert lifecycle.get(live.db, sid).status == "active"  # opening the page changes nothing
    page.click("text=Unsubscribe from everything")
    page.wait_for_selector("text=You're unsubscribed")
    assert lifecycle.get(live.db, sid).status == "unsubscribed"
    assert {v["status"] for v in lifecycle.subscriptions(live.db, sid).values()} == {"unsubscribed"}


def test_change_preferences_through_the_page(live, page):
    sid, mail = confirmed_reader(live, "pauser@example.com")
    link = next(u for u in live.message(mail["id"]).links if "/p/" in u)
    page.goto(link)
    page.uncheck("input[value=broadcasts]")
    page.select_option("#pause_weeks", "2")
    page.select_option("#timezone", "Asia/Tokyo")
    page.click("text=Save my preferences")
    page.wait_for_selector("text=Your preferences are saved")
    subs = lifecycle.subscriptions(live.db, sid)
    assert subs["broadcasts"]["status"] == "unsubscribed"
    assert subs["series:importance-of-exercise"]["status"] == "paused"
    assert subs["series:importance-of-exercise"]["paused_until"] is not None
    assert lifecycle.get(live.db, sid).timezone == "Asia/Tokyo"


def test_pages_and_emails_fit_phone_and_desktop_widths(live, page):
    ARTIFACTS.mkdir(exist_ok=True)
    _, mail = confirmed_reader(live, "reader@example.com")
    view = next(u for u in live.message(mail["id"]).links if "/m/" in u)
    for width in (375, 800):
        page.set_viewport_size({"width": width, "height": 900})
        for name, url in (("signup", live.url + "/"), ("email", view)):
            page.goto(url)
            page.screenshot(path=str(ARTIFACTS / f"{name}-{width}.png"), full_page=True)
            assert no_overflow(page), f"{name} overflows at {width} px"
            assert (ARTIFACTS / f"{name}-{width}.png").stat().st_size > 1000
    assert "Hi Robin," in page.inner_text("body")  # the view page is the reader's own email


def test_link_scanners_change_nothing(live):
    from campaigns import webinars

    confirmed_reader(live, "scanned@example.com")
    optin.signup(live.db, live.settings, "pending@example.com", _now())
    live.wait_for_mail("pending@example.com", "confirm")
    # Webinar mail too: an invite (with its one-click registration link) to one
    # reader, and a registration confirmation to another.
    demo = webinars.ensure_demo_webinar(live.db, live.settings, _now())
    webinars.invite(live.db, live.settings, demo.slug, "all", _now())
    live.wait_for_mail("scanned@example.com", "invited")
    webinars.register(live.db, live.settings, demo.slug, _now(), email="guest@example.com", name="Guest")
    live.wait_for_mail("guest@example.com", "registered")
    links: set[str] = set()
    for m in live.inbox():
        msg = live.message(m["id"])
        links.update(u for u in msg.links if u.startswith(live.url))
        links.update(
            u.replace("&amp;", "&")
            for u in re.findall(r'href="([^"]+)"', msg.html)
            if u.startswith(live.url)
        )
    # Tracked links (/c/) lead to the links above; a scanner follows them too.
    from campaigns import clicks

    prefix = live.url + "/c/"
    targets = {clicks.destination(live.db, live.settings, u[len(prefix):], _now())
               for u in links if u.startswith(prefix)}
    links |= {u for u in targets if u.startswith(live.url)}
    kinds = {re.sub(r"^https?://[^/]+/([a-z]+).*", r"\1", u) for u in links}
    assert {"confirm", "u", "p", "m", "w"} <= kinds, kinds
    # Wait until the worker has nothing left to do, then scan.
    wait_for(
        lambda: (
            live.db.execute(
                "SELECT COUNT(*) FROM outbox WHERE status IN ('queued', 'sending', 'retry') AND due_at <= ?",
                (_now().strftime("%Y-%m-%dT%H:%M:%S.%fZ"),),
            ).fetchone()[0]
            == 0
        ),
        what="an idle worker",
    )
    def state() -> list[str]:
        # The worker's heartbeat (funnel/health.py) moves on every tick: liveness, not state.
        # Clicks on tracked links are analytics (filtered as a scanner's), never state.
        return [s for s in live.db.conn.iterdump()
                if not s.startswith(('INSERT INTO "heartbeats"', 'INSERT INTO "clicks"'))]

    before = state()
    assert len(before) > 40
    for url in sorted(links):
        for _ in range(5):
            assert live.get(url) in (200, 302, 404), url
    assert state() == before
    human = live.db.execute("SELECT COUNT(*) FROM clicks WHERE verdict != 'scanner'").fetchone()[0]
    assert human == 0  # urllib's user agent is a scanner's
