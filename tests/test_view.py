"""View in browser (/m/) keeps its promise for every message kind (issue 10 item 4).

Real SQLite, the live aiosmtpd sink receiving what the sender writes, the
Flask app, a fake clock.  Every kind in the builder table is sent for real;
its /m/ page must show exactly the HTML the reader received (same signed
links, so same expiry) before and after the reader acts, a year later too.
A confirmation viewed after its link expired says so, shows only the dead
original link and offers a fresh one through the normal, throttled path.
"""

from __future__ import annotations

import html as htmllib
import re
from datetime import UTC, datetime, time, timedelta
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import pytest
from conftest import TEST_START
from test_web import Site, dump, text  # the Flask client that reads form tokens, like a browser

import web
from campaigns import attendance, broadcasts, webinars
from campaigns.kinds import BUILDERS
from campaigns.sender import send_due
from campaigns.worker import tick
from funnel.db import transaction
from subscribers import lifecycle, optin, tokens

LONDON = ZoneInfo("Europe/London")
#: The webinar day: 19 days after the clock's start (10 December 2026 with the default clock).
DAY = (TEST_START + timedelta(days=19)).astimezone(LONDON).date()
START_UTC = datetime.combine(DAY, time(18, 0), tzinfo=LONDON).astimezone(UTC)


@pytest.fixture
def site(settings, clock):
    app = web.create_app(settings, clock=clock)
    yield Site(app, clock)
    app.extensions["funnel"].close()


def normalised(html: str) -> str:
    return html.replace("\r\n", "\n").strip()


def view_link(received) -> str:
    return next(u for u in received.links() if "/m/" in u)


class Reader:
    """Sends what is due and remembers every message received, by kind."""

    def __init__(self, db, settings, clock, sink, site):
        self.db, self.settings, self.clock, self.sink, self.site = db, settings, clock, sink, site
        self.seen: list[tuple[str, object]] = []  # (kind, Received)

    def send(self) -> list:
        start = len(self.sink.messages)
        tick(self.db, self.settings, self.clock())  # as `funnel send` does: enrol, queue due steps
        send_due(self.db, self.settings, self.clock)
        new = self.sink.messages[start:]
        for m in new:
            rid = int(m.message["X-Funnel-Row"])
            kind = self.db.execute("SELECT kind FROM outbox WHERE id = ?", (rid,)).fetchone()[0]
            self.seen.append((kind, m))
        return new

    def check(self, received) -> None:
        """The /m/ page is the email's own HTML: subject, links and tokens unchanged."""
        path = view_link(received).removeprefix(self.settings.base_url)
        before = dump(self.db)
        r = self.site.get(path)
        assert r.status_code == 200, (received.message["Subject"], r.status_code)
        page = text(r)
        assert dump(self.db) == before  # viewing writes nothing
        assert str(received.message["Subject"]) in htmllib.unescape(page)
        assert normalised(page) == normalised(received.part("html"))
        hrefs = re.findall(r'href="(https?://[^"]+)"', page)
        assert hrefs and set(hrefs) == set(re.findall(r'href="(https?://[^"]+)"', received.part("html")))


