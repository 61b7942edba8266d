"""What the admin dashboard shows: activity over 7 and 30 days, outbox health, the funnel.

Counts come from the event log (one indexed range per kind, ``events(kind, at)``),
the clicks table (human clicks on tracked links; scanners' are left out) and the
outbox ledger; nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from funnel.db import iso
from funnel.settings import Settings

from . import appointments
from .report import Report, compute

#: (label, event kind) counted on the dashboard.
ACTIVITY = (
    ("Signups", "subscribed"),
    ("Confirmations", "confirmed"),
    ("Sends", "sent"),
    ("Bounces", "bounced"),
    ("Complaints", "complained"),
)
#: The activity row after the events: clicks on tracked links that campaigns/clicks.py
#: judged a person's (the first per message and link), not a link scanner's.
CLICKS = ("Clicks", "verdict = 'human'")
PERIODS = (7, 30)


@dataclass(frozen=True)
class RelayHealth:
    relay: str
    queued: int
    held: int
    retrying: int
    failed: int
    parked: int


@dataclass(frozen=True)
class Overview:
    activity: list[tuple[str, dict[int, int]]]  # (label, {days: count})
    outbox: list[RelayHealth]
    funnel: Report
    appointments: dict[int, int]  # {days: appointment requests made in the last days}
    appointments_new: int  # requests nobody has acted on yet (status new)


def activity(db, now: datetime) -> list[tuple[str, dict[int, int]]]:
    """Per kind of event (and the clicks): how many in each of the last PERIODS days,
    counted in one pass over the longest period."""
    bounds = [iso(now - timedelta(days=days)) for days in PERIODS]
    within = ", ".join("SUM(at >= ?)" for _ in PERIODS)

    def counts(source: str, where: str, *params) -> dict[int, int]:
        found = db.execute(
            f"SELECT {within} FROM {source} WHERE {where} AND at >= ? AND at <= ?",
            (*bounds, *params, min(bounds), iso(now)),
        ).fetchone()
        return {days: int(n or 0) for days, n in zip(PERIODS, found, strict=True)}

    # Events about readers only: the admin's test sends and the clinic's appointment
    # emails are logged without a subscriber and are not the list's activity.
    out = [(label, counts("events", "kind = ? AND subscriber_id IS NOT NULL", kind))
           for label, kind in ACTIVITY]
    return out + [(CLICKS[0], counts("clicks", CLICKS[1]))]


def outbox_health(db, now: datetime) -> list[RelayHealth]:
    """Per relay: waiting (queued, held by a setting), retrying, and the last 30 days'
    failures and parked rows (failed after crashing the sender ``crash_limit`` times).

    Two index reads (outbox_claim holds the waiting rows, outbox_failed the
    failures), not a pass over every row ever sent."""
    since = iso(now - timedelta(days=30))
    rows = db.execute(
        "SELECT COALESCE(relay, 'not tried yet'), "
        "SUM(status = 'queued' AND held_config IS NULL), "
        "SUM(status = 'queued' AND held_config IS NOT NULL), "
        "SUM(status = 'retry'), "
        "SUM(status = 'failed' AND COALESCE(last_error, '') NOT LIKE 'parked:%'), "
        "SUM(status = 'failed' AND last_error LIKE 'parked:%') "
        "FROM (SELECT relay, status, held_config, last_error FROM outbox "
        "WHERE status IN ('queued', 'retry') UNION ALL "
        "SELECT relay, status, held_config, last_error FROM outbox "
        "WHERE status = 'failed' AND updated_at >= ?) GROUP BY 1 ORDER BY 1",
        (since,),
    ).fetchall()
    return [RelayHealth(r[0], *(int(v or 0) for v in r[1:])) for r in rows]


def overview(db, settings: Settings, now: datetime) -> Overview:
    first = (now - timedelta(days=30)).astimezone(settings.zone).date()
    return Overview(activity(db, now), outbox_health(db, now),
                    compute(db, settings, since=first, now=now),
                    *appointments.recent_counts(db, now, PERIODS))


__all__ = ["Overview", "RelayHealth", "activity", "outbox_health", "overview"]
