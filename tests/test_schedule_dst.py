"""Daylight-saving switches, end to end: confirm -> scheduler -> live SMTP.

A reader who confirms before a switch must keep getting each part at 09:00
their time after it (so the UTC time moves by an hour).  The clock jumps from
one due time to the next, as a worker would see them.
"""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from campaigns.sender import send_due
from campaigns.worker import tick
from funnel.db import parse_iso
from subscribers import lifecycle, optin, tokens


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
def weekly(tmp_path, settings):
    folder = tmp_path / "content" / "series" / "weekly"
    folder.mkdir(parents=True)
    for part in range(1, 5):
        (folder / f"0{part}-step.md").write_text(
            f"---\ntitle: Step {part}\npart: {part}\nsubject: Part {part}\n---\nBody {part}.\n"
        )
    names = ", ".join(f'"0{p}-step.md"' for p in range(1, 5))
    (folder / "series.toml").write_text(
        f'title = "Weekly"\ncadence = "weekly"\nsend_day = "tuesday"\nsend_hour = 9\n'
        f"steps = [{names}]\n"
    )
    return settings.replace(content_dir=str(tmp_path / "content"), enroll_series=("weekly",))


def confirm(db, settings, email, now, tz):
    r = optin.signup(db, settings, email, now, timezone=tz)
    sub = lifecycle.get(db, r.subscriber_id)
    optin.confirm(db, settings, tokens.confirm_token(settings, sub.id, sub.confirm_nonce, now), now)
    tick(db, settings, now)  # the worker's next tick enrols them and queues part 1 if due


def run_until(db, settings, clock, end: datetime) -> None:
    """Jump to each next due time (enrollment or outbox), tick and send, until ``end``."""
    while True:
        send_due(db, settings, clock)
        nxt = db.execute(
            "SELECT MIN(t) FROM (SELECT MIN(next_due_at) AS t FROM enrollments "
            "WHERE status = 'active' UNION ALL SELECT MIN(due_at) FROM outbox "
            "WHERE status IN ('queued', 'retry'))"
        ).fetchone()[0]
        if nxt is None or parse_iso(nxt) > end:
            return
        when = max(parse_iso(nxt), clock())
        # Nothing may go out a minute early.
        clock.set(when - timedelta(minutes=1))
        assert tick(db, settings, clock())["series_queued"] == 0
        clock.set(when)
        tick(db, settings, clock())


def arrivals(smtp_server, addr):
    out = []
    for m in smtp_server.to(addr):
        msg = m.message
        if msg["Subject"].startswith("Part"):
            out.append((msg["Subject"], email.utils.parsedate_to_datetime(msg["Date"])))
    return out


@pytest.mark.parametrize(
    "zone, confirmed_at, expected_utc",
    [
        # New York falls back on Sun 2026-11-01 (EDT -> EST).
        (
            "America/New_York",
            utc(2026, 10, 20, 14, 0),
            [
                utc(2026, 10, 20, 14, 0),
                utc(2026, 10, 27, 13, 0),
                utc(2026, 11, 3, 14, 0),
                utc(2026, 11, 10, 14, 0),
            ],
        ),
        # ...and springs forward on Sun 2026-03-08 (EST -> EDT).
        (
            "America/New_York",
            utc(2026, 2, 24, 15, 0),
            [
                utc(2026, 2, 24, 15, 0),
                utc(2026, 3, 3, 14, 0),
                utc(2026, 3, 10, 13, 0),
                utc(2026, 3, 17, 13, 0),
            ],
        ),
        # London falls back on Sun 2026-10-25 (BST -> GMT).
        (
            "Europe/London",
            utc(2026, 10, 13, 10, 0),
            [
                utc(2026, 10, 13, 10, 0),
                utc(2026, 10, 20, 8, 0),
                utc(2026, 10, 27, 9, 0),
                utc(2026, 11, 3, 9, 0),
            ],
        ),
        # ...and springs forward on Sun 2026-03-29 (GMT -> BST).
        (
            "Europe/London",
            utc(2026, 3, 17, 12, 0),
            [
                utc(2026, 3, 17, 12, 0),
                utc(2026, 3, 24, 9, 0),
                utc(2026, 3, 31, 8, 0),
                utc(2026, 4, 7, 8, 0),
            ],
        ),
    ],
)
def test_parts_stay_at_nine_local_across_the_switch(
    db, weekly, clock, smtp_server, zone, confirmed_at, expected_utc
):
    tz = ZoneInfo(zone)
    clock.set(confirmed_at)
    confirm(db, weekly, "reader@example.com", clock(), zone)
    run_until(db, weekly, clock, confirmed_at + timedelta(days=35))
    got = arrivals(smtp_server, "reader@example.com")
    assert [s for s, _ in got] == ["Part 1", "Part 2", "Part 3", "Part 4"]
    assert [d.astimezone(UTC) for _, d in got] == expected_utc
    for _, sent in got[1:]:
        local = sent.astimezone(tz)
        assert (local.strftime("%a"), local.hour, local.minute) == ("Tue", 9, 0)
    # The two sides of the switch really differ in UTC.
    assert len({d.astimezone(UTC).hour for _, d in got[1:]}) == 2


def test_part_1_in_quiet_hours_on_the_night_of_the_switch(db, weekly, clock, smtp_server):
    # Sat 2026-10-24 22:30 BST: quiet hours; the clocks go back at 02:00 BST.
    clock.set(utc(2026, 10, 24, 21, 30))
    confirm(db, weekly, "late@example.com", clock(), "Europe/London")
    run_until(db, weekly, clock, utc(2026, 10, 26))
    ((subject, sent),) = arrivals(smtp_server, "late@example.com")
    assert subject == "Part 1"
    assert sent.astimezone(UTC) == utc(2026, 10, 25, 8, 0)  # 08:00 GMT, the end of quiet hours


def test_readers_in_two_zones_get_the_same_local_hour(db, weekly, clock, smtp_server):
    clock.set(utc(2026, 10, 20, 14, 0))
    confirm(db, weekly, "ny@example.com", clock(), "America/New_York")
    confirm(db, weekly, "ldn@example.com", clock(), "Europe/London")
    row = db.execute("SELECT next_due_at FROM enrollments ORDER BY subscriber_id").fetchall()
    assert [parse_iso(r[0]) for r in row] == [utc(2026, 10, 27, 13, 0), utc(2026, 10, 27, 9, 0)]
    run_until(db, weekly, clock, utc(2026, 11, 4))
    for addr, zone in (
        ("ny@example.com", "America/New_York"),
        ("ldn@example.com", "Europe/London"),
    ):
        hours = {d.astimezone(ZoneInfo(zone)).hour for _, d in arrivals(smtp_server, addr)[1:]}
        assert hours == {9}


def test_admin_times_in_the_spring_forward_gap_are_refused():
    from zoneinfo import ZoneInfo

    import pytest

    from campaigns.schedule import parse_local_time
    from funnel.errors import InputError

    london = ZoneInfo("Europe/London")
    with pytest.raises(InputError, match="^--start: 2027-03-28 01:30 does not exist in Europe/London"):
        parse_local_time("2027-03-28 01:30", london)
    # The repeated hour in October is fine: the first occurrence (BST) is taken.
    assert parse_local_time("2026-10-25 01:30", london).isoformat() == "2026-10-25T00:30:00+00:00"