def test_every_kind_is_viewable_as_sent_before_and_after_the_reader_acts(
    db, settings, clock, smtp_server, site
):
    reader = Reader(db, settings, clock, smtp_server, site)

    # confirm: viewed before confirming
    sid = optin.signup(db, settings, "ana@example.com", clock(), name="Ana Ruiz").subscriber_id
    (confirm_mail,) = reader.send()
    reader.check(confirm_mail)
    confirm_url = next(u for u in confirm_mail.links() if "/confirm/" in u)
    optin.confirm(db, settings, confirm_url.rsplit("/", 1)[1], clock())
    reader.check(confirm_mail)  # after confirming, within its 3 days: as sent

    # series part 1 (queued by confirming)
    for m in reader.send():
        reader.check(m)

    # broadcast (a day later: the frequency cap allows two emails a day)
    clock.advance(days=1)
    cid = broadcasts.create(db, settings, clock(), subject="Winter opening hours", body_md="We are open.")
    broadcasts.schedule_campaign(db, settings, cid, clock(), send_now=True)
    broadcasts.queue_due(db, settings, clock())
    for m in reader.send():
        reader.check(m)
    # the admin's test send of it: no reader row, but its view link works too
    broadcasts.test_send(db, settings, cid, "manager@clinic.example", clock())
    (test_mail,) = reader.send()
    assert str(test_mail.message["Subject"]).startswith("[Test]")
    reader.check(test_mail)

    # webinar: invite, then registration from the invite (the reader acts)
    w = webinars.create_webinar(db, settings, {
        "slug": "spine-health", "title": "Spine Health Webinar",
        "description": "Live answers about recurring low back pain.", "start": f"{DAY} 18:00",
        "timezone": "Europe/London", "join_url": "https://meet.clinic.example/spine",
        "reminder_offsets": [1440, 60],
    }, clock())  # fmt: skip
    clock.advance(days=1)
    webinars.invite(db, settings, w.slug, "all", clock())
    (invite_mail,) = reader.send()
    reader.check(invite_mail)
    link = next(u for u in invite_mail.followed_links(db, settings, clock()) if "/w/spine-health?t=" in u)
    webinars.register_with_token(db, settings, w.slug, parse_qs(urlsplit(link).query)["t"][0], clock())
    # a webinar-only contact who will miss it and get the replay
    webinars.register(db, settings, w.slug, clock(), email="bo@example.com", name="Bo")
    for m in reader.send():  # two registration confirmations
        reader.check(m)
    webinars.edit_webinar(db, settings, w.slug, {"start": f"{DAY} 18:30"}, clock())
    for m in reader.send():  # updates with the new time
        reader.check(m)

    # a second webinar that is cancelled
    webinars.create_webinar(db, settings, {
        "slug": "posture", "title": "Posture at the Desk", "description": "Short and practical.",
        "start": f"{DAY + timedelta(days=7)} 18:00", "timezone": "Europe/London",
        "join_url": "https://meet.clinic.example/posture", "capacity": 1,
    }, clock())  # fmt: skip
    webinars.register(db, settings, "posture", clock(), subscriber_id=sid)
    # the one seat is taken: the next address hears of the waitlist by email
    webinars.register(db, settings, "posture", clock(), email="cy@example.com", name="Cy")
    # an address that unsubscribed gets only a verification email (webinar double opt-in)
    dee = optin.signup(db, settings, "dee@example.com", clock(), name="Dee").subscriber_id
    lifecycle.unsubscribe(db, dee, clock())
    webinars.register(db, settings, "posture", clock(), email="dee@example.com", name="Dee")
    for m in reader.send():
        reader.check(m)
    webinars.cancel_webinar(db, settings, "posture", clock())
    for m in reader.send():
        reader.check(m)

    # reminders at their times
    clock.set(START_UTC + timedelta(minutes=30) - timedelta(days=1))
    for m in reader.send():
        reader.check(m)
    clock.set(START_UTC - timedelta(minutes=30))
    for m in reader.send():
        reader.check(m)

    # after it: Ana attended (offer), Bo missed it (replay)
    clock.set(START_UTC + timedelta(hours=3))
    webinars.edit_webinar(db, settings, w.slug, {"replay_url": "https://video.clinic.example/r"}, clock())
    attendance.import_attendance(db, settings, w.slug, None, clock(), text="Email,Duration\nana@example.com,50\n")
    clock.advance(hours=3)
    followups = reader.send()
    assert {str(m.message["Subject"]).split(" ")[0] for m in followups} == {"Thank", "The"}
    for m in followups:
        reader.check(m)

    # Every kind in the builder table was sent and checked.
    kinds = {k for k, _ in reader.seen}
    expected = set(BUILDERS) - {"test_bulk"}
    assert kinds == expected, expected ^ kinds

    # The readers act on everything: Ana unsubscribes from everything, the
    # registrations end (attended / no-show / cancelled), a year goes by.
    lifecycle.unsubscribe(db, sid, clock())
    clock.advance(days=366)
    for kind, m in reader.seen:
        if kind != "confirm":
            reader.check(m)
    # The confirmation's link has expired: the page says so and shows only the
    # emailed (dead) link; Ana is no longer pending, so nothing is offered.
    r = site.get(view_link(confirm_mail).removeprefix(settings.base_url))
    page = text(r)
    assert r.status_code == 200 and "This confirmation link has expired" in page
    assert set(re.findall(r"(https?://[^\s\"<]+/confirm/[^\s\"<]+)", page)) == {confirm_url}
    assert "Send me a new" not in page


