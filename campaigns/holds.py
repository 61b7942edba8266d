"""Delivery holds: the frequency cap, the webinar hold, and the claim filter.

Which mail kinds are transactional (never capped) and which yield to others
(series steps), the SQL predicates that keep a row waiting, and
:func:`hold_until`, which says why and until when a reader's next series step
must wait.  The sender applies :func:`claim_filter` inside its claim so the
rules also hold at send time; enrollment uses :func:`held_sql` and
:func:`hold_until` to postpone steps.  The time math these rules lean on
(send slots, quiet hours) is :mod:`campaigns.schedule`.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from funnel.db import iso, parse_iso
from funnel.policy import policy

from .schedule import require_aware

#: Mail the reader asked for (the opt-in) or needs for an event they registered
#: for.  It is never held back by the cap and does not count towards it: a new
#: reader who registers for a webinar must still get "part 1 is on its way".
TRANSACTIONAL_KINDS = (
    "confirm",
    "webinar_confirm",
    "webinar_reminder",
    "webinar_update",
    "webinar_cancel",
    "webinar_verify",
    "webinar_waitlist",
    "appointment_clinic",
    "appointment_ack",
)
#: Kinds that are postponed to a later send slot when the cap or a webinar
#: hold applies: drip steps yield first.  Other bulk mail (broadcasts, webinar
#: invitations, follow-ups) goes before them and only waits, in the queue,
#: while the reader already has N emails from us in the last 24 h.
DEFERRABLE_KINDS = ("series",)
CAP_WINDOW = policy().cap_window  # [holds] in policy.toml
#: Series mail pauses this long before a webinar the reader registered for.
WEBINAR_HOLD = policy().webinar_hold


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join("?" * len(values)) + ")"


def _cap_count_sql(row: str) -> tuple[str, list]:
    """SQL counting the capped mail that weighs on outbox row ``row`` (an alias).

    Counted: capped mail sent in the last 24 h, mail being sent right now, and
    capped mail due now that goes before ``row`` (lower priority number, or the
    same priority and a lower id), skipping rows of paused campaigns.
    Parameters are appended in order: (*TRANSACTIONAL_KINDS, since, now, now).
    """
    sql = (
        f"(SELECT COUNT(*) FROM outbox o2 WHERE o2.subscriber_id = {row}.subscriber_id "
        f"AND o2.id != {row}.id AND o2.kind NOT IN {_in(TRANSACTIONAL_KINDS)} AND ("
        "(o2.status = 'sent' AND o2.sent_at > ?) OR o2.status = 'sending' "
        "OR (o2.status IN ('queued', 'retry') AND o2.due_at <= ? "
        "AND (o2.expires_at IS NULL OR o2.expires_at > ?) "
        f"AND (o2.priority < {row}.priority OR (o2.priority = {row}.priority AND o2.id < {row}.id)) "
        "AND (o2.campaign_id IS NULL OR o2.campaign_id NOT IN "
        "(SELECT id FROM campaigns WHERE status = 'paused')))))"
    )
    return sql, list(TRANSACTIONAL_KINDS)


def _webinar_hold_sql(row: str) -> str:
    """EXISTS: the reader is registered for a webinar starting within 24 h (or running).

    Parameters: (hold_until, now).
    """
    return (
        "EXISTS (SELECT 1 FROM registrations r JOIN webinars w ON w.id = r.webinar_id "
        f"WHERE r.subscriber_id = {row}.subscriber_id AND r.status = 'registered' "
        "AND w.status = 'scheduled' AND w.starts_at <= ? "
        "AND julianday(w.starts_at) + w.duration_minutes / 1440.0 > julianday(?))"
    )


def held_sql(frequency_cap: int, now: datetime, row: str = "outbox") -> tuple[str, list]:
    """A bound SQL predicate, true when deferrable row ``row`` must wait now."""
    require_aware(now, "now")
    kinds = _in(DEFERRABLE_KINDS)
    parts = [_webinar_hold_sql(row)]
    params: list = [iso(now + WEBINAR_HOLD), iso(now)]
    if frequency_cap > 0:
        count_sql, count_params = _cap_count_sql(row)
        parts.append(f"{count_sql} >= ?")
        params += [*count_params, iso(now - CAP_WINDOW), iso(now), iso(now), frequency_cap]
    sql = f"({row}.kind IN {kinds} AND ({' OR '.join(parts)}))"
    return sql, [*DEFERRABLE_KINDS, *params]


def capped_sql(frequency_cap: int, now: datetime, row: str = "outbox") -> tuple[str, list]:
    """A bound SQL predicate, true when non-series bulk row ``row`` must wait for the cap.

    No reader gets more than ``frequency_cap`` emails from us in a rolling
    24 h: a broadcast or invitation over the cap stays queued until the
    window frees (it keeps its own expiry).
    """
    require_aware(now, "now")
    if frequency_cap <= 0:
        return "0", []
    count_sql, count_params = _cap_count_sql(row)
    sql = (
        f"({row}.kind NOT IN {_in(TRANSACTIONAL_KINDS)} AND {row}.kind NOT IN {_in(DEFERRABLE_KINDS)} "
        f"AND {count_sql} >= ?)"
    )
    params = [*TRANSACTIONAL_KINDS, *DEFERRABLE_KINDS, *count_params,
              iso(now - CAP_WINDOW), iso(now), iso(now), frequency_cap]  # fmt: skip
    return sql, params


def claim_filter(settings, now: datetime) -> tuple[str, tuple]:
    """The ``where``/``params`` the sender passes to ``outbox.claim``.

    Keeps back rows of paused campaigns (pausing is one UPDATE of the campaign
    row: nothing to undo after a crash, and resuming continues exactly where
    the run stopped) and series steps that the frequency cap or a webinar hold
    make wait.  Evaluated inside claim's BEGIN IMMEDIATE, so two workers see
    each other's in-flight rows.
    """
    held, params = held_sql(settings.frequency_cap, now)
    capped, capped_params = capped_sql(settings.frequency_cap, now)
    where = (
        " AND (campaign_id IS NULL OR campaign_id NOT IN "
        "(SELECT id FROM campaigns WHERE status IN ('paused', 'cancelled')))"
        f" AND NOT {held} AND NOT {capped}"
    )
    return where, (*params, *capped_params)


def hold_until(
    db,
    settings,
    subscriber_id: int,
    now: datetime,
    *,
    row_id: int | None = None,
    priority: int | None = None,
    reserved: int = 0,
) -> tuple[str, datetime] | None:
    """Why and until when a deferrable message for this reader must wait, or None.

    ``row_id``/``priority`` identify an existing outbox row (so rows due ahead
    of it count and it doesn't count itself); without them the question is
    "may a new series step go now?", and every capped row already due counts.
    The time returned is when the hold lifts: the end of the webinar, or the
    moment the rolling 24 h window has room again.  ``reserved`` counts mail
    due later today that this message must leave room for (a daily course
    yields to the weekly series); when only those fill the cap, the hold lifts
    at once and the caller moves the step to its next day.
    """
    webinars = db.execute(
        "SELECT w.starts_at, w.duration_minutes FROM registrations r "
        "JOIN webinars w ON w.id = r.webinar_id WHERE r.subscriber_id = ? "
        "AND r.status = 'registered' AND w.status = 'scheduled' AND w.starts_at <= ?",
        (subscriber_id, iso(now + WEBINAR_HOLD)),
    ).fetchall()
    sent: list[datetime] = []
    ahead = 0
    if settings.frequency_cap > 0:
        kinds = _in(TRANSACTIONAL_KINDS)
        sent = [
            parse_iso(r[0])
            for r in db.execute(
                f"SELECT sent_at FROM outbox WHERE subscriber_id = ? AND status = 'sent' "
                f"AND sent_at > ? AND kind NOT IN {kinds}",
                (subscriber_id, iso(now - CAP_WINDOW), *TRANSACTIONAL_KINDS),
            ).fetchall()
        ]
        ahead_sql = (
            f"SELECT COUNT(*) FROM outbox WHERE subscriber_id = ? AND kind NOT IN {kinds} "
            "AND (status = 'sending' OR (status IN ('queued', 'retry') AND due_at <= ? "
            "AND (expires_at IS NULL OR expires_at > ?) "
            "AND (campaign_id IS NULL OR campaign_id NOT IN "
            "(SELECT id FROM campaigns WHERE status = 'paused'))"
        )
        params: list = [subscriber_id, *TRANSACTIONAL_KINDS, iso(now), iso(now)]
        if row_id is not None:
            ahead_sql += " AND (priority < ? OR (priority = ? AND id < ?))"
            params += [priority, priority, row_id]
        ahead_sql += "))"
        if row_id is not None:
            ahead_sql += " AND id != ?"
            params.append(row_id)
        ahead = db.execute(ahead_sql, params).fetchone()[0]
    return decide_hold(settings.frequency_cap, now, webinars, sent, ahead, reserved)


class HoldFacts:
    """What :func:`decide_hold` needs about one reader, fetched for many at once."""

    __slots__ = ("webinars", "sent", "ahead")

    def __init__(self) -> None:
        self.webinars: list[tuple[str, int]] = []  # (starts_at, duration_minutes)
        self.sent: list[datetime] = []  # capped mail sent in the window
        self.ahead = 0  # capped mail being sent or due now


def hold_facts(db, settings, subscriber_ids: list[int], now: datetime) -> dict[int, HoldFacts]:
    """:func:`hold_until`'s inputs for a new series step of each reader, in two queries.

    The same predicates as :func:`hold_until` without ``row_id`` (the scheduler
    asks for many readers at once; tests/test_series_bulk.py compares them).
    """
    facts = {sid: HoldFacts() for sid in subscriber_ids}
    ids = json.dumps(list(facts))
    for sid, starts, minutes in db.execute(
        "SELECT r.subscriber_id, w.starts_at, w.duration_minutes FROM registrations r "
        "JOIN webinars w ON w.id = r.webinar_id WHERE r.subscriber_id IN "
        "(SELECT value FROM json_each(?)) AND r.status = 'registered' "
        "AND w.status = 'scheduled' AND w.starts_at <= ?",
        (ids, iso(now + WEBINAR_HOLD)),
    ):
        facts[sid].webinars.append((starts, minutes))
    if settings.frequency_cap <= 0:
        return facts
    kinds = _in(TRANSACTIONAL_KINDS)
    # Two queries, as in hold_until, so each reads only its index range: the sent
    # mail of the window (not a reader's whole history) and the unsent rows.
    for sid, sent_at in db.execute(
        "SELECT subscriber_id, sent_at FROM outbox INDEXED BY outbox_sent_at "
        "WHERE subscriber_id IN (SELECT value FROM json_each(?)) AND status = 'sent' "
        f"AND sent_at > ? AND kind NOT IN {kinds}",
        (ids, iso(now - CAP_WINDOW), *TRANSACTIONAL_KINDS),
    ):
        facts[sid].sent.append(parse_iso(sent_at))
    stamp = iso(now)
    for sid, ahead in db.execute(
        "SELECT subscriber_id, COUNT(*) FROM outbox WHERE subscriber_id IN "
        "(SELECT value FROM json_each(?)) AND status IN ('sending', 'queued', 'retry') "
        f"AND kind NOT IN {kinds} AND (status = 'sending' OR (due_at <= ? "
        "AND (expires_at IS NULL OR expires_at > ?) "
        "AND (campaign_id IS NULL OR campaign_id NOT IN "
        "(SELECT id FROM campaigns WHERE status = 'paused')))) GROUP BY subscriber_id",
        (ids, *TRANSACTIONAL_KINDS, stamp, stamp),
    ):
        facts[sid].ahead = ahead
    return facts


def decide_hold(
    cap: int,
    now: datetime,
    webinars: list[tuple[str, int]],
    sent: list[datetime],
    ahead: int,
    reserved: int = 0,
) -> tuple[str, datetime] | None:
    """The rule of :func:`hold_until`, given what it read about the reader."""
    holds: list[tuple[str, datetime]] = []
    for starts, minutes in webinars:
        end = parse_iso(starts) + timedelta(minutes=minutes)
        if end > now:
            holds.append(("webinar", end))
    if cap > 0:
        times = sorted(sent) + [now] * ahead
        if len(times) >= cap:
            # The window has room again once all but cap-1 of these are > 24 h old.
            frees = times[len(times) - cap] + CAP_WINDOW + timedelta(seconds=1)
            holds.append(("frequency cap", max(frees, now + timedelta(seconds=1))))
        elif len(times) + reserved >= cap:
            holds.append(("frequency cap", now + timedelta(seconds=1)))
    if not holds:
        return None
    return max(holds, key=lambda h: h[1])
