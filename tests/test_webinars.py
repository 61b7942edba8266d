"""Webinar funnel end to end: invite, register, reschedule, attendance, follow-ups, cancel.

Real SQLite, a live aiosmtpd server receiving what the sender writes, a fake
clock.  Every email is parsed back; calendar files are parsed with icalendar.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import icalendar
import pytest
from click.testing import CliRunner
from conftest import TEST_START

import cli
from campaigns import attendance, webinars
from campaigns.sender import send_due
from funnel.db import connect
from funnel.errors import InputError, NotFound, RowsRejected, TokenError
from subscribers import lifecycle, optin

LONDON = ZoneInfo("Europe/London")


def local(day: date, hm: str, tz: ZoneInfo = LONDON) -> datetime:
    hour, minute = map(int, hm.split(":"))
    return datetime.combine(day, time(hour, minute), tzinfo=tz)


def wall(dt: datetime) -> str:
    """Wall-clock text as the CLI and the webinar files take it."""
    return f"{dt:%Y-%m-%d %H:%M}"


def spoken(dt: datetime, zone: str | ZoneInfo) -> str:
    """How emails and pages say a time: "Thursday 10 December 2026, 1:00 pm EST"."""
    d = dt.astimezone(ZoneInfo(zone) if isinstance(zone, str) else zone)
    hour, ampm = d.hour % 12 or 12, "am" if d.hour < 12 else "pm"
    return f"{d:%A} {d.day} {d:%B %Y}, {hour}:{d:%M} {ampm} {d:%Z}"


def stored(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000000Z")


# The webinar starts 19 days after the tests' clock starts, at 18:00 in London
# (with the default clock: Thursday 10 December 2026, 18:00 GMT = 18:00 UTC).
DAY = (TEST_START + timedelta(days=19)).astimezone(LONDON).date()
START_LOCAL = local(DAY, "18:00")
START = wall(START_LOCAL)
START_UTC = START_LOCAL.astimezone(UTC)


# ----------------------------------------------------------------- helpers
def active(db, settings, email, now, *, name="", tz=None):
    """An active newsletter subscriber on the default streams (webinars included)."""
    sid = optin.signup(db, settings, email, now, name=name, timezone=tz).subscriber_id
    optin.activate_imported(db, settings, sid, now, "test fixture")
    return sid


def create(db, settings, now, slug="spine-health", **extra):
    values = {
        "slug": slug,
        "title": "Spine Health Webinar",
        "description": "Live answers about recurring low back pain.",
        "start": START,
        "timezone": "Europe/London",
        "join_url": "https://meet.clinic.example/spine",
        **extra,
    }
    return webinars.create_webinar(db, settings, values, now)


def send(db, settings, clock):
    return send_due(db, settings, clock)


def webinar_mail(sink, addr, word):
    return [m for m in sink.to(addr) if word.lower() in m.message["Subject"].lower()]


def calendar(received):
    for part in received.message.walk():
        if part.get_content_type() == "text/calendar":
            return icalendar.Calendar.from_ical(part.get_payload(decode=True)), part
    raise AssertionError("no text/calendar part")


def vevent(cal):
    (ev,) = cal.walk("VEVENT")
    return ev


def reminders(db, email, status="queued"):
    return db.execute(
        "SELECT json_extract(data, '$.offset'), due_at FROM outbox WHERE kind = 'webinar_reminder' "
        "AND to_addr = ? AND status = ? ORDER BY due_at",
        (email, status),
    ).fetchall()


# ----------------------------------------------------------------- the lifecycle
def test_webinar_lifecycle(db, settings, smtp_server, clock):
    now = clock()
    alex = active(db, settings, "alex@example.com", now, name="Alex Ng", tz="America/New_York")
    active(db, settings, "bea@example.com", now, name="Bea")
    # Not on the webinar-invite stream: must not be invited.
    quiet = active(db, settings, "quiet@example.com", now)
    lifecycle.set_subscription(db, quiet, "webinars", "unsubscribed", now)
    send(db, settings, clock)  # flush anything activation queued (series etc.)
    smtp_server.clear()

    w = create(db, settings, now, capacity=50)
    assert w.starts_at == START_UTC and w.sequence == 0

    # ---- invite a segment
    result = webinars.invite(
        db, settings, "spine-health", "all", now, where=["webinar:spine-health!=registered"]
    )
    assert result.queued == 2
    again = webinars.invite(db, settings, "spine-health", "all", now)
    assert again.queued == 0  # idempotent per person and webinar
    send(db, settings, clock)
    (inv,) = webinar_mail(smtp_server, "alex@example.com", "invited")
    assert not smtp_server.to("quiet@example.com")
    assert inv.message["List-Unsubscribe"]
    link = next(u for u in inv.followed_links(db, settings, clock()) if "/w/spine-health?t=" in u)
    token = parse_qs(urlsplit(link).query)["t"][0]
    assert spoken(START_UTC, "America/New_York") in inv.part("plain")  # Alex's own zone

    # ---- registration 1: early, one click from the invite
    r = webinars.register_with_token(db, settings, "spine-health", token, now)
    assert r.status == "registered" and r.subscriber_id == alex
    r2 = webinars.register_with_token(db, settings, "spine-health", token, now)
    assert r2.status == "already"  # twice is harmless
    assert db.execute("SELECT COUNT(*) FROM registrations").fetchone()[0] == 1
    assert [o for o, _ in reminders(db, "alex@example.com")] == [1440, 60, 10]
    consent = db.execute(
        "SELECT purpose, action, source FROM consent WHERE subscriber_id = ? AND purpose LIKE 'webinar:%'",
        (alex,),
    ).fetchall()
    assert consent == [("webinar:spine-health", "confirmed", "invite")]

    send(db, settings, clock)
    (conf,) = webinar_mail(smtp_server, "alex@example.com", "registered")
    assert "https://meet.clinic.example/spine" in conf.part("plain")
    assert spoken(START_UTC, "America/New_York").split(", ")[1] in conf.part("plain")
    links = conf.links()
    google = next(u for u in links if u.startswith("https://calendar.google.com/"))
    end = START_UTC + timedelta(hours=1)
    assert f"dates={START_UTC:%Y%m%dT%H%M%SZ}%2F{end:%Y%m%dT%H%M%SZ}" in google
    assert any(u.startswith("https://outlook.live.com/calendar/0/deeplink/compose?") for u in links)
    cal, part = calendar(conf)
    assert part.get_content_type() == "text/calendar" and part.get_param("method") == "REQUEST"
    assert str(cal["METHOD"]) == "REQUEST"
    ev = vevent(cal)
    uid = str(ev["UID"])
    assert uid == f"webinar-spine-health-{alex}@{settings.sender_domain}"
    assert int(ev["SEQUENCE"]) == 0
    assert ev["DTSTART"].params["TZID"] == "Europe/London"
    assert ev.decoded("DTSTART") == local(DAY, "18:00", w.zone)
    assert cal.walk("VTIMEZONE") and ev.walk("VALARM")
    assert str(ev["ATTENDEE"]) == "mailto:alex@example.com"

    # ---- reschedule: same UID, SEQUENCE 1, reminders recomputed
    smtp_server.clear()
    new_start = local(DAY + timedelta(days=1), "18:00").astimezone(UTC)
    edit = webinars.edit_webinar(db, settings, "spine-health", {"start": wall(new_start.astimezone(LONDON))}, now)
    assert edit.rescheduled and edit.webinar.sequence == 1 and edit.updates_queued == 1
    assert reminders(db, "alex@example.com") == [
        (1440, stored(new_start - timedelta(days=1))),
        (60, stored(new_start - timedelta(minutes=60))),
        (10, stored(new_start - timedelta(minutes=10))),
    ]
    assert len(reminders(db, "alex@example.com", "cancelled")) == 3
    send(db, settings, clock)
    (upd,) = webinar_mail(smtp_server, "alex@example.com", "new time")
    ev = vevent(calendar(upd)[0])
    assert str(ev["UID"]) == uid and int(ev["SEQUENCE"]) == 1
    assert ev.decoded("DTSTART") == new_start.astimezone(w.zone)
    assert ev["DTSTART"].params["TZID"] == "Europe/London"
    assert spoken(new_start, "America/New_York") in upd.part("plain")
    # No "add to calendar" links in an update: they would create a second event.
    assert not [u for u in upd.links() if "calendar.google.com" in u or "outlook.live.com" in u]
    assert "Add to Google Calendar" not in upd.part("html") + upd.part("plain")
    assert "moves your existing calendar entry" in " ".join(upd.part("plain").split())

    # ---- reminders go out at their times
    smtp_server.clear()
    clock.set(new_start - timedelta(days=1))
    send(db, settings, clock)
    clock.set(new_start - timedelta(hours=1))
    send(db, settings, clock)
    subjects = [
        m.message["Subject"] for m in webinar_mail(smtp_server, "alex@example.com", "starting")
    ]
    assert subjects == [
        "Starting tomorrow: Spine Health Webinar",
        "Starting in 1 hour: Spine Health Webinar",
    ]

    # ---- registration 2: a new person, 30 minutes before, from the public form
    clock.set(new_start - timedelta(minutes=30))
    r = webinars.register(
        db,
        settings,
        "spine-health",
        clock(),
        email="cole@example.com",
        name="Cole",
        timezone="Europe/Berlin",
        source="web",
    )
    assert r.status == "registered"
    cole = lifecycle.get(db, r.subscriber_id)
    # A webinar-only contact: no newsletter confirmation, no streams but this webinar's.
    assert cole.status == "pending" and cole.confirm_nonce is None
    assert set(lifecycle.subscriptions(db, cole.id)) == {"webinar:spine-health"}
    assert (
        db.execute(
            "SELECT COUNT(*) FROM outbox WHERE kind = 'confirm' AND subscriber_id = ?", (cole.id,)
        ).fetchone()[0]
        == 0
    )
    assert [o for o, _ in reminders(db, "cole@example.com")] == [10]  # the past ones skipped
    send(db, settings, clock)
    (cc,) = webinar_mail(smtp_server, "cole@example.com", "registered")
    assert "https://meet.clinic.example/spine" in cc.part("plain")
    assert spoken(new_start, "Europe/Berlin") in cc.part("plain")

    clock.set(new_start - timedelta(minutes=10))
    send(db, settings, clock)
    assert len(webinar_mail(smtp_server, "cole@example.com", "10 minutes")) == 1
    assert len(webinar_mail(smtp_server, "alex@example.com", "10 minutes")) == 1

    # ---- registration 3: after the start, refused
    clock.set(new_start + timedelta(minutes=5))
    with pytest.raises(InputError, match=f"Registration is closed: .* started at 18:00 {new_start.astimezone(LONDON):%Z}"):
        webinars.register(db, settings, "spine-health", clock(), email="late@example.com")
    assert lifecycle.find(db, "late@example.com") is None
    # Nothing about the webinar goes out after the start (except follow-ups).
    smtp_server.clear()
    send(db, settings, clock)
    assert not [m for m in smtp_server.messages if "Spine" in m.message["Subject"]]

    # ---- attendance: Alex attended, Cole missed it; an unknown address is reported
    csv_path = db_dir(settings) / "zoom.csv"
    d, us = f"{DAY + timedelta(days=1):%Y-%m-%d}", f"{DAY + timedelta(days=1):%m/%d/%Y}"
    csv_path.write_text(
        "Attendee Report\n"
        "Topic,Webinar ID\nSpine Health Webinar,123\n\n"
        "User Name (Original Name),User Email,Join Time,Leave Time,Duration (Minutes)\n"
        f"Alex Ng,ALEX@example.com,{d} 18:01:00,{d} 18:40:00,39\n"
        f"Alex Ng,alex@example.com,{us} 06:45:00 PM,{us} 06:58:00 PM,13\n"
        f"Stranger,stranger@example.com,{d} 18:02:00,{d} 18:10:00,8\n",
        encoding="utf-8",
    )
    clock.set(new_start + timedelta(minutes=70))
    report = attendance.import_attendance(db, settings, "spine-health", csv_path, clock())
    assert (report.attended, report.no_show, report.followups_queued) == (1, 1, 2)
    assert report.unknown == [
        f"{csv_path}:8: stranger@example.com is not registered for spine-health"
    ]
    rows = dict(db.execute("SELECT subscriber_id, status FROM registrations").fetchall())
    assert rows == {alex: "attended", cole.id: "no_show"}
    assert (
        db.execute(
            "SELECT attended_minutes FROM registrations WHERE subscriber_id = ?", (alex,)
        ).fetchone()[0]
        == 52
    )
    kinds = [
        k
        for (k,) in db.execute(
            "SELECT kind FROM events WHERE kind IN ('attended', 'no_show') ORDER BY id"
        )
    ]
    assert kinds == ["attended", "no_show"]

    # Follow-ups wait until the end + followup_delay (120 min by default).
    smtp_server.clear()
    send(db, settings, clock)
    assert not smtp_server.messages
    clock.set(new_start + timedelta(minutes=60 + 120))
    send(db, settings, clock)
    (thanks,) = webinar_mail(smtp_server, "alex@example.com", "thank you")
    offer = next(u for u in thanks.followed_links(db, settings, clock()) if "/o/" in u)
    assert offer.startswith(settings.base_url + "/o/")
    assert "Book an appointment" in thanks.part("plain")
    (missed,) = webinar_mail(smtp_server, "cole@example.com", "missed you")
    assert "next session" in missed.part("plain")
    assert "/o/" not in missed.part("plain")

    # The offer link: reading it changes nothing; the POST records the click.
    otoken = offer.rsplit("/o/", 1)[1]
    w_now, target = webinars.offer_target(db, settings, otoken, clock())
    assert target == settings.appointment_url
    assert db.execute("SELECT COUNT(*) FROM events WHERE kind = 'clicked_offer'").fetchone()[0] == 0
    assert webinars.record_offer_click(db, settings, otoken, clock()) == settings.appointment_url
    assert db.execute(
        "SELECT subscriber_id, ref FROM events WHERE kind = 'clicked_offer'"
    ).fetchall() == [(alex, "webinar:spine-health")]
    with pytest.raises(TokenError):  # an invite token is not an offer token
        webinars.offer_target(db, settings, token, clock())

    # ---- cancel another webinar: METHOD:CANCEL, same UID, nothing left queued
    clock.set(local(DAY + timedelta(days=2), "09:00").astimezone(UTC))
    posture_day = DAY + timedelta(days=10)
    other = create(
        db,
        settings,
        clock(),
        slug="posture",
        title="Posture Clinic",
        start=f"{posture_day:%Y-%m-%d} 10:00",
        timezone="America/New_York",
    )
    r = webinars.register(
        db,
        settings,
        "posture",
        clock(),
        email="dee@example.com",
        source="cli",
        consent_action="imported",
    )
    send(db, settings, clock)
    (dconf,) = webinar_mail(smtp_server, "dee@example.com", "registered")
    duid = str(vevent(calendar(dconf)[0])["UID"])
    assert len(reminders(db, "dee@example.com")) == 3
    res = webinars.cancel_webinar(db, settings, "posture", clock())
    assert res.notices_queued == 1 and res.rows_cancelled == 3
    assert reminders(db, "dee@example.com") == []
    send(db, settings, clock)
    (dcan,) = webinar_mail(smtp_server, "dee@example.com", "cancelled")
    cal, part = calendar(dcan)
    assert str(cal["METHOD"]) == "CANCEL" and part.get_param("method") == "CANCEL"
    ev = vevent(cal)
    assert str(ev["UID"]) == duid and int(ev["SEQUENCE"]) == 1 and str(ev["STATUS"]) == "CANCELLED"
    assert ev["DTSTART"].params["TZID"] == "America/New_York"
    assert ev.decoded("DTSTART") == local(posture_day, "10:00", other.zone)
    assert (
        db.execute(
            "SELECT status FROM registrations WHERE subscriber_id = ?", (r.subscriber_id,)
        ).fetchone()[0]
        == "cancelled"
    )
    with pytest.raises(InputError, match="'posture' is cancelled and cannot be edited"):
        webinars.edit_webinar(db, settings, "posture", {"title": "New"}, clock())
    assert (
        db.execute(
            "SELECT COUNT(*) FROM outbox WHERE ref LIKE 'webinar:posture:%' "
            "AND status IN ('queued', 'retry')"
        ).fetchone()[0]
        == 0
    )


def db_dir(settings):
    from pathlib import Path

    return Path(settings.db).parent


# ----------------------------------------------------------------- smaller behaviours
def test_replay_branch_capacity_and_waitlist(db, settings, smtp_server, clock):
    now = clock()
    create(db, settings, now, capacity=1, reminder_offsets=[60])
    a = webinars.register(db, settings, "spine-health", now, email="a@example.com")
    b = webinars.register(db, settings, "spine-health", now, email="b@example.com")
    assert (a.status, b.status) == ("registered", "waitlisted")
    # The waitlist is told by email only (the web form says the same to everyone).
    assert db.execute("SELECT kind FROM outbox WHERE to_addr = 'b@example.com'").fetchall() == [
        ("webinar_waitlist",)
    ]
    # More seats let the waitlist in, oldest first, with confirmation and reminders.
    res = webinars.edit_webinar(db, settings, "spine-health", {"capacity": 2}, now)
    assert res.promoted == 1 and not res.rescheduled
    assert [o for o, _ in reminders(db, "b@example.com")] == [60]
    events = [
        k
        for (k,) in db.execute(
            "SELECT kind FROM events WHERE ref = 'webinar:spine-health' ORDER BY id"
        )
    ]
    assert events.count("registered") == 2 and events.count("waitlisted") == 1

    clock.set(START_UTC + timedelta(hours=2))
    webinars.edit_webinar(
        db, settings, "spine-health", {"replay_url": "https://video.clinic.example/replay"}, clock()
    )
    report = attendance.import_attendance(
        db, settings, "spine-health", None, clock(), text="Email,Duration\na@example.com,55\n"
    )
    assert (report.attended, report.no_show) == (1, 1)
    clock.advance(hours=2)
    smtp_server.clear()
    send(db, settings, clock)
    (replay,) = webinar_mail(smtp_server, "b@example.com", "replay")
    assert "https://video.clinic.example/replay" in replay.followed_links(db, settings, clock())
    # Re-importing a corrected file recomputes; follow-ups are not queued twice.
    again = attendance.import_attendance(
        db,
        settings,
        "spine-health",
        None,
        clock(),
        text="Email,Duration\na@example.com,55\nb@example.com,3\n",
    )
    assert again.attended == 2 and again.followups_queued == 0


def test_last_minute_registration_gets_the_confirmation_only(db, settings, clock):
    create(db, settings, clock())
    clock.set(START_UTC - timedelta(minutes=5))
    r = webinars.register(db, settings, "spine-health", clock(), email="z@example.com")
    assert r.status == "registered"
    kinds = db.execute(
        "SELECT kind, expires_at FROM outbox WHERE to_addr = 'z@example.com'"
    ).fetchall()
    assert kinds == [("webinar_confirm", stored(START_UTC))]


def test_newsletter_box_runs_double_opt_in(db, settings, clock):
    create(db, settings, clock())
    r = webinars.register(
        db,
        settings,
        "spine-health",
        clock(),
        email="n@example.com",
        name="Nia",
        newsletter=True,
        ip="203.0.113.9",
    )
    assert r.status == "registered" and r.newsletter == "created"
    sub = lifecycle.get(db, r.subscriber_id)
    assert sub.status == "pending" and sub.confirm_nonce
    purposes = db.execute(
        "SELECT purpose, action, ip FROM consent WHERE subscriber_id = ? ORDER BY id", (sub.id,)
    ).fetchall()
    assert purposes == [
        ("newsletter", "requested", "203.0.113.9"),
        ("webinar:spine-health", "requested", "203.0.113.9"),
    ]
    assert db.execute("SELECT COUNT(*) FROM outbox WHERE kind = 'confirm'").fetchone()[0] == 1

    # A webinar-only contact who later opts in gets a working confirmation.
    r2 = webinars.register(db, settings, "spine-health", clock(), email="o@example.com")
    assert lifecycle.get(db, r2.subscriber_id).confirm_nonce is None
    assert optin.signup(db, settings, "o@example.com", clock()).action == "resent"
    assert lifecycle.get(db, r2.subscriber_id).confirm_nonce


def test_bad_input(db, settings, clock, tmp_path):
    now = clock()
    with pytest.raises(InputError, match=r"--start: 2020-01-01 18:00 Europe/London is in the past"):
        create(db, settings, now, start="2020-01-01 18:00")
    with pytest.raises(InputError, match="--tz: unknown time zone 'Mars/Olympus'"):
        create(db, settings, now, timezone="Mars/Olympus")
    with pytest.raises(InputError, match="--capacity: 0 is not a valid capacity"):
        create(db, settings, now, capacity=0)
    with pytest.raises(
        InputError, match="--join-url: 'http://meet.example/x' must be an https:// URL"
    ):
        create(db, settings, now, join_url="http://meet.example/x")
    with pytest.raises(InputError, match="--reminders"):
        create(db, settings, now, reminder_offsets="60,soon")
    assert db.execute("SELECT COUNT(*) FROM webinars").fetchone()[0] == 0

    bad = tmp_path / "bad.toml"
    bad.write_text(
        'title = "X"\ntimezone = "Europe/London"\nstart = "2020-01-01 10:00"\n'
        'join_url = "https://x.example"\n',
        encoding="utf-8",
    )
    with pytest.raises(InputError, match=r"bad.toml:3: start: 2020-01-01 10:00 .* in the past"):
        webinars.create_from_file(db, settings, bad, now)

    create(db, settings, now)
    with pytest.raises(InputError, match="already exists"):
        create(db, settings, now)
    with pytest.raises(InputError, match="--join-url"):
        webinars.edit_webinar(db, settings, "spine-health", {"join_url": "ftp://x"}, now)
    with pytest.raises(NotFound, match="'nope' does not exist"):
        webinars.register(db, settings, "nope", now, email="a@example.com")

    # Attendance: unknown emails are reported, bad rows reject the file and change nothing.
    webinars.register(db, settings, "spine-health", now, email="a@example.com")
    with pytest.raises(InputError, match="has not started yet"):
        attendance.import_attendance(
            db, settings, "spine-health", None, now, text="Email\na@example.com\n"
        )
    later = START_UTC + timedelta(hours=2)
    path = tmp_path / "att.csv"
    path.write_text(
        f"email,join time,duration (minutes)\nnot-an-email,{START},5\n"
        f"a@example.com,yesterday-ish,5\nb@example.com,{START},lots\n"
        f"ghost@example.com,{START},5\n",
        encoding="utf-8",
    )
    with pytest.raises(RowsRejected) as exc:
        attendance.import_attendance(db, settings, "spine-health", path, later)
    problems = exc.value.report.problems
    assert problems[0].startswith(f"{path}:2: email") and f"{path}:3: join time" in problems[1]
    assert problems[2] == f"{path}:4: duration 'lots' is not a number of minutes"
    assert db.execute("SELECT status FROM registrations").fetchone()[0] == "registered"
    report = attendance.import_attendance(
        db, settings, "spine-health", path, later, skip_invalid=True
    )
    assert report.unknown == [f"{path}:5: ghost@example.com is not registered for spine-health"]
    assert (report.attended, report.no_show) == (0, 1)
    with pytest.raises(InputError, match="no header row with an email column"):
        attendance.import_attendance(db, settings, "spine-health", None, later, text="a,b\n1,2\n")


def test_demo_webinar_moves_to_next_thursday(db, settings, clock, tmp_path):
    clock.set(datetime(2027, 3, 1, 12, 0, tzinfo=UTC))  # after the bundled date
    w = webinars.ensure_demo_webinar(db, settings, clock())
    assert w.slug == "spine-health" and w.title == "Spine Health Webinar"
    local = w.local_start
    assert local.weekday() == 3 and (local.hour, local.minute) == (18, 0)
    assert clock() + timedelta(days=1) < w.starts_at <= clock() + timedelta(days=8)
    assert webinars.ensure_demo_webinar(db, settings, clock()).id == w.id  # idempotent
    assert w.capacity == 100 and w.reminder_offsets == (1440, 60, 10)


# ----------------------------------------------------------------- the CLI
def invoke(*args):
    return CliRunner().invoke(cli.main, list(args), catch_exceptions=False)


def test_cli_round_trip(cli_env, settings, tmp_path):
    r = invoke(
        "webinar",
        "create",
        "spine-health",
        "--title",
        "Spine Health Webinar",
        "--start",
        START,
        "--tz",
        "Europe/London",
        "--join-url",
        "https://meet.backinmotion-physio.co.uk/s",
        "--capacity",
        "30",
    )
    assert r.exit_code == 0, r.output
    assert "spine-health" in r.output and f"{START} {START_LOCAL:%Z}" in r.output
    r = invoke("webinar", "register", "spine-health", "pat@example.com", "--name", "Pat")
    assert r.exit_code == 0 and "registered" in r.output, r.output
    r = invoke("webinar", "edit", "spine-health", "--start", wall(local(DAY + timedelta(days=1), "18:00")))
    assert r.exit_code == 0 and "SEQUENCE 1" in r.output and "1 update" in r.output, r.output
    r = invoke("webinar", "list")
    assert "spine-health" in r.output and "1 registered" in r.output
    r = invoke("webinar", "show", "spine-health")
    assert "https://meet.backinmotion-physio.co.uk/s" in r.output and "1440, 60, 10" in r.output
    r = invoke("webinar", "registrants", "spine-health")
    assert "pat@example.com" in r.output
    out = tmp_path / "reg.csv"
    r = invoke("webinar", "export", "spine-health", "--out", str(out))
    assert r.exit_code == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("email,name") and lines[1].startswith("pat@example.com,Pat")
    r = invoke("webinar", "export", "spine-health")  # to standard output
    assert r.exit_code == 0 and "pat@example.com,Pat" in r.output
    r = invoke(
        "webinar",
        "create",
        "x",
        "--title",
        "X",
        "--start",
        "2020-01-01 10:00",
        "--tz",
        "Europe/London",
        "--join-url",
        "https://meet.backinmotion-physio.co.uk/x",
    )
    assert (
        r.exit_code == 1
        and "Error: --start: 2020-01-01 10:00 Europe/London is in the past" in r.output
    )
    r = invoke("webinar", "cancel", "spine-health", "--yes")
    assert r.exit_code == 0 and "1 cancellation" in r.output, r.output
    r = invoke("webinar", "edit", "spine-health", "--title", "Again")
    assert r.exit_code == 1 and "cancelled and cannot be edited" in r.output
    db = connect(settings.db)
    assert json.loads(db.execute("SELECT reminder_offsets FROM webinars").fetchone()[0]) == [
        1440,
        60,
        10,
    ]


# ----------------------------------------------------------------- the web pages
def _csrf(html: str) -> str:
    import re

    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def test_registration_pages(db, settings, clock):
    from web import create_app

    settings = settings.replace(signup_rate_per_minute=100)
    now = clock()
    alex = active(db, settings, "alex@example.com", now, name="Alex Ng")
    create(db, settings, now, capacity=3)
    app = create_app(settings, clock=clock)
    client = app.test_client()

    # Invite link: a GET shows the one-click button and changes nothing.
    token = webinars.invite_token(settings, "spine-health", alex, now)
    r = client.get(f"/w/spine-health?t={token}")
    assert r.status_code == 200
    page = r.get_data(as_text=True)
    assert "Reserving a place for <strong>alex@example.com</strong>" in page
    assert f'data-utc="{START_UTC:%Y-%m-%dT%H:%M:%SZ}"' in page
    assert spoken(START_UTC, LONDON) in page  # no-JS fallback: the webinar's zone
    assert "webinar-time.js" in page and "<script>" not in page
    assert db.execute("SELECT COUNT(*) FROM registrations").fetchone()[0] == 0
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]

    assert client.post("/w/spine-health", data={"t": token}).status_code == 403  # no CSRF token
    clock.advance(seconds=5)
    r = client.post("/w/spine-health", data={"t": token, "csrf": _csrf(page)})
    assert r.status_code == 200 and "You're registered" in r.get_data(as_text=True)
    assert db.execute("SELECT subscriber_id, source FROM registrations").fetchall() == [
        (alex, "invite")
    ]

    # A new person: email + first name; the newsletter box is separate and unticked.
    form_page = client.get("/w/spine-health").get_data(as_text=True)
    assert 'name="newsletter" value="yes">' in form_page  # not checked
    clock.advance(seconds=5)
    r = client.post(
        "/w/spine-health",
        data={
            "csrf": _csrf(form_page),
            "email": "cole@example.com",
            "name": "Cole",
            "tz": "America/Chicago",
            "website": "",
        },
    )
    # The email form answers "check your inbox" whatever happened (issue 10 item 5).
    assert r.status_code == 200 and "Check your inbox" in r.get_data(as_text=True)
    cole = lifecycle.find(db, "cole@example.com")
    assert cole.status == "pending" and cole.timezone == "America/Chicago"
    assert (
        db.execute(
            "SELECT COUNT(*) FROM outbox WHERE kind = 'confirm' AND subscriber_id = ?", (cole.id,)
        ).fetchone()[0]
        == 0
    )

    # A bot (honeypot filled) gets the same answer and nothing is stored.
    clock.advance(seconds=5)
    r = client.post(
        "/w/spine-health",
        data={"csrf": _csrf(form_page), "email": "bot@example.com", "name": "Bot", "website": "x"},
    )
    assert "Check your inbox" in r.get_data(as_text=True)
    assert lifecycle.find(db, "bot@example.com") is None

    # Bad email: the form again, with the sentence.
    r = client.post(
        "/w/spine-health", data={"csrf": _csrf(form_page), "email": "nope", "name": "N"}
    )
    assert r.status_code == 400 and "is not a valid email address" in r.get_data(as_text=True)

    # The last seat, then the waitlist.
    for addr in ("d@example.com", "e@example.com"):
        r = client.post(
            "/w/spine-health", data={"csrf": _csrf(form_page), "email": addr, "name": "X"}
        )
    assert "Check your inbox" in r.get_data(as_text=True)  # the waitlist is told by email
    assert "You're on the waitlist" not in r.get_data(as_text=True)
    assert db.execute(
        "SELECT o.kind FROM outbox o JOIN registrations r ON r.subscriber_id = o.subscriber_id "
        "WHERE o.to_addr = 'e@example.com' AND r.status = 'waitlisted'"
    ).fetchall() == [("webinar_waitlist",)]
    assert "Join the waitlist" in client.get("/w/spine-health").get_data(as_text=True)

    # Offer link: the GET is an interstitial; only the POST counts and redirects.
    otoken = webinars.offer_token(settings, "spine-health", alex, now)
    r = client.get(f"/o/{otoken}")
    assert r.status_code == 200 and '<button type="submit" class="big">' in r.get_data(as_text=True)
    assert "<script" not in r.get_data(as_text=True)  # only the reader's press counts
    assert db.execute("SELECT COUNT(*) FROM events WHERE kind = 'clicked_offer'").fetchone()[0] == 0
    r = client.post(f"/o/{otoken}", data={"csrf": _csrf(r.get_data(as_text=True))})
    assert r.status_code == 303 and r.headers["Location"] == settings.appointment_url
    assert db.execute("SELECT COUNT(*) FROM events WHERE kind = 'clicked_offer'").fetchone()[0] == 1
    assert client.get("/o/forged-token").status_code == 400

    # After the start: the page says so and a POST is refused with the reason.
    clock.set(START_UTC - timedelta(minutes=2))
    form_page = client.get("/w/spine-health").get_data(as_text=True)
    clock.set(START_UTC + timedelta(minutes=1))
    assert "Registration is closed" in client.get("/w/spine-health").get_data(as_text=True)
    r = client.post(
        "/w/spine-health", data={"csrf": _csrf(form_page), "email": "f@example.com", "name": "F"}
    )
    assert r.status_code == 400 and "Registration is closed" in r.get_data(as_text=True)
    assert client.get("/w/no-such-webinar").status_code == 404


def test_series_mail_waits_in_the_24h_before_a_registered_webinar(db, settings, clock):
    """Delivery's claim filter holds series steps for registrants (uses our registrations)."""
    from campaigns import holds
    from funnel import outbox

    create(db, settings, clock())
    reg = webinars.register(
        db, settings, "spine-health", clock(), email="r@example.com"
    ).subscriber_id
    other = active(db, settings, "o@example.com", clock())
    clock.set(START_UTC - timedelta(hours=12))
    for sid, addr in ((reg, "r@example.com"), (other, "o@example.com")):
        outbox.enqueue(
            db,
            settings,
            dedupe_key=f"series:x:1:{sid}",
            kind="series",
            subscriber_id=sid,
            to_addr=addr,
            due_at=clock(),
            now=clock(),
            stream="series:x",
            ref="series:x:1",
        )
    where, params = holds.claim_filter(settings, clock())
    _lease, rows = outbox.claim(db, clock(), 100, where=where, params=params)
    assert [r.to_addr for r in rows if r.kind == "series"] == ["o@example.com"]
    assert holds.hold_until(db, settings, reg, clock())[0] == "webinar"


