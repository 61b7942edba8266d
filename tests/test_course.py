"""The 28-day programme as a daily course, on a fake clock and a real SMTP sink.

Readers start it with a signed button (a GET page, a POST that enrols); it then
sends one day a day at the series' hour in each reader's zone, across DST
switches, shares the frequency cap with the weekly series (yielding to it),
stops when its own stream is paused or turned off while the newsletter goes
on, and records ``completed`` after day 28.  What a reader receives is parsed
from the bytes the aiosmtpd sink got.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

import cli
from campaigns import broadcasts, course, enrollment, report, webinars, worker
from campaigns.render import MEDICAL_NOTE
from campaigns.sender import send_due
from funnel import outbox
from funnel.errors import TokenError
from subscribers import io, lifecycle, optin, preferences, tokens

COURSE = "28-day-programme"
STREAM = f"series:{COURSE}"
WEEKLY = "importance-of-exercise"
LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")


@pytest.fixture
def s(settings):
    """The default: no programme_url, so programme buttons start the course."""
    return settings.replace(programme_url="")


def active(db, settings, email, now, tz=None) -> int:
    """An active reader on the default streams (the weekly series, not the course)."""
    sid = optin.signup(db, settings, email, now, timezone=tz).subscriber_id
    optin.activate_imported(db, settings, sid, now, "test fixture")
    return sid


def start(db, settings, sid, now) -> str:
    """What the start page's POST does."""
    return enrollment.start_course(db, settings, tokens.programme_token(settings, sid, now), now)


class Inbox:
    """Runs the worker tick by tick and notes when each message arrived."""

    def __init__(self, db, settings, clock, sink):
        self.db, self.settings, self.clock, self.sink = db, settings, clock, sink
        self.arrived: list[tuple[datetime, object]] = []

    def tick(self) -> None:
        before = len(self.sink.messages)
        worker.tick(self.db, self.settings, self.clock())
        send_due(self.db, self.settings, self.clock)
        self.arrived += [(self.clock(), m) for m in self.sink.messages[before:]]

    def run_until(self, end: datetime, step=timedelta(hours=1)) -> None:
        while self.clock() < end:
            self.clock.advance(seconds=step.total_seconds())
            self.tick()

    def to(self, addr: str) -> list[tuple[datetime, object]]:
        return [(at, m) for at, m in self.arrived if addr in m.rcpt_tos]

    def days(self, addr: str) -> list[tuple[datetime, int, object]]:
        """The course emails ``addr`` got: (arrival, day number, message)."""
        out = []
        for at, m in self.to(addr):
            match = re.match(r"Day (\d+): ", str(m.message["Subject"]))
            if match and "28-day-programme" in str(m.message["List-Id"]):
                out.append((at, int(match.group(1)), m))
        return out

    def weekly(self, addr: str) -> list[tuple[datetime, object]]:
        return [(at, m) for at, m in self.to(addr) if WEEKLY in str(m.message["List-Id"])]


def local_hour(hour: int, day: date, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, time(hour), tzinfo=tz).astimezone(UTC)


def transitions(tz: ZoneInfo, after: datetime, days: int = 800) -> list[datetime]:
    """The UTC days (noon) on which ``tz``'s offset changes, after ``after``."""
    out, previous = [], None
    for i in range(days):
        noon = (after + timedelta(days=i)).replace(hour=12, minute=0, second=0, microsecond=0)
        offset = noon.astimezone(tz).utcoffset()
        if previous is not None and offset != previous:
            out.append(noon)
        previous = offset
    return out


def dst_window(now: datetime) -> tuple[datetime, datetime, datetime]:
    """(start, London switch, New York switch): the next pair of DST changes in both
    zones less than 24 days apart, and a start 3 days before the first of them."""
    ny = transitions(NEW_YORK, now + timedelta(days=5))
    for london in transitions(LONDON, now + timedelta(days=5)):
        near = [t for t in ny if abs(t - london) < timedelta(days=24)]
        if near:
            first = min(london, near[0])
            return first - timedelta(days=3), london, near[0]
    raise AssertionError("no DST switches found")  # pragma: no cover


