"""Reading the events log: what happened, newest first (``funnel events``).

Every signup, send, bounce, click, webinar step and admin action is a row of
``events``; this module filters it by time and kind for the CLI and the console.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime

from funnel.db import EVENT_KINDS, iso
from funnel.errors import InputError
from funnel.settings import Settings

from . import schedule

_DATE_RE = re.compile(r"(?P<day>\d{4}-\d{2}-\d{2})(?:[ T](?P<time>\d{1,2}:\d{2}))?\Z")


@dataclass(frozen=True)
class Event:
    id: int
    at: str
    kind: str
    email: str | None  # None for events without a reader, or once the reader was erased
    ref: str | None
    data: dict


def since_time(text: str, settings: Settings, now: datetime) -> datetime:
    """``--since``: a duration back from now ("24h", "7d", "2 weeks") or a date ("2026-12-01",
    "2026-12-01 09:00"), read in the clinic's zone."""
    cleaned = " ".join((text or "").split())
    if not cleaned:
        raise InputError("--since: give a duration such as 7d or a date such as 2026-12-01")
    if schedule.is_duration(cleaned):
        ahead = schedule.parse_when(schedule.offset_text(cleaned, "--since"), settings.zone, now)
        return now - (ahead - now)
    m = _DATE_RE.match(cleaned)
    if m is None:
        raise InputError(
            f"--since: {cleaned!r} is neither a duration back from now (24h, 7d, 2 weeks) nor a "
            "date (2026-12-01, or 2026-12-01 09:00 in the clinic's zone)"
        )
    return schedule.parse_when(f"{m['day']} {m['time'] or '00:00'}", settings.zone, now, "--since")


def recent(db, settings: Settings, now: datetime, *, since: str | None = None,
           kind: str | None = None, limit: int = 50) -> list[Event]:
    """The newest ``limit`` events, optionally since a time and of one kind."""
    if kind is not None and kind not in EVENT_KINDS:
        raise InputError(f"--kind: unknown event kind {kind!r}; use one of {', '.join(EVENT_KINDS)}")
    if limit < 1:
        raise InputError("--limit: give a number of events of 1 or more")
    where, params = [], []
    if since is not None:
        where.append("e.at >= ?")
        params.append(iso(since_time(since, settings, now)))
    if kind is not None:
        where.append("e.kind = ?")
        params.append(kind)
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    rows = db.execute(
        "SELECT e.id, e.at, e.kind, s.email, e.ref, e.data FROM events e "
        f"LEFT JOIN subscribers s ON s.id = e.subscriber_id {clause} "
        "ORDER BY e.at DESC, e.id DESC LIMIT ?",
        (*params, limit),
    ).fetchall()
    return [Event(i, at, k, email, ref, _data(data)) for i, at, k, email, ref, data in rows]


def _data(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"text": text}
    return value if isinstance(value, dict) else {"value": value}
