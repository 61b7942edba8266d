"""Content that does not age: the demo webinar's standing slot and the webinar CTA.

Real SQLite, the live aiosmtpd sink, the real series content and the Flask app;
only the clock is fake.  Every date is relative to the clock fixture.
"""

from __future__ import annotations

import re
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import icalendar

from campaigns import clicks, webinars
from campaigns.sender import send_due
from campaigns.series import find_series
from campaigns.worker import tick
from subscribers import lifecycle, optin, tokens

LONDON = ZoneInfo("Europe/London")
SLUG = "importance-of-exercise"


def confirmed(db, settings, email, now) -> int:
    """Sign up and confirm, as a reader does."""
    r = optin.signup(db, settings, email, now)
    sub = lifecycle.get(db, r.subscriber_id)
    optin.confirm(db, settings, tokens.confirm_token(settings, sub.id, sub.confirm_nonce, now), now)
    return sub.id


def calendar_event(received):
    for part in received.message.walk():
        if part.get_content_type() == "text/calendar":
            (ev,) = icalendar.Calendar.from_ical(part.get_payload(decode=True)).walk("VEVENT")
            return ev
    raise AssertionError("no text/calendar part")


def is_standing_slot(w, now) -> bool:
    """Thursday 18:00 London, at least 24 h and at most 8 days ahead of ``now``."""
    local = w.local_start
    return (local.weekday(), local.hour, local.minute) == (3, 18, 0) and (
        now + timedelta(hours=24) <= w.starts_at <= now + timedelta(days=8, hours=1)
    )


# ----------------------------------------------------------------- the demo webinar
def test_demo_webinar_moves_to_the_next_slot_as_a_reschedule(run, db, settings, clock, smtp_server):
    r = run("webinar", "load")
    assert r.exit_code == 0, r.output
    first = webinars.get_webinar(db, "spine-health")
    assert "created spine-health" in r.output and is_standing_slot(first, clock())
    assert first.sequence == 0

    webinars.register(db, settings, "spine-health", clock(), email="pat@example.com", name="Pat")
    send_due(db, settings, clock)
    (confirmation,) = smtp_server.to("pat@example.com")
    uid = str(calendar_event(confirmation)["UID"])

    # While the session is ahead or running, load keeps it.
    clock.set(first.starts_at + timedelta(minutes=30))
    assert "left as it is" in run("webinar", "load").output
    assert webinars.get_webinar(db, "spine-health") == first

    # Once it is over, load moves it to the next slot: same webinar, SEQUENCE+1.
    clock.set(first.ends_at + timedelta(minutes=1))
    r = run("webinar", "load")
    assert r.exit_code == 0, r.output
    moved = webinars.get_webinar(db, "spine-health")
    assert (moved.id, moved.sequence) == (first.id, 1)
    assert moved.starts_at == first.starts_at + timedelta(days=7)
    assert is_standing_slot(moved, clock())
    assert "was over; moved to the next slot" in r.output and "1 update(s) queued" in r.output

    # The registrant gets the update: the same calendar UID, SEQUENCE 1, the new time.
    smtp_server.clear()
    send_due(db, settings, clock)
    (update,) = smtp_server.to("pat@example.com")
    ev = calendar_event(update)
    assert str(ev["UID"]) == uid and int(ev["SEQUENCE"]) == 1
    assert ev.decoded("DTSTART") == moved.starts_at
    reminders = db.execute(
        "SELECT due_at FROM outbox WHERE kind = 'webinar_reminder' AND status = 'queued'"
    ).fetchall()
    assert len(reminders) == 3  # a day, an hour and ten minutes before the new time

    # Loading again changes nothing; `funnel up`'s path (ensure_demo_webinar) agrees.
    assert "left as it is" in run("webinar", "load").output
    assert webinars.ensure_demo_webinar(db, settings, clock()) == moved
    clock.set(moved.ends_at + timedelta(days=20))  # nobody ran anything for weeks
    again = webinars.ensure_demo_webinar(db, settings, clock())
    assert (again.id, again.sequence) == (first.id, 2) and is_standing_slot(again, clock())


def test_a_fixed_date_in_a_webinar_file_never_moves(run, db, settings, clock, tmp_path):
    bundled = next(p for p in webinars.webinar_files(settings) if p.name == "spine-health.toml")
    start = (clock() + timedelta(days=3)).astimezone(LONDON).replace(hour=18, minute=0)
    path = tmp_path / "spine-health.toml"
    path.write_text(
        re.sub(r'(?m)^start = ".*"$', f'start = "{start:%Y-%m-%d %H:%M}"', bundled.read_text())
    )
    r = run("webinar", "load", path)
    assert f"created spine-health ({start:%Y-%m-%d %H:%M %Z})" in r.output, r.output
    w = webinars.get_webinar(db, "spine-health")
    clock.set(w.ends_at + timedelta(days=1))
    assert "already exists; left as it is" in run("webinar", "load", path).output
    assert webinars.get_webinar(db, "spine-health") == w