def within_cap(times: list[datetime], cap: int) -> bool:
    return all(sum(1 for u in times if t - timedelta(hours=24) < u <= t) <= cap for t in times)


# ----------------------------------------------------------------- the daily course
def test_day_1_to_28_in_two_zones_across_dst_with_the_weekly_series(db, s, clock, smtp_server):
    begin, london_switch, ny_switch = dst_window(clock())
    start_day = begin.astimezone(LONDON).date()
    # Readers sign up three days earlier (weekly part 1 then), and start the course
    # at 07:00 London (02:00 New York): day 1 waits for the end of quiet hours.
    clock.set(local_hour(10, start_day - timedelta(days=3), LONDON))
    ann = active(db, s, "ann@example.com", clock(), "Europe/London")
    bob = active(db, s, "bob@example.com", clock(), "America/New_York")
    inbox = Inbox(db, s, clock, smtp_server)
    inbox.tick()
    inbox.run_until(local_hour(7, start_day, LONDON))
    assert db.execute("SELECT COUNT(*) FROM enrollments WHERE series = ?", (COURSE,)).fetchone()[
        0
    ] == 0  # confirming never starts the course
    assert start(db, s, ann, clock()) == "enrolled"
    assert start(db, s, bob, clock()) == "enrolled"
    end = local_hour(12, start_day + timedelta(days=29), NEW_YORK)
    assert begin < london_switch < end and begin < ny_switch < end
    inbox.run_until(end)

    for addr, tz in (("ann@example.com", LONDON), ("bob@example.com", NEW_YORK)):
        days = inbox.days(addr)
        assert [d for _, d, _ in days] == list(range(1, 29)), addr
        for at, day, m in days:
            local = at.astimezone(tz)
            expected = 8 if day == 1 else 9  # day 1: end of quiet hours; then the series hour
            assert (local.date(), local.hour, local.minute) == (
                start_day + timedelta(days=day - 1), expected, 0), (addr, day, local)
            text = " ".join(m.part("plain").split())
            assert MEDICAL_NOTE in text and "Stop if this makes your pain worse" in text
            assert str(m.message["Subject"]).startswith(f"Day {day}: ")
        # The weekly series kept its Tuesday 09:00, sharing the days and the cap.
        tuesdays = [at for at, _ in inbox.weekly(addr) if at > days[0][0]]
        assert len(tuesdays) >= 3
        assert all((t.astimezone(tz).weekday(), t.astimezone(tz).hour) == (1, 9) for t in tuesdays)
        assert within_cap([at for at, _ in inbox.to(addr)], s.frequency_cap)

    completed = db.execute(
        "SELECT subscriber_id, ref FROM events WHERE kind = 'completed' ORDER BY subscriber_id"
    ).fetchall()
    assert completed == [(ann, STREAM), (bob, STREAM)]
    assert db.execute(
        "SELECT COUNT(*) FROM enrollments WHERE series = ? AND status = 'completed'", (COURSE,)
    ).fetchone()[0] == 2

    rows = {step.label: step.count for step in report.compute(db, s).steps}
    assert [(k, v) for k, v in rows.items() if "28-day" in k] == [
        ("Started: The 28-day programme", 2),
        ("The 28-day programme: day 7", 2),
        ("The 28-day programme: day 14", 2),
        ("The 28-day programme: day 28", 2),
        ("The 28-day programme: requested an appointment", 0),
    ]
    assert not any(label.startswith("The 28-day programme: part") for label in rows)


