"""Wall-clock time in a zone -> the UTC instant, the one DST-safe way.

A gap (spring forward) resolves to the moment the clocks jump; an overlap
(fall back) to the first occurrence.  Pure math: no clock, no database.  It is
on the ground floor because both the schedule (``campaigns.schedule``) and the
segment filters (``subscribers.segments``, ``signed_up=`` days) need it.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo


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