def test_a_relative_start_that_does_not_parse_names_the_file_line(run, db, settings, tmp_path):
    bundled = next(p for p in webinars.webinar_files(settings) if p.name == "spine-health.toml")
    text = re.sub(r'(?m)^start = ".*"$', 'start = "every thursday"', bundled.read_text())
    path = tmp_path / "spine-health.toml"
    path.write_text(text)
    line = text.splitlines().index('start = "every thursday"') + 1
    r = run("webinar", "load", path)
    assert r.exit_code == 1
    assert f"Error: {path}:{line}: start: 'every thursday' is not a time; use" in r.output
    assert webinars.find_webinar(db, "spine-health") is None


# ----------------------------------------------------------------- the webinar CTA
def _walk_series(db, settings, clock, sink, email, *, load: bool):
    """Advance the clock in 6-hour ticks until the reader has part 6, as the worker
    would (and, with ``load``, as a daily `funnel webinar load` would).  Returns
    the received part 6."""
    last = find_series(settings.content_path, SLUG).steps[-1]
    for _ in range(4 * 60):
        if load:
            webinars.load_files(db, settings, webinars.webinar_files(settings), clock())
        tick(db, settings, clock())
        send_due(db, settings, clock)
        for received in sink.to(email):
            if received.message["Subject"] == last.subject:
                return received
        clock.advance(hours=6)
    raise AssertionError("part 6 never arrived")


def _personal_link(text: str) -> str:
    m = re.search(r"Reserve my spot:\n(\S+)", text)
    assert m, text
    return m.group(1)


def _csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def test_part_6_invites_to_the_live_session_with_a_personal_link(db, settings, clock, smtp_server):
    from web import create_app

    sid = confirmed(db, settings, "ria@example.com", clock())
    part6 = _walk_series(db, settings, clock, smtp_server, "ria@example.com", load=True)

    # The demo's first session ended weeks ago; load moved it on each week, and
    # part 6 names the session that is live now.
    live = webinars.get_webinar(db, "spine-health")
    assert live.sequence >= 3 and live.starts_at > clock()
    when = webinars.format_when(live.starts_at, LONDON)
    text = part6.part("plain").replace("\r\n", "\n")
    assert f"Join our next free live webinar, Spine Health Webinar, on {when}." in text
    tracked = _personal_link(text)
    assert tracked in part6.part("html").replace("&amp;", "&")
    assert tracked.startswith(settings.url("/c/"))  # the personal link, through click tracking
    link = clicks.destination(db, settings, tracked[len(settings.url("/c/")):], clock())
    url = urlsplit(link)
    assert url.path == "/w/spine-health"
    token = parse_qs(url.query)["t"][0]
    assert webinars.read_invite_token(settings, "spine-health", token, clock()) == sid

    # The link works: the page names the reader, and the one button registers them.
    app = create_app(settings, clock=clock)
    client = app.test_client()
    page = client.get(f"{url.path}?{url.query}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Reserving a place for <strong>ria@example.com</strong>" in html
    assert live.starts_at.strftime("%Y-%m-%dT%H:%M:%SZ") in html
    clock.advance(seconds=5)
    r = client.post(url.path, data={"t": token, "csrf": _csrf(html)})
    assert r.status_code == 200 and "You're registered" in r.get_data(as_text=True)
    assert db.execute(
        "SELECT webinar_id, subscriber_id, status FROM registrations"
    ).fetchall() == [(live.id, sid, "registered")]


def test_part_6_without_an_open_webinar_leaves_the_cta_out(db, settings, clock, smtp_server):
    # A webinar that was called off does not count.
    webinars.create_webinar(
        db, settings,
        {"slug": "talk", "title": "Talk", "start": "in 10 days 18:00", "timezone": "Europe/London",
         "join_url": "https://meet.example/t"},
        clock(),
    )  # fmt: skip
    webinars.cancel_webinar(db, settings, "talk", clock())
    confirmed(db, settings, "sol@example.com", clock())
    part6 = _walk_series(db, settings, clock, smtp_server, "sol@example.com", load=False)
    text, html = part6.part("plain").replace("\r\n", "\n"), part6.part("html")
    for body in (text, html):
        assert "webinar" not in body.lower() and "Reserve my spot" not in body
        assert "/w/" not in body
    # The article still ends as written: the thanks, the sign-off, the programme
    # button (the CTA after the webinar's), then the footer.
    assert re.search(
        r"Thank\s+you\s+for\s+reading\s+all\s+six\s+parts\..*\n\nSpeak soon,\s*\nThe clinic team\n\n"
        r"Start the 28-day programme:\n\S+\n\n-{20,}",
        text,
        re.S,
    ), text


def test_create_from_the_bundled_file_keeps_a_day_of_lead(run, db, settings, clock):
    """On a Wednesday evening "thursday 18:00" would be 22 hours away: the slot is a week on."""
    local = clock().astimezone(LONDON)
    wednesday = (local + timedelta(days=(2 - local.weekday()) % 7)).replace(hour=20, minute=0)
    clock.set(wednesday.astimezone(clock().tzinfo))
    bundled = next(p for p in webinars.webinar_files(settings) if p.name == "spine-health.toml")
    r = run("webinar", "create", "--from", bundled)
    assert r.exit_code == 0, r.output
    w = webinars.get_webinar(db, "spine-health")
    assert is_standing_slot(w, clock())
    assert w.local_start.date() == (wednesday + timedelta(days=8)).date()