def test_under_a_cap_of_one_the_course_yields_to_the_weekly_part(db, s, clock, smtp_server):
    s = s.replace(frequency_cap=1)
    now = clock()
    monday = now.astimezone(LONDON).date() + timedelta(days=7 - now.astimezone(LONDON).weekday())
    clock.set(local_hour(10, monday, LONDON))
    sid = active(db, s, "cat@example.com", clock(), "Europe/London")
    inbox = Inbox(db, s, clock, smtp_server)
    inbox.tick()  # weekly part 1 on Monday; part 2 is due on Tuesday week at 09:00
    inbox.run_until(local_hour(7, monday + timedelta(days=2), LONDON))
    start(db, s, sid, clock())  # Wednesday: day 1 at 08:00, then 09:00 daily
    inbox.run_until(local_hour(12, monday + timedelta(days=11), LONDON))

    weekly_tuesday = monday + timedelta(days=8)
    (part2,) = [at for at, _ in inbox.weekly("cat@example.com") if at.date() > monday]
    assert part2 == local_hour(9, weekly_tuesday, LONDON)
    arrivals = {day: at.astimezone(LONDON) for at, day, _ in inbox.days("cat@example.com")}
    assert arrivals[1] == local_hour(8, monday + timedelta(days=2), LONDON)
    for day in range(2, 7):  # Thursday to Monday
        assert arrivals[day] == local_hour(9, monday + timedelta(days=day + 1), LONDON)
    # Tuesday belongs to the weekly part: day 7 slides to Wednesday, the rest follow.
    assert all(at.date() != weekly_tuesday for at in arrivals.values())
    for day in (7, 8, 9):
        assert arrivals[day] == local_hour(9, weekly_tuesday + timedelta(days=day - 6), LONDON)
    assert within_cap([at for at, _ in inbox.to("cat@example.com")], 1)


def test_pausing_or_stopping_the_course_leaves_the_newsletter(db, s, clock, smtp_server):
    now = clock()
    day0 = now.astimezone(LONDON).date() + timedelta(days=1)
    clock.set(local_hour(7, day0, LONDON))
    sid = active(db, s, "dee@example.com", clock(), "Europe/London")
    inbox = Inbox(db, s, clock, smtp_server)
    inbox.tick()
    start(db, s, sid, clock())
    inbox.run_until(local_hour(12, day0 + timedelta(days=2), LONDON))  # days 1-3
    assert [d for _, d, _ in inbox.days("dee@example.com")] == [1, 2, 3]

    # A week's pause of the course alone: no day arrives; a broadcast does.
    until = clock() + timedelta(days=7)
    lifecycle.set_subscription(db, sid, STREAM, "paused", clock(), paused_until=until)
    cid = broadcasts.create(db, s, clock(), subject="Clinic news", body_md="We have moved.")
    broadcasts.schedule_campaign(db, s, cid, clock(), send_now=True)
    inbox.run_until(until)
    assert [d for _, d, _ in inbox.days("dee@example.com")] == [1, 2, 3]
    assert [m.message["Subject"] for _, m in inbox.to("dee@example.com")].count("Clinic news") == 1
    # After the pause it carries on with day 4 at the next 09:00, one a day, no burst.
    inbox.run_until(until + timedelta(days=2))
    resumed = [(at.astimezone(LONDON), d) for at, d, _ in inbox.days("dee@example.com")][3:]
    assert [d for _, d in resumed] == [4, 5]
    assert all(at.hour == 9 for at, _ in resumed)
    assert resumed[1][0] - resumed[0][0] == timedelta(days=1)

    # Unticking it on the preferences page stops it; the newsletter stays on.
    view = preferences.preferences_view(db, s, sid, clock())
    labels = {c.stream: c.label for c in view.streams}
    assert labels[STREAM] == "The 28-day programme: one short email a day"
    keep = [c.stream for c in view.streams if c.stream != STREAM]
    preferences.update_preferences(db, s, sid, {"streams": keep, "timezone": "Europe/London"},
                                   clock())  # fmt: skip
    cid = broadcasts.create(db, s, clock(), subject="More news", body_md="Open on Sundays.")
    broadcasts.schedule_campaign(db, s, cid, clock(), send_now=True)
    inbox.run_until(clock() + timedelta(days=3))
    assert [d for _, d, _ in inbox.days("dee@example.com")] == [1, 2, 3, 4, 5]
    assert [m.message["Subject"] for _, m in inbox.to("dee@example.com")].count("More news") == 1
    subs = lifecycle.subscriptions(db, sid)
    assert subs[STREAM]["status"] == "unsubscribed"
    assert subs["broadcasts"]["status"] == subs[f"series:{WEEKLY}"]["status"] == "subscribed"