def test_rows_sent_before_views_were_stored_are_rebuilt_as_of_their_send_time(
    db, settings, clock, smtp_server, site
):
    reader = Reader(db, settings, clock, smtp_server, site)
    sid = optin.signup(db, settings, "old@example.com", clock()).subscriber_id
    optin.activate_imported(db, settings, sid, clock(), "test")
    reader.send()
    cid = broadcasts.create(db, settings, clock(), subject="Old news", body_md="Still true.")
    broadcasts.schedule_campaign(db, settings, cid, clock(), send_now=True)
    broadcasts.queue_due(db, settings, clock())
    (mail,) = [m for m in reader.send() if "Old news" in str(m.message["Subject"])]
    db.execute("DELETE FROM views")  # as if sent before migration 0017
    clock.advance(days=40)
    reader.check(mail)


# ----------------------------------------------------------------- the expired-confirm attack
def test_expired_confirmation_viewed_in_browser_mints_no_new_link(db, settings, clock, smtp_server, site):
    reader = Reader(db, settings, clock, smtp_server, site)
    sid = optin.signup(db, settings, "late@example.com", clock(), name="Lee").subscriber_id
    (mail,) = reader.send()
    original = next(u for u in mail.links() if "/confirm/" in u).rsplit("/", 1)[1]
    view = view_link(mail).removeprefix(settings.base_url)

    clock.advance(days=settings.confirm_max_age_days, seconds=1)
    before = dump(db)
    r = site.get(view)
    page = text(r)
    assert r.status_code == 200 and "This confirmation link has expired" in page
    assert dump(db) == before
    # The only confirm token on the page is the emailed one, and it is dead.
    shown = set(re.findall(r"/confirm/([A-Za-z0-9_.\-]+)", page))
    assert shown == {original}
    dead = site.post(f"/confirm/{original}", token_from="/")
    assert dead.status_code == 400 and "doesn't work any more" in text(dead)
    assert lifecycle.get(db, sid).status == "pending"

    # The page's form asks for a fresh confirmation through the normal path.
    assert 'action="/m/' in page and "Send me a new confirmation email" in page
    r = site.post(view + "/resend", token_from=view)
    assert r.status_code == 303 and r.headers["Location"] == "/check-your-inbox"
    (fresh,) = reader.send()
    token = next(u for u in fresh.links() if "/confirm/" in u).rsplit("/", 1)[1]
    assert token != original
    # ... at most once a day, like a repeat signup.
    site.post(view + "/resend", token_from=view)
    assert reader.send() == []
    rows = db.execute("SELECT COUNT(*) FROM outbox WHERE kind = 'confirm' AND subscriber_id = ?", (sid,))
    assert rows.fetchone()[0] == 2
    ok = site.post(f"/confirm/{token}", token_from="/")
    assert ok.status_code == 303 and lifecycle.get(db, sid).status == "active"

    # Once confirmed, the old view has nothing to offer.
    page = text(site.get(view))
    assert "This confirmation link has expired" in page and "Send me a new" not in page
    again = site.post(view + "/resend", token_from="/")
    assert again.status_code == 303
    assert db.execute("SELECT COUNT(*) FROM outbox WHERE kind = 'confirm'").fetchone()[0] == 2


def test_resend_refuses_a_row_that_is_not_a_confirmation(db, settings, clock, smtp_server, site):
    from subscribers import tokens

    sid = optin.signup(db, settings, "p@example.com", clock()).subscriber_id
    optin.activate_imported(db, settings, sid, clock(), "test")
    other = optin.signup(db, settings, "q@example.com", clock()).subscriber_id
    row = db.execute("SELECT id FROM outbox WHERE subscriber_id = ?", (other,)).fetchone()[0]
    forged = tokens.subscriber_token(settings, "view", sid, clock(), r=row)  # not sid's row
    before = dump(db)
    r = site.post(f"/m/{forged}/resend", token_from="/")
    assert r.status_code == 404 and dump(db) == before


def test_a_test_send_link_shows_only_test_sends(db, settings, clock, smtp_server, site):
    """The stand-in reader (id 0) of a test send's link sees only test sends: other rows
    without a reader (an appointment email, a deleted reader's mail) stay unseen."""
    reader = Reader(db, settings, clock, smtp_server, site)
    optin.signup(db, settings, "gone@example.com", clock())
    (mail,) = reader.send()
    rid = int(mail.message["X-Funnel-Row"])
    with transaction(db):
        db.execute("UPDATE outbox SET subscriber_id = NULL WHERE id = ?", (rid,))
    forged = tokens.subscriber_token(settings, "view", 0, clock(), r=rid)
    assert site.get(f"/m/{forged}").status_code == 404
    with transaction(db):  # the same row as a test send: shown
        db.execute("UPDATE outbox SET kind = 'broadcast_test' WHERE id = ?", (rid,))
    assert site.get(f"/m/{forged}").status_code == 200
