"""When sends are due: send slots, drip-series timing, quiet hours, time zones.

Everything here is pure time math on aware datetimes: times go in and come out
in UTC, and a subscriber's IANA zone is applied only to decide *which* UTC
instant is "Tuesday 09:00 for this reader".  That is what lets a weekly email
stay at 09:00 local time across a daylight-saving switch (its UTC time moves
instead).

Wall-clock times that DST makes awkward are resolved one documented way:

* **Gap** (spring forward, the wall time never happens, e.g. 01:30 in London on
  2026-03-29): the slot moves to the first valid instant after the gap, i.e. the
  moment of the switch (02:00 BST = 01:00 UTC in that example).
* **Overlap** (fall back, the wall time happens twice, e.g. 01:30 in London on
  2026-10-25): the slot is the first occurrence (``fold=0``, 01:30 BST).  If
  that has already passed, the slot is on the next eligible day, never the
  second occurrence, so nobody gets "today's" email twice an hour apart.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from funnel.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from campaigns.series import Series

_TINY = timedelta(microseconds=1)


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")


def local_to_utc(day: date, hour: int, tz: ZoneInfo, minute: int = 0) -> datetime:
    """The UTC instant of wall-clock ``day hour:minute`` in ``tz``, DST-safe.

    Gap -> the instant the clocks jump (first valid instant after the missing
    wall time); overlap -> the first occurrence.  See the module docstring.
    """
    wall = datetime.combine(day, time(hour, minute), tzinfo=tz)  # fold=0: first occurrence
    first = wall.astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == wall.replace(tzinfo=None):
        return first  # the wall time exists (possibly twice; fold=0 picked the first)
    # The wall time falls in a gap.  fold=0 and fold=1 map it to two UTC instants
    # that straddle the transition; bisect for the instant the offset changes.
    other = wall.replace(fold=1).astimezone(UTC)
    lo, hi = sorted((first, other))
    offset_lo = lo.astimezone(tz).utcoffset()
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(tz).utcoffset() == offset_lo:
            lo = mid
        else:
            hi = mid
    return hi.replace(microsecond=0)


def next_slot(after_utc: datetime, tz: ZoneInfo, send_day: int | None, send_hour: int) -> datetime:
    """The first send slot strictly after ``after_utc``, as an aware UTC datetime.

    A slot is ``send_hour:00`` local wall-clock time in ``tz`` on weekday
    ``send_day`` (0 = Monday; ``None`` = any day).  DST gaps and overlaps are
    resolved as described in the module docstring.
    """
    _require_aware(after_utc, "after_utc")
    if not 0 <= send_hour <= 23:
        raise ValueError(f"send_hour must be 0-23, got {send_hour}")
    if send_day is not None and not 0 <= send_day <= 6:
        raise ValueError(f"send_day must be 0-6 (Monday=0) or None, got {send_day}")
    after_utc = after_utc.astimezone(UTC)
    day = after_utc.astimezone(tz).date()
    # Start a day early: an instant just after local midnight may still precede a
    # slot that, after gap resolution, belongs to the previous local date.
    for delta in range(-1, 9):
        candidate_day = day + timedelta(days=delta)
        if send_day is not None and candidate_day.weekday() != send_day:
            continue
        slot = local_to_utc(candidate_day, send_hour, tz)
        if slot > after_utc:
            return slot
    raise AssertionError("unreachable: a slot exists within 8 days")  # pragma: no cover


def in_quiet_hours(local: datetime, quiet_start: int, quiet_end: int) -> bool:
    """Whether a local time lies in ``[quiet_start:00, quiet_end:00)``.

    The window may wrap midnight (21 -> 8, the default).  ``quiet_start ==
    quiet_end`` means there are no quiet hours.
    """
    hour = local.hour
    if quiet_start == quiet_end:
        return False
    if quiet_start < quiet_end:
        return quiet_start <= hour < quiet_end
    return hour >= quiet_start or hour < quiet_end


def outside_quiet_hours(
    when_utc: datetime, tz: ZoneInfo, quiet_start: int = 21, quiet_end: int = 8
) -> datetime:
    """``when_utc`` itself, or the next ``quiet_end:00`` local if it is inside quiet hours."""
    _require_aware(when_utc, "when_utc")
    when_utc = when_utc.astimezone(UTC)
    if not in_quiet_hours(when_utc.astimezone(tz), quiet_start, quiet_end):
        return when_utc
    return next_slot(when_utc, tz, None, quiet_end)


def step_due(
    series: Series,
    index: int,
    previous_utc: datetime,
    tz: ZoneInfo,
    quiet_start: int = 21,
    quiet_end: int = 8,
) -> datetime:
    """When step ``index`` (0-based) is due, given the previous event in UTC.

    ``previous_utc`` is the confirmation (the anchor) for the first step and the
    previous step's due or send time for the others.  The rule:

    * **Step 1 goes out right away** (at ``previous_utc``): the reader has just
      confirmed and was told "part 1 is on its way".  Inside quiet hours it waits
      until the next ``quiet_end:00`` local instead.  If step 1 has an explicit
      ``offset_days`` it is scheduled like a later step, counted from the anchor.
    * **Later steps** go out at the first send slot (``send_day`` at
      ``send_hour:00`` local) on or after the local calendar day that is
      ``offset_days`` (or the series' ``cadence_days``) after the previous step's
      local date, and strictly after the previous step.  Counting *calendar days
      in the reader's zone* (not 24-hour periods in UTC) is deliberate: a DST
      switch must never push a weekly 09:00 email into the following week.

    A ``send_hour`` inside quiet hours would make later steps unsendable, so it is
    refused with an InputError naming the series.
    """
    _require_aware(previous_utc, "previous_utc")
    previous_utc = previous_utc.astimezone(UTC)
    step = series.steps[index]
    if index == 0 and step.offset_days is None:
        return outside_quiet_hours(previous_utc, tz, quiet_start, quiet_end)
    probe = datetime.combine(date(2000, 1, 1), time(series.send_hour))
    if in_quiet_hours(probe, quiet_start, quiet_end):
        raise InputError(
            f"series {series.slug}: send_hour {series.send_hour} falls inside quiet hours "
            f"{quiet_start:02d}:00-{quiet_end:02d}:00; choose another send_hour"
        )
    days = series.cadence_days if step.offset_days is None else step.offset_days
    earliest_day = previous_utc.astimezone(tz).date() + timedelta(days=days)
    day_start = local_to_utc(earliest_day, 0, tz)
    return next_slot(max(previous_utc, day_start - _TINY), tz, series.send_day, series.send_hour)


def step_due_times(
    series: Series,
    anchor_utc: datetime,
    tz: ZoneInfo,
    quiet_start: int = 21,
    quiet_end: int = 8,
) -> list[datetime]:
    """Due times (aware UTC) for every step of ``series`` for a reader in ``tz``.

    ``anchor_utc`` is when the reader confirmed (or was enrolled).  Each step is
    timed from the previous one by :func:`step_due` (read it for the rule): step
    1 immediately unless in quiet hours, then one per cadence on the series'
    send day and hour, in the reader's local time.
    """
    _require_aware(anchor_utc, "anchor_utc")
    times: list[datetime] = []
    previous = anchor_utc.astimezone(UTC)
    for index in range(len(series.steps)):
        previous = step_due(series, index, previous, tz, quiet_start, quiet_end)
        times.append(previous)
    return times


def parse_local_time(text: str, tz: ZoneInfo, field: str = "--start") -> datetime:
    """``"2026-11-21 10:00"`` as wall-clock time in ``tz`` -> aware UTC (DST-safe).

    Used by the doors for admin-entered times; a bad value is an InputError
    naming ``field``.
    """
    cleaned = text.strip().replace("T", " ")
    for fmt in ("%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            parsed = datetime.strptime(cleaned, fmt)
            break
        except ValueError:
            continue
    else:
        raise InputError(f'{field}: {text!r} is not a time like "2026-11-21 10:00"')
    utc = local_to_utc(parsed.date(), parsed.hour, tz, parsed.minute)
    return utc + timedelta(seconds=parsed.second)


__all__ = [
    "in_quiet_hours",
    "local_to_utc",
    "next_slot",
    "outside_quiet_hours",
    "parse_local_time",
    "step_due",
    "step_due_times",
]