# ----------------------------------------------------------------- the start button
def _csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def _counts(db) -> tuple:
    return (
        db.execute("SELECT COUNT(*) FROM enrollments WHERE series = ?", (COURSE,)).fetchone()[0],
        db.execute("SELECT COUNT(*) FROM outbox WHERE stream = ?", (STREAM,)).fetchone()[0],
        db.execute("SELECT COUNT(*) FROM subscriptions WHERE stream = ?", (STREAM,)).fetchone()[0],
        db.execute("SELECT COUNT(*) FROM events WHERE kind = 'enrolled' AND ref = ?",
                   (STREAM,)).fetchone()[0],  # fmt: skip
    )


def test_start_page_get_changes_nothing_and_post_enrols_once(db, s, clock):
    from web import create_app

    now = clock().astimezone(LONDON).replace(hour=10, minute=0, second=0, microsecond=0)
    clock.set(now.astimezone(UTC))
    sid = active(db, s, "eve@example.com", clock(), "Europe/London")
    client = create_app(s, clock=clock).test_client()
    token = tokens.programme_token(s, sid, clock())
    url = f"/programme/start/{token}"
    assert course.start_url(s, sid, clock()) == s.url(url)

    page = client.get(url)
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert '<form method="post"' in html and "Start the 28-day programme" in html
    assert "<script" not in html  # nothing presses the button for the reader
    for _ in range(3):  # link scanners
        client.get(url)
        client.head(url)
    assert _counts(db) == (0, 0, 0, 0)
    assert client.post(url).status_code == 403  # no CSRF token: nothing happens
    assert _counts(db) == (0, 0, 0, 0)

    r = client.post(url, data={"csrf": _csrf(html)})
    assert r.status_code == 200 and "Day 1 is on its way" in r.get_data(as_text=True)
    assert _counts(db) == (1, 1, 1, 1)  # enrolled, day 1 queued now, stream on, event
    assert db.execute(
        "SELECT kind, json_extract(data, '$.step') FROM outbox WHERE stream = ?", (STREAM,)
    ).fetchall() == [("series", "01-breathe-into-your-back")]

    shown = client.get(url).get_data(as_text=True)
    assert "already on the programme" in shown and "<form" not in shown
    again = client.post(url, data={"csrf": _csrf(html)})  # a second press, e.g. the back button
    assert "already on the programme" in again.get_data(as_text=True)
    assert _counts(db) == (1, 1, 1, 1)


def test_a_tampered_or_foreign_token_is_refused_and_stores_nothing(db, s, clock):
    from web import create_app

    sid = active(db, s, "fay@example.com", clock(), "Europe/London")
    client = create_app(s, clock=clock).test_client()
    good = tokens.programme_token(s, sid, clock())
    csrf = _csrf(client.get(f"/programme/start/{good}").get_data(as_text=True))
    flipped = good[:-3] + ("AAA" if good[-3:] != "AAA" else "BBB")
    other_purpose = tokens.subscriber_token(s, "preferences", sid, clock())
    for bad in (flipped, other_purpose, "not-a-token"):
        for r in (client.get(f"/programme/start/{bad}"),
                  client.post(f"/programme/start/{bad}", data={"csrf": csrf})):  # fmt: skip
            assert r.status_code == 400
            assert "This link doesn't work any more" in r.get_data(as_text=True)
    with pytest.raises(TokenError):
        enrollment.start_course(db, s, flipped, clock())
    assert _counts(db) == (0, 0, 0, 0)

    # An erased reader's link: 404, nothing stored.
    io.erase(db, "fay@example.com", clock())
    assert client.get(f"/programme/start/{good}").status_code == 404
    assert client.post(f"/programme/start/{good}", data={"csrf": csrf}).status_code == 404
    assert _counts(db) == (0, 0, 0, 0)


