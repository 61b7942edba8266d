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

import re
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from funnel.errors import InputError
from funnel.localtime import local_to_utc

if TYPE_CHECKING:  # pragma: no cover
    from campaigns.series import Series

_TINY = timedelta(microseconds=1)


def require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")


def next_slot(after_utc: datetime, tz: ZoneInfo, send_day: int | None, send_hour: int) -> datetime:
    """The first send slot strictly after ``after_utc``, as an aware UTC datetime.

    A slot is ``send_hour:00`` local wall-clock time in ``tz`` on weekday
    ``send_day`` (0 = Monday; ``None`` = any day).  DST gaps and overlaps are
    resolved as described in the module docstring.
    """
    require_aware(after_utc, "after_utc")
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
    require_aware(when_utc, "when_utc")
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
    require_aware(previous_utc, "previous_utc")
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
    require_aware(anchor_utc, "anchor_utc")
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
    if utc.astimezone(tz).replace(tzinfo=None, second=0) != parsed.replace(second=0):
        # An admin-entered time in the spring-forward gap: say so rather than
        # silently moving an event (send times use local_to_utc's rule instead).
        raise InputError(
            f"{field}: {text.strip()} does not exist in {tz.key} (the clocks go forward then); "
            "pick a time outside the switch"
        )
    return utc + timedelta(seconds=parsed.second)


#: The forms :func:`parse_when` accepts, for error messages and help texts.
WHEN_FORMS = (
    '"YYYY-MM-DD HH:MM", "today 18:00", "tomorrow 09:00", "monday 09:00", '
    '"in 2 hours", "+30m" or "in 14 days 18:00"'
)
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_UNITS = {
    "m": "minutes", "minute": "minutes", "minutes": "minutes",
    "h": "hours", "hour": "hours", "hours": "hours",
    "d": "days", "day": "days", "days": "days",
    "w": "weeks", "week": "weeks", "weeks": "weeks",
}  # fmt: skip
_HHMM = r"(?P<hh>\d{1,2}):(?P<mm>\d{2})"
_ABSOLUTE_RE = re.compile(r"(?P<date>\d{4}-\d{2}-\d{2}) " + _HHMM + r"\Z")
_DAYWORD_RE = re.compile(
    r"(?P<day>today|tomorrow|" + "|".join(_WEEKDAYS) + r") " + _HHMM + r"\Z"
)
_OFFSET_RE = re.compile(
    r"(?:in (?P<n1>\d{1,6}) (?P<u1>minutes?|hours?|days?|weeks?)"
    r"|\+(?P<n2>\d{1,6})(?P<u2>[mhdw]))"
    r"(?: " + _HHMM + r")?\Z"
)
#: ``--in`` values: "2h", "90m", "2 hours".
_DURATION_RE = re.compile(r"(?:(?P<n2>\d{1,6})(?P<u2>[mhdw])|(?P<n1>\d{1,6}) ?(?P<u1>minutes?|hours?|days?|weeks?))\Z")


def _bad_when(text: str, field: str) -> InputError:
    return InputError(f"{field}: {text.strip()!r} is not a time; use {WHEN_FORMS}")


def _wall(day: date, hh: str, mm: str, tz: ZoneInfo, text: str, field: str) -> datetime:
    """Wall-clock ``day hh:mm`` in ``tz`` -> UTC, refusing times the clocks skip."""
    hour, minute = int(hh), int(mm)
    if hour > 23 or minute > 59:
        raise _bad_when(text, field)
    utc = local_to_utc(day, hour, tz, minute)
    back = utc.astimezone(tz)
    if (back.date(), back.hour, back.minute) != (day, hour, minute):
        raise InputError(
            f"{field}: {day:%Y-%m-%d} {hour:02d}:{minute:02d} does not exist in {tz.key} "
            "(the clocks go forward then); pick a time outside the switch"
        )
    return utc


