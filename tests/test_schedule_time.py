"""Due-time math: send slots in the reader's zone, DST gaps/overlaps, quiet hours."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns.schedule import (
    in_quiet_hours,
    local_to_utc,
    next_slot,
    outside_quiet_hours,
    parse_local_time,
    step_due_times,
)
from campaigns.series import Series, Step
from funnel.errors import InputError

LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")
TOKYO = ZoneInfo("Asia/Tokyo")
TUESDAY = 1


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def make_series(
    n: int = 4,
    *,
    cadence_days: int = 7,
    send_day: int | None = TUESDAY,
    send_hour: int = 9,
    offsets: dict[int, int] | None = None,
) -> Series:
    offsets = offsets or {}
    steps = [
        Step(
            key=f"{i:02d}-step",
            part=i,
            title=f"Step {i}",
            subject=f"Step {i}",
            preheader="",
            body_md="Body.\n",
            ctas=[],
            offset_days=offsets.get(i),
            words=1,
            path=Path(f"{i:02d}-step.md"),
        )
        for i in range(1, n + 1)
    ]
    return Series(
        slug="demo",
        title="Demo",
        description="",
        cadence_days=cadence_days,
        send_day=send_day,
        send_hour=send_hour,
        stream="series:demo",
        steps=steps,
        path=Path("demo"),
    )


def local(when: datetime, tz: ZoneInfo) -> str:
    return when.astimezone(tz).strftime("%a %Y-%m-%d %H:%M %Z")


# ----------------------------------------------------------------- weekly across DST


@pytest.mark.parametrize(
    ("tz", "confirm", "expected_local", "expected_utc_hours"),
    [
        # London springs forward on Sunday 2026-03-29: GMT (UTC+0) -> BST (UTC+1).
        (
            LONDON,
            utc(2026, 3, 17, 10),
            ["Tue 2026-03-24 09:00 GMT", "Tue 2026-03-31 09:00 BST", "Tue 2026-04-07 09:00 BST"],
            [9, 8, 8],
        ),
        # London falls back on Sunday 2026-10-25: BST -> GMT.
        (
            LONDON,
            utc(2026, 10, 13, 10),
            ["Tue 2026-10-20 09:00 BST", "Tue 2026-10-27 09:00 GMT", "Tue 2026-11-03 09:00 GMT"],
            [8, 9, 9],
        ),
        # New York springs forward on Sunday 2026-03-08: EST (UTC-5) -> EDT (UTC-4).
        (
            NEW_YORK,
            utc(2026, 2, 24, 15),
            ["Tue 2026-03-03 09:00 EST", "Tue 2026-03-10 09:00 EDT", "Tue 2026-03-17 09:00 EDT"],
            [14, 13, 13],
        ),
        # New York falls back on Sunday 2026-11-01: EDT -> EST.
        (
            NEW_YORK,
            utc(2026, 10, 20, 15),
            ["Tue 2026-10-27 09:00 EDT", "Tue 2026-11-03 09:00 EST", "Tue 2026-11-10 09:00 EST"],
            [13, 14, 14],
        ),
    ],
)
def test_weekly_nine_am_stays_nine_am_local_across_dst(
    tz, confirm, expected_local, expected_utc_hours
):
    due = step_due_times(make_series(4), confirm, tz)
    # Step 1 goes out at confirmation (a Tuesday mid-morning: not quiet hours).
    assert due[0] == confirm
    assert [local(d, tz) for d in due[1:]] == expected_local
    assert [d.hour for d in due[1:]] == expected_utc_hours
    assert all(d.tzinfo is UTC for d in due)


def test_cadence_counts_local_calendar_days_not_utc_hours():
    # 7 x 24 h after Tue 09:00 GMT is Tue 10:00 BST; the step must still go out
    # that Tuesday at 09:00 BST, not slip to the following week.
    series = make_series(2, send_day=TUESDAY)
    due = step_due_times(series, utc(2026, 3, 24, 9), LONDON)
    assert local(due[1], LONDON) == "Tue 2026-03-31 09:00 BST"
    assert due[1] - due[0] == timedelta(days=7) - timedelta(hours=1)


def test_next_slot_is_strictly_after():
    slot = utc(2026, 11, 24, 9)  # Tue 09:00 GMT
    assert next_slot(slot - timedelta(seconds=1), LONDON, TUESDAY, 9) == slot
    assert next_slot(slot, LONDON, TUESDAY, 9) == utc(2026, 12, 1, 9)
    assert next_slot(slot, LONDON, None, 9) == utc(2026, 11, 25, 9)


def test_next_slot_any_day_uses_local_date():
    # 23:30 UTC on the 20th is already 08:30 on the 21st in Tokyo.
    assert next_slot(utc(2026, 11, 20, 23, 30), TOKYO, None, 9) == utc(2026, 11, 21, 0)


# ----------------------------------------------------------------- gaps and overlaps


def test_gap_moves_to_the_moment_the_clocks_jump():
    # London: 01:00-02:00 on 2026-03-29 never happens; 01:30 -> 02:00 BST (01:00 UTC).
    assert local_to_utc(date(2026, 3, 29), 1, LONDON, 30) == utc(2026, 3, 29, 1)
    assert next_slot(utc(2026, 3, 28, 12), LONDON, None, 1) == utc(2026, 3, 29, 1)
    assert local(utc(2026, 3, 29, 1), LONDON) == "Sun 2026-03-29 02:00 BST"
    # New York: 02:00-03:00 on 2026-03-08 never happens; 02:00 -> 03:00 EDT (07:00 UTC).
    slot = next_slot(utc(2026, 3, 7, 12), NEW_YORK, None, 2)
    assert slot == utc(2026, 3, 8, 7)
    assert local(slot, NEW_YORK) == "Sun 2026-03-08 03:00 EDT"
    # The day after, the wall time exists again.
    assert next_slot(slot, NEW_YORK, None, 2) == utc(2026, 3, 9, 6)


def test_overlap_takes_the_first_occurrence_only():
    # London 01:00 happens twice on 2026-10-25: 00:00 UTC (BST) and 01:00 UTC (GMT).
    assert next_slot(utc(2026, 10, 24, 12), LONDON, None, 1) == utc(2026, 10, 25, 0)
    # Between the two occurrences: the day's slot has passed; next is the 26th,
    # never the second 01:00 (no double send an hour apart).
    assert next_slot(utc(2026, 10, 25, 0, 30), LONDON, None, 1) == utc(2026, 10, 26, 1)
    # New York 01:30 on 2026-11-01: first occurrence is EDT (05:30 UTC).
    assert local_to_utc(date(2026, 11, 1), 1, NEW_YORK, 30) == utc(2026, 11, 1, 5, 30)


# ----------------------------------------------------------------- quiet hours


@pytest.mark.parametrize(
    ("hour", "start", "end", "quiet"),
    [
        (20, 21, 8, False),
        (21, 21, 8, True),
        (23, 21, 8, True),
        (0, 21, 8, True),
        (7, 21, 8, True),
        (8, 21, 8, False),
        (12, 12, 14, True),  # a window that does not wrap midnight
        (14, 12, 14, False),
        (11, 12, 14, False),
        (3, 5, 5, False),  # equal bounds: no quiet hours at all
    ],
)
def test_in_quiet_hours(hour, start, end, quiet):
    assert in_quiet_hours(datetime(2026, 1, 1, hour, 30), start, end) is quiet


@pytest.mark.parametrize(
    ("confirm_local", "expected_local"),
    [
        ("2026-11-21 22:30", "Sun 2026-11-22 08:00 GMT"),  # late evening -> next morning
        ("2026-11-22 02:15", "Sun 2026-11-22 08:00 GMT"),  # small hours -> same morning
        ("2026-11-22 07:59", "Sun 2026-11-22 08:00 GMT"),
        ("2026-11-22 08:00", "Sun 2026-11-22 08:00 GMT"),  # quiet hours are over: right away
        ("2026-11-21 20:59", "Sat 2026-11-21 20:59 GMT"),
    ],
)
def test_first_step_waits_for_quiet_hours_to_end(confirm_local, expected_local):
    anchor = parse_local_time(confirm_local, LONDON)
    due = step_due_times(make_series(2), anchor, LONDON)
    assert local(due[0], LONDON) == expected_local


def test_quiet_hours_are_configurable():
    anchor = parse_local_time("2026-11-21 19:00", LONDON)
    assert step_due_times(make_series(1), anchor, LONDON)[0] == anchor
    due = step_due_times(make_series(1), anchor, LONDON, quiet_start=18, quiet_end=7)
    assert local(due[0], LONDON) == "Sun 2026-11-22 07:00 GMT"
    assert outside_quiet_hours(anchor, LONDON, 18, 7) == due[0]


def test_send_hour_inside_quiet_hours_is_refused():
    with pytest.raises(InputError, match=r"series demo: send_hour 22 falls inside quiet hours"):
        step_due_times(make_series(2, send_hour=22), utc(2026, 11, 21, 10), LONDON)


# ----------------------------------------------------------------- zones and offsets


def test_same_anchor_different_zones_give_different_utc_times():
    anchor = utc(2026, 11, 21, 10)  # a Saturday
    by_zone = {
        tz.key: step_due_times(make_series(3), anchor, tz) for tz in (LONDON, NEW_YORK, TOKYO)
    }
    # Each reader gets part 2 at 09:00 on *their* Tuesday.
    assert by_zone["Europe/London"][1] == utc(2026, 12, 1, 9)
    assert by_zone["America/New_York"][1] == utc(2026, 12, 1, 14)
    assert by_zone["Asia/Tokyo"][1] == utc(2026, 12, 1, 0)
    # Step 1: immediate in London (10:00) and Tokyo (19:00); in New York it is
    # 05:00, inside quiet hours, so it waits for 08:00 EST.
    assert by_zone["Europe/London"][0] == anchor
    assert by_zone["Asia/Tokyo"][0] == anchor
    assert by_zone["America/New_York"][0] == utc(2026, 11, 21, 13)


def test_offset_days_overrides_cadence_and_step_one_offset_delays_it():
    series = make_series(3, send_day=None, offsets={2: 2, 3: 0})
    due = step_due_times(series, utc(2026, 11, 21, 10), LONDON)
    assert [local(d, LONDON) for d in due] == [
        "Sat 2026-11-21 10:00 GMT",
        "Mon 2026-11-23 09:00 GMT",  # +2 calendar days
        "Tue 2026-11-24 09:00 GMT",  # +0: the same day's slot has passed, so the next one
    ]
    delayed = make_series(2, send_day=None, offsets={1: 3})
    due = step_due_times(delayed, utc(2026, 11, 21, 10), LONDON)
    assert [local(d, LONDON) for d in due] == [
        "Tue 2026-11-24 09:00 GMT",
        "Tue 2026-12-01 09:00 GMT",
    ]


def test_naive_datetimes_are_rejected():
    with pytest.raises(ValueError, match="timezone-aware"):
        next_slot(datetime(2026, 1, 1), LONDON, None, 9)


def test_parse_local_time_names_the_field():
    assert parse_local_time("2026-07-01 10:00", LONDON) == utc(2026, 7, 1, 9)
    with pytest.raises(InputError, match=r"^--start: 'next tuesday' is not a time"):
        parse_local_time("next tuesday", LONDON)


# ----------------------------------------------------------------- property

ZONES = [
    "Europe/London",
    "America/New_York",
    "Australia/Sydney",
    "Asia/Kolkata",
    "Pacific/Chatham",
    "America/Sao_Paulo",
]


@settings(max_examples=150, deadline=None)
@given(
    anchor=st.datetimes(
        min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC)
    ),
    zone=st.sampled_from(ZONES),
    send_day=st.none() | st.integers(0, 6),
    # DST switches in these zones happen between 00:00 and 04:00, so these hours always exist.
    send_hour=st.integers(8, 20),
    cadence=st.integers(1, 14),
    steps=st.integers(1, 8),
)
def test_due_times_property(anchor, zone, send_day, send_hour, cadence, steps):
    tz = ZoneInfo(zone)
    series = make_series(steps, cadence_days=cadence, send_day=send_day, send_hour=send_hour)
    due = step_due_times(series, anchor, tz)
    assert len(due) == steps
    assert due[0] >= anchor
    assert all(a < b for a, b in zip(due, due[1:], strict=False))
    for index, when in enumerate(due):
        here = when.astimezone(tz)
        assert not in_quiet_hours(here, 21, 8)
        if index == 0:
            continue
        assert (here.hour, here.minute, here.second) == (send_hour, 0, 0)
        if send_day is not None:
            assert here.weekday() == send_day
        previous_day = due[index - 1].astimezone(tz).date()
        assert (here.date() - previous_day).days >= cadence
        # ...and no later than necessary: at most a week past the earliest day.
        assert (here.date() - previous_day).days <= cadence + 7