def test_preferences_page_offers_the_button_until_the_reader_is_on_it(db, s, clock):
    from web import create_app

    sid = active(db, s, "gil@example.com", clock(), "Europe/London")
    client = create_app(s, clock=clock).test_client()
    prefs = client.get(f"/p/{tokens.subscriber_token(s, 'preferences', sid, clock())}")
    html = prefs.get_data(as_text=True)
    action = re.search(r'action="(/programme/start/[^"]+)"', html).group(1)
    assert tokens.read_programme_token(s, action.rsplit("/", 1)[1], clock()) == sid
    assert _counts(db) == (0, 0, 0, 0)
    r = client.post(action, data={"csrf": _csrf(html)})  # the preferences page's own form
    assert r.status_code == 200 and _counts(db)[0] == 1
    html = client.get(f"/p/{tokens.subscriber_token(s, 'preferences', sid, clock())}").get_data(
        as_text=True
    )
    assert "/programme/start/" not in html
    assert "The 28-day programme: one short email a day" in html


def test_admin_enrols_a_segment_and_the_tick_sends_day_1(cli_env, settings, clock, smtp_server):
    from funnel.db import connect

    db = connect(settings.db, migrate=True)
    ids = [active(db, settings, f"r{i}@example.com", clock(), "Europe/London") for i in range(3)]
    lifecycle.unsubscribe(db, ids[2], clock())
    r = CliRunner().invoke(cli.main, ["series", "enroll", COURSE, "--segment", "all"])
    assert r.exit_code == 0, r.output
    assert "2 enrolled" in r.output
    again = CliRunner().invoke(cli.main, ["series", "enroll", COURSE, "--segment", "all"])
    assert "0 enrolled" in again.output and "2 already enrolled" in again.output
    clock.set(local_hour(10, clock().astimezone(LONDON).date() + timedelta(days=1), LONDON))
    worker.tick(db, settings, clock())
    send_due(db, settings, clock)
    got = [m for m in smtp_server.messages if str(m.message["Subject"]).startswith("Day 1:")]
    assert sorted(a for m in got for a in m.rcpt_tos) == ["r0@example.com", "r1@example.com"]
    db.close()


# ----------------------------------------------------------------- where the button is
def _programme_links(received, db, s, clock) -> list[str]:
    """The start links behind the message's tracked /c/ links."""
    return [u for u in received.followed_links(db, s, clock()) if "/programme/start/" in u]


def _enqueue_part_6(db, s, sid, clock, key_suffix=""):
    outbox.enqueue(
        db, s, dedupe_key=f"series:{WEEKLY}:06:{sid}{key_suffix}", kind="series", subscriber_id=sid,
        to_addr="hal@example.com", due_at=clock(), now=clock(), stream=f"series:{WEEKLY}",
        ref=f"series:{WEEKLY}:06-strength-that-lasts",
        data={"series": WEEKLY, "step": "06-strength-that-lasts", "part": 6},
    )  # fmt: skip


def test_part_6_carries_the_readers_own_start_link(db, s, clock, smtp_server):
    sid = active(db, s, "hal@example.com", clock(), "Europe/London")
    _enqueue_part_6(db, s, sid, clock)
    send_due(db, s, clock)
    (part6,) = smtp_server.to("hal@example.com")
    (link,) = _programme_links(part6, db, s, clock)
    assert link.startswith(s.base_url + "/programme/start/")
    assert tokens.read_programme_token(s, link.rsplit("/", 1)[1], clock()) == sid
    assert re.search(r'href="' + re.escape(s.url("/c/")) + r'[^"]+"[^>]*>\s*Start the 28-day programme',
                     part6.part("html"))  # fmt: skip

    # A clinic selling the programme elsewhere: programme_url wins, for everyone.
    elsewhere = s.replace(programme_url="https://shop.clinic.example/28-days")
    smtp_server.clear()
    _enqueue_part_6(db, elsewhere, sid, clock, key_suffix=":b")
    clock.advance(days=2)  # past the frequency cap
    send_due(db, elsewhere, clock)
    (again,) = smtp_server.to("hal@example.com")
    assert _programme_links(again, db, elsewhere, clock) == []
    assert "https://shop.clinic.example/28-days" in again.followed_links(db, elsewhere, clock())