def parse_when(text: str, tz: ZoneInfo, now: datetime, field: str = "--at") -> datetime:
    """An admin-entered time -> aware UTC.  Pure: the caller passes ``now``.

    Accepted (case-insensitive; wall-clock times are in ``tz``):

    * ``2026-12-01 09:00``: that wall-clock time;
    * ``today 18:00`` / ``tomorrow 09:00``: that time on today's / tomorrow's
      date in ``tz`` (``today`` may be earlier than now; callers that need a
      future time check it);
    * ``monday 09:00`` (any weekday name): the next time it is that weekday at
      that time, i.e. today if the time is still ahead, otherwise in 1-7 days;
    * ``in N minutes|hours|days|weeks`` or ``+Nm|h|d|w``: minutes and hours
      are elapsed time from ``now``; days and weeks are calendar days in
      ``tz``, at the same wall-clock time, or at a trailing ``HH:MM``
      (``in 14 days 18:00``, ``+2w 09:00``).

    An explicit wall-clock time in the spring-forward gap is refused (it never
    happens); anything else is an InputError naming ``field`` and listing
    the forms.
    """
    require_aware(now, "now")
    cleaned = " ".join(text.split()).lower()
    local_now = now.astimezone(tz)
    try:
        if m := _ABSOLUTE_RE.match(cleaned):
            try:
                day = date.fromisoformat(m["date"])
            except ValueError:
                raise _bad_when(text, field) from None
            return _wall(day, m["hh"], m["mm"], tz, text, field)
        if m := _DAYWORD_RE.match(cleaned):
            word, today = m["day"], local_now.date()
            if word in ("today", "tomorrow"):
                day = today + timedelta(days=0 if word == "today" else 1)
                return _wall(day, m["hh"], m["mm"], tz, text, field)
            ahead = (_WEEKDAYS.index(word) - today.weekday()) % 7
            when = _wall(today + timedelta(days=ahead), m["hh"], m["mm"], tz, text, field)
            if when <= now:  # today is that weekday and the time has passed
                when = _wall(today + timedelta(days=ahead + 7), m["hh"], m["mm"], tz, text, field)
            return when
        if m := _OFFSET_RE.match(cleaned):
            count = int(m["n1"] or m["n2"])
            unit = _UNITS[m["u1"] or m["u2"]]
            if unit in ("minutes", "hours"):
                if m["hh"] is not None:  # "in 2 hours 18:00" says two different things
                    raise _bad_when(text, field)
                return now.astimezone(UTC) + timedelta(**{unit: count})
            day = local_now.date() + timedelta(days=count * (7 if unit == "weeks" else 1))
            if m["hh"] is not None:
                return _wall(day, m["hh"], m["mm"], tz, text, field)
            # Same wall-clock time on that day (a gap moves it to the switch).
            wall = local_now.replace(tzinfo=None)
            return local_to_utc(day, wall.hour, tz, wall.minute) + timedelta(
                seconds=wall.second, microseconds=wall.microsecond
            )
    except OverflowError:
        raise InputError(f"{field}: {text.strip()!r} is too far in the future") from None
    raise _bad_when(text, field)


def is_weekday_form(text: str) -> bool:
    """Whether ``text`` is a "<weekday> HH:MM" time (a standing weekly slot)."""
    m = _DAYWORD_RE.match(" ".join(text.split()).lower())
    return bool(m) and m["day"] in _WEEKDAYS


def is_relative(text: str) -> bool:
    """Whether ``text`` is one of :func:`parse_when`'s forms counted from now."""
    return not _ABSOLUTE_RE.match(" ".join(text.split()).lower())


def is_duration(value: str) -> bool:
    """Whether ``value`` is a bare duration such as "2h", "3d" or "90 minutes"."""
    return bool(_DURATION_RE.match(" ".join(value.split()).lower()))


def offset_text(value: str, field: str = "--in") -> str:
    """``--in 2h`` / ``--in "90 minutes"`` -> the :func:`parse_when` form ``+2h`` / ``in 90 minutes``."""
    cleaned = " ".join(value.split()).lower()
    m = _DURATION_RE.match(cleaned)
    if not m:
        raise InputError(
            f"{field}: {value.strip()!r} is not a duration; use a number and a unit, "
            'e.g. "2h", "90m", "3d", "1w" or "2 hours"'
        )
    if m["n2"]:
        return f"+{m['n2']}{m['u2']}"
    return f"in {m['n1']} {m['u1']}"


def require_future(when: datetime, now: datetime, tz: ZoneInfo, field: str) -> datetime:
    """``when`` itself, or an InputError naming ``field`` if it has already passed."""
    if when < now:
        raise InputError(
            f"{field}: {when.astimezone(tz):%Y-%m-%d %H:%M} {tz.key} is in the past; "
            "give a time from now on"
        )
    return when


def postponed_due(
    reason: str,
    until: datetime,
    now: datetime,
    tz: ZoneInfo,
    send_hour: int,
    quiet_start: int = 21,
    quiet_end: int = 8,
) -> datetime:
    """When a held series step goes instead.

    After a webinar: the next ``send_hour`` slot after it ends.  For the cap:
    the next day's ``send_hour`` slot, or later if the 24 h window is still
    full then.  Never inside quiet hours.
    """
    if reason == "webinar":
        due = next_slot(until, tz, None, send_hour)
    else:
        due = max(next_slot(now, tz, None, send_hour), until)
    return outside_quiet_hours(due, tz, quiet_start, quiet_end)


__all__ = [
    "postponed_due",
    "in_quiet_hours",
    "next_slot",
    "outside_quiet_hours",
    "parse_local_time",
    "parse_when",
    "is_relative",
    "is_weekday_form",
    "offset_text",
    "require_future",
    "WHEN_FORMS",
    "step_due",
    "step_due_times",
]