def test_cli_invite_by_segment_expression(cli_env, settings, clock):
    db = connect(settings.db, migrate=True)
    now = clock()
    for i in range(3):
        active(db, settings, f"p{i}@example.com", now)
    start = (now + timedelta(days=10)).strftime("%Y-%m-%d 18:00")
    r = invoke(
        "webinar",
        "create",
        "spine-health",
        "--title",
        "Spine Health Webinar",
        "--start",
        start,
        "--tz",
        "Europe/London",
        "--join-url",
        "https://meet.backinmotion-physio.co.uk/s",
    )
    assert r.exit_code == 0, r.output
    r = invoke("webinar", "register", "spine-health", "p0@example.com")
    assert r.exit_code == 0
    r = invoke(
        "webinar",
        "invite",
        "spine-health",
        "--segment",
        "status=active",
        "--segment",
        "webinar:spine-health!=registered",
    )
    assert r.exit_code == 0 and "2 invitation(s) queued" in r.output, r.output
    r = invoke("webinar", "invite", "spine-health", "--segment", "all")
    assert "0 invitation(s) queued" in r.output and "2 already invited" in r.output, r.output
    r = invoke("webinar", "invite", "spine-health", "--segment", "series:nope>=x")
    assert r.exit_code == 1 and "series progress must be a part number" in r.output
    assert db.execute("SELECT COUNT(*) FROM events WHERE kind = 'invited'").fetchone()[0] == 2


def test_webinar_load_creates_a_webinar_once(cli_env, tmp_path):
    import re

    from funnel.settings import REPO_ROOT

    bundled = (REPO_ROOT / "content" / "webinars" / "spine-health.toml").read_text()
    path = tmp_path / "spine-health.toml"
    path.write_text(re.sub(r'(?m)^start = ".*"$', f'start = "{START}"', bundled))
    first = CliRunner().invoke(cli.main, ["webinar", "load", str(path)], catch_exceptions=False)
    assert first.exit_code == 0 and f"created spine-health ({START}" in first.output, first.output
    again = CliRunner().invoke(cli.main, ["webinar", "load", str(path)], catch_exceptions=False)
    assert "spine-health already exists; left as it is" in again.output
