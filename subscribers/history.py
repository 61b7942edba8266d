"""A person's timeline: everything that happened to them, newest first.

Merged from the event log (signup, confirmation, streams, webinars, clicks,
bounces, admin actions ...) and the outbox ledger (each email with its state
and, once sent, the subject it had).  ``sent``, ``failed`` and ``expired``
events are left out: the outbox row of the same message says it, with more.
Reads only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from . import lifecycle

LIMIT = 500
_FROM_OUTBOX = ("sent", "failed", "expired")


@dataclass(frozen=True)
class Entry:
    at: str  # UTC ISO
    kind: str  # an event kind, or 'email'
    ref: str | None
    detail: str
    outbox_id: int | None = None  # set for emails
    status: str | None = None  # the outbox row's state, for emails
    viewable: bool = False  # a sent email: its view link works


def _detail(data: str | None) -> str:
    if not data:
        return ""
    try:
        value = json.loads(data)
    except ValueError:
        return data[:200]
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items() if v not in (None, ""))[:300]
    return str(value)[:300]


def entries(db, subscriber_id: int, limit: int = LIMIT) -> list[Entry]:
    """The timeline of one subscriber (by id: an erased person has no address)."""
    marks = ", ".join("?" for _ in _FROM_OUTBOX)
    events = [
        Entry(at, kind, ref, _detail(data))
        for at, kind, ref, data in db.execute(
            f"SELECT at, kind, ref, data FROM events WHERE subscriber_id = ? AND kind NOT IN ({marks}) "
            "ORDER BY id DESC LIMIT ?", (subscriber_id, *_FROM_OUTBOX, limit),
        ).fetchall()
    ]
    emails = [
        Entry(sent_at or updated_at or created_at, "email", ref or kind,
              subject or kind + (f" ({error})" if error and status != "sent" else ""),
              row_id, status, status == "sent")
        for row_id, kind, ref, status, created_at, updated_at, sent_at, error, subject in db.execute(
            "SELECT o.id, o.kind, o.ref, o.status, o.created_at, o.updated_at, o.sent_at, o.last_error, "
            "json_extract(vc.content, '$.subject') FROM outbox o "
            "LEFT JOIN views v ON v.outbox_id = o.id LEFT JOIN view_contents vc ON vc.id = v.content_id "
            "WHERE o.subscriber_id = ? ORDER BY o.id DESC LIMIT ?", (subscriber_id, limit),
        ).fetchall()
    ]
    return sorted(events + emails, key=lambda e: e.at, reverse=True)[:limit]


def timeline(db, email: str) -> list[Entry]:
    """The timeline of the subscriber with this address (``funnel subscribers history``)."""
    return entries(db, lifecycle.get_by_email(db, email).id)


__all__ = ["Entry", "entries", "timeline"]
