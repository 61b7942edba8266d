"""Relative times in the CLI: one parser (campaigns.schedule.parse_when) and its doors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from campaigns import webinars
from campaigns.schedule import WHEN_FORMS, offset_text, parse_when
from funnel.db import connect
from funnel.errors import InputError

ZONES = ["Europe/London", "America/New_York", "Australia/Sydney", "Asia/Kolkata", "UTC"]
WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]

nows = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2031, 12, 31), timezones=st.just(UTC)
)
zones = st.sampled_from(ZONES).map(ZoneInfo)
hours = st.integers(0, 23)
minutes = st.integers(0, 59)


def _exists(day, hour, minute, tz) -> bool:
    """Whether wall-clock day hour:minute happens in tz (not in a spring-forward gap)."""
    wall = datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz)
    back = wall.astimezone(UTC).astimezone(tz)
    return (back.hour, back.minute) == (hour, minute)


def _wall_or_gap(text, tz, now, day, hour, minute):
    """parse_when(text) when the wall time exists, else check it is refused."""
    if not _exists(day, hour, minute, tz):
        with pytest.raises(InputError, match=r"^--at: .* does not exist in"):
            parse_when(text, tz, now)
        return None
    when = parse_when(text, tz, now)
    local = when.astimezone(tz)
    assert (local.date(), local.hour, local.minute) == (day, hour, minute)
    return when


@hsettings(max_examples=300, deadline=None)
@given(now=nows, tz=zones, n=st.integers(0, 5000), unit=st.sampled_from("mh"),
       spelled=st.booleans())  # fmt: skip
def test_minutes_and_hours_are_elapsed_time(now, tz, n, unit, spelled):
    words = {"m": "minutes", "h": "hours"}
    text = f"in {n} {words[unit]}" if spelled else f"+{n}{unit}"
    delta = timedelta(minutes=n) if unit == "m" else timedelta(hours=n)
    assert parse_when(text, tz, now) == now + delta


@hsettings(max_examples=300, deadline=None)
@given(now=nows, tz=zones, n=st.integers(0, 400), weeks=st.booleans(), hour=hours, minute=minutes,
       compact=st.booleans())  # fmt: skip
def test_days_and_weeks_are_calendar_days_at_a_wall_time(now, tz, n, weeks, hour, minute, compact):
    unit = ("w" if weeks else "d") if compact else ("weeks" if weeks else "days")
    text = (f"+{n}{unit}" if compact else f"in {n} {unit}") + f" {hour:02d}:{minute:02d}"
    day = now.astimezone(tz).date() + timedelta(days=n * (7 if weeks else 1))
    _wall_or_gap(text, tz, now, day, hour, minute)


@hsettings(max_examples=200, deadline=None)
@given(now=nows, tz=zones, n=st.integers(1, 60))
def test_days_without_a_time_keep_the_wall_clock_time(now, tz, n):
    when = parse_when(f"in {n} days", tz, now)
    local_now, local = now.astimezone(tz), when.astimezone(tz)
    assert local.date() == local_now.date() + timedelta(days=n)
    if _exists(local.date(), local_now.hour, local_now.minute, tz):
        assert (local.hour, local.minute) == (local_now.hour, local_now.minute)


@hsettings(max_examples=300, deadline=None)
@given(now=nows, tz=zones, weekday=st.integers(0, 6), hour=hours, minute=minutes,
       shout=st.booleans())  # fmt: skip
def test_weekday_is_the_next_such_moment(now, tz, weekday, hour, minute, shout):
    name = WEEKDAYS[weekday].upper() if shout else WEEKDAYS[weekday]
    text = f"{name} {hour}:{minute:02d}"
    try:
        when = parse_when(text, tz, now)
    except InputError as exc:  # only a wall time the clocks skip is refused
        assert "does not exist in" in str(exc)
        return
    local = when.astimezone(tz)
    assert (local.weekday(), local.hour, local.minute) == (weekday, hour, minute)
    assert now < when <= now + timedelta(days=7, hours=1)


@hsettings(max_examples=200, deadline=None)
@given(now=nows, tz=zones, tomorrow=st.booleans(), hour=hours, minute=minutes)
def test_today_and_tomorrow(now, tz, tomorrow, hour, minute):
    word = "tomorrow" if tomorrow else "today"
    day = now.astimezone(tz).date() + timedelta(days=1 if tomorrow else 0)
    _wall_or_gap(f"{word} {hour:02d}:{minute:02d}", tz, now, day, hour, minute)


@hsettings(max_examples=200, deadline=None)
@given(now=nows, tz=zones, hour=hours, minute=minutes, days=st.integers(0, 2000))
def test_absolute_time_does_not_depend_on_now(now, tz, hour, minute, days):
    day = datetime(2026, 1, 1).date() + timedelta(days=days)
    _wall_or_gap(f"{day:%Y-%m-%d} {hour:02d}:{minute:02d}", tz, now, day, hour, minute)


@hsettings(max_examples=500, deadline=None)
@given(now=nows, text=st.text(max_size=30))
def test_anything_else_is_one_line_naming_the_field(now, text):
    try:
        parse_when(text, ZoneInfo("Europe/London"), now, "--start")
    except InputError as exc:
        message = str(exc)
        assert message.startswith("--start: ") and "\n" not in message
        assert "not a time" in message or "does not exist" in message or "too far" in message


@pytest.mark.parametrize(
    "text",
    ["next tuesday", "tomorrow", "monday", "in 2 hours 18:00", "in two days", "+2y", "+2 h",
     "2026-12-01", "2026-12-01T09:00", "today 24:00", "today 9:60", "in -3 days", "yesterday 9:00"],
)  # fmt: skip
def test_refused_forms_list_the_accepted_ones(text):
    now = datetime(2026, 11, 21, 10, tzinfo=UTC)
    with pytest.raises(InputError) as info:
        parse_when(text, ZoneInfo("Europe/London"), now, "--at")
    assert str(info.value) == f"--at: {text!r} is not a time; use {WHEN_FORMS}"


def test_offset_text_for_in():
    assert offset_text("2h") == "+2h"
    assert offset_text(" 90 Minutes ") == "in 90 minutes"
    with pytest.raises(InputError, match=r"^--in: 'soon' is not a duration"):
        offset_text("soon")


# ----------------------------------------------------------------- the doors
def _error(result) -> str:
    assert result.exit_code == 1, result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("Error:")]
    return line


JOIN = "https://meet.backinmotion-physio.co.uk/s"


def test_webinar_create_edit_and_invite_take_relative_times(run, settings, clock):
    london = ZoneInfo("Europe/London")
    r = run("webinar", "create", "talk", "--title", "Talk", "--start", "in 14 days 18:00",
            "--tz", "Europe/London", "--join-url", JOIN)  # fmt: skip
    assert r.exit_code == 0, r.output
    db = connect(settings.db)
    w = webinars.get_webinar(db, "talk")
    day = clock().astimezone(london).date() + timedelta(days=14)
    assert w.local_start.replace(tzinfo=None) == datetime(day.year, day.month, day.day, 18)

    r = run("webinar", "edit", "talk", "--start", "thursday 19:30")
    assert r.exit_code == 0 and "SEQUENCE 1" in r.output, r.output
    w = webinars.get_webinar(db, "talk")
    assert (w.local_start.weekday(), w.local_start.hour, w.local_start.minute) == (3, 19, 30)
    assert clock() < w.starts_at <= clock() + timedelta(days=7)

    r = run("webinar", "invite", "talk", "--segment", "all", "--at", "tomorrow 09:00")
    assert r.exit_code == 0, r.output
    tomorrow = clock().astimezone(london).date() + timedelta(days=1)
    assert f"for {tomorrow:%Y-%m-%d} 09:00" in r.output


def test_webinar_times_bad_input_is_one_line_and_changes_nothing(run, settings, clock):
    r = run("webinar", "create", "talk", "--title", "Talk", "--start", "+3d", "--tz", "UTC",
            "--join-url", JOIN)  # fmt: skip
    assert r.exit_code == 0, r.output
    db = connect(settings.db)
    before = webinars.get_webinar(db, "talk")
    assert _error(run("webinar", "edit", "talk", "--start", "next week")).startswith(
        "Error: --start: 'next week' is not a time; use \"YYYY-MM-DD HH:MM\""
    )
    line = _error(run("webinar", "edit", "talk", "--start", "today 00:00"))
    assert line == (
        f"Error: --start: {clock():%Y-%m-%d} 00:00 UTC is in the past; "
        "a webinar must start in the future"
    )
    line = _error(run("webinar", "invite", "talk", "--segment", "all", "--at", "today 00:00"))
    assert line == f"Error: --at: {clock():%Y-%m-%d} 00:00 UTC is in the past; give a time from now on"
    assert _error(run("webinar", "invite", "talk", "--segment", "all", "--at", "soon")).startswith(
        "Error: --at: 'soon' is not a time; use"
    )
    r = run("webinar", "create", "other", "--title", "O", "--start", "tomorrow",
            "--tz", "UTC", "--join-url", JOIN)  # fmt: skip
    assert _error(r).startswith("Error: --start: 'tomorrow' is not a time; use")
    assert webinars.get_webinar(db, "talk") == before
    assert webinars.find_webinar(db, "other") is None
    assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0


def test_series_timeline_start_takes_relative_times(run, clock):
    r = run("series", "show", "importance-of-exercise", "--timeline", "--tz", "Europe/London",
            "--start", "tomorrow 10:00")  # fmt: skip
    assert r.exit_code == 0, r.output
    tomorrow = clock().astimezone(ZoneInfo("Europe/London")) + timedelta(days=1)
    at_ten = tomorrow.replace(hour=10, minute=0, second=0, microsecond=0)
    assert f"confirms {at_ten:%a %Y-%m-%d %H:%M %Z}" in r.output  # GMT or BST, as on that day
    line = _error(run("series", "show", "importance-of-exercise", "--timeline",
                      "--start", "whenever"))  # fmt: skip
    assert line.startswith("Error: --start: 'whenever' is not a time; use")