def test_the_attended_follow_up_carries_the_button(db, s, clock, smtp_server, tmp_path):
    from campaigns import attendance

    sid = active(db, s, "ivy@example.com", clock(), "Europe/London")
    begins = clock() + timedelta(days=3)
    webinars.create_webinar(db, s, {
        "slug": "spine-health", "title": "Spine Health Webinar", "description": "Live.",
        "start": f"{begins.astimezone(LONDON):%Y-%m-%d %H:%M}", "timezone": "Europe/London",
        "join_url": "https://meet.clinic.example/spine",
    }, clock())  # fmt: skip
    webinars.register(db, s, "spine-health", clock(), subscriber_id=sid)
    csv = tmp_path / "zoom.csv"
    csv.write_text(
        "User Name,User Email,Join Time,Leave Time,Duration (Minutes)\n"
        f"Ivy,ivy@example.com,{begins:%Y-%m-%d %H:%M:%S},{begins:%Y-%m-%d %H:%M:%S},50\n",
        encoding="utf-8",
    )
    clock.set(begins + timedelta(minutes=70))
    attendance.import_attendance(db, s, "spine-health", csv, clock())
    clock.set(begins + timedelta(hours=4))
    smtp_server.clear()
    send_due(db, s, clock)
    (thanks,) = [m for m in smtp_server.to("ivy@example.com") if "Thank you" in m.message["Subject"]]
    (link,) = _programme_links(thanks, db, s, clock)
    assert tokens.read_programme_token(s, link.rsplit("/", 1)[1], clock()) == sid
    assert "Start the 28-day programme:\n" + s.url("/c/") in thanks.part("plain").replace("\r\n", "\n")
    assert any("/o/" in u for u in thanks.followed_links(db, s, clock()))  # the offer stays


def test_a_programme_offer_without_programme_url_starts_the_course(db, s, clock):
    sid = active(db, s, "jo@example.com", clock(), "Europe/London")
    webinars.create_webinar(db, s, {
        "slug": "qa", "title": "Back care Q&A", "description": "Live.", "offer": "programme",
        "start": f"{(clock() + timedelta(days=3)).astimezone(LONDON):%Y-%m-%d %H:%M}",
        "timezone": "Europe/London", "join_url": "https://meet.clinic.example/qa",
    }, clock())  # fmt: skip
    w, url = webinars.offer_target(db, s, webinars.offer_token(s, "qa", sid, clock()), clock())
    assert url.startswith(s.base_url + "/programme/start/")
    assert tokens.read_programme_token(s, url.rsplit("/", 1)[1], clock()) == sid


def test_check_no_longer_asks_for_a_programme_url(db, s, clock):
    from campaigns import check

    webinars.create_webinar(db, s, {
        "slug": "qa", "title": "Back care Q&A", "description": "Live.", "offer": "programme",
        "start": f"{(clock() + timedelta(days=3)).astimezone(LONDON):%Y-%m-%d %H:%M}",
        "timezone": "Europe/London", "join_url": "https://meet.clinic.example/qa",
    }, clock())  # fmt: skip
    found = check.problems(s, clock(), network=False)
    assert not [line for line in found if "programme" in line.lower()], found
    without_appointments = s.replace(appointment_url="")  # our own /appointment page serves
    webinars.edit_webinar(db, s, "qa", {"offer": "appointment"}, clock())
    assert not [line for line in check.problems(without_appointments, clock(), network=False)
                if "has no URL" in line]
