"""The per-recipient ledger: enqueue, claim, mark.

One row per recipient x message.  A row's life::

    queued --claim--> sending --> sent | retry | failed | suppressed | expired
    retry  --claim--> sending ...
    queued/retry --> cancelled (unsubscribe, campaign cancel) | expired (past expires_at)

Crash safety:

* ``dedupe_key`` is UNIQUE, so enqueueing twice or two workers racing never
  creates a second row for one recipient.
* ``claim`` runs in ``BEGIN IMMEDIATE`` and stamps each claimed row with a
  lease token and a lease deadline.  ``mark`` only updates rows that still
  carry the caller's token, so a stalled worker whose lease was taken over
  cannot overwrite the new owner's result.
* A row found in ``sending`` past its lease (the sender died) is counted as
  uncertain and requeued with the SAME Message-ID, so receivers can
  deduplicate.  A row that has crashed the sender ``crash_limit`` times is
  parked as ``failed`` with the error, and the campaign carries on.
* Marks are committed in batches (one transaction per claimed batch): the
  duplicates a kill can cause are bounded by the batch in flight.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from funnel.db import iso, transaction
from funnel.settings import Settings

DEFAULT_LEASE = timedelta(minutes=5)

# Priorities: lower goes first.  Series steps yield to broadcasts and webinar mail.
PRIORITY_TRANSACTIONAL = 0
PRIORITY_WEBINAR = 10
PRIORITY_BROADCAST = 30
PRIORITY_SERIES = 50


def new_message_id(settings: Settings) -> str:
    """A Message-ID minted once per row and stored, so every resend reuses it."""
    return f"<{secrets.token_hex(10)}.funnel@{settings.sender_domain}>"


@dataclass(frozen=True)
class OutboxRow:
    id: int
    dedupe_key: str
    kind: str
    subscriber_id: int | None
    campaign_id: int | None
    stream: str | None
    ref: str | None
    to_addr: str | None
    message_id: str
    attempts: int
    crashes: int
    uncertain: int
    lease_token: str | None
    expires_at: str | None
    data: dict = field(default_factory=dict)


_ROW_COLUMNS = (
    "id, dedupe_key, kind, subscriber_id, campaign_id, stream, ref, to_addr, message_id, "
    "attempts, crashes, uncertain, lease_token, expires_at, data"
)


def _row(t: tuple) -> OutboxRow:
    *head, data = t
    return OutboxRow(*head, data=json.loads(data) if data else {})


def enqueue(
    db,
    settings: Settings,
    *,
    dedupe_key: str,
    kind: str,
    subscriber_id: int | None,
    to_addr: str,
    due_at: datetime,
    now: datetime,
    stream: str | None = None,
    ref: str | None = None,
    campaign_id: int | None = None,
    priority: int = PRIORITY_SERIES,
    expires_at: datetime | None = None,
    data: dict | None = None,
) -> int | None:
    """Queue one message; returns the new row id, or None if it was already queued."""
    cur = db.execute(
        "INSERT OR IGNORE INTO outbox (dedupe_key, kind, subscriber_id, campaign_id, stream, ref, "
        "to_addr, message_id, priority, status, due_at, expires_at, data, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
        (
            dedupe_key, kind, subscriber_id, campaign_id, stream, ref, to_addr,
            new_message_id(settings), priority, iso(due_at), iso(expires_at),
            json.dumps(data) if data else None, iso(now), iso(now),
        ),
    )
    return cur.lastrowid if cur.rowcount else None


def enqueue_many(db, settings: Settings, rows: Iterable[dict], now: datetime) -> int:
    """Bulk enqueue (dicts with enqueue()'s keyword names); returns rows inserted.

    Call inside the caller's transaction; duplicates are skipped by the
    UNIQUE dedupe key.
    """
    domain = settings.sender_domain
    stamp = iso(now)

    def params():
        for r in rows:
            yield (
                r["dedupe_key"], r["kind"], r.get("subscriber_id"), r.get("campaign_id"),
                r.get("stream"), r.get("ref"), r["to_addr"],
                f"<{secrets.token_hex(10)}.funnel@{domain}>", r.get("priority", PRIORITY_SERIES),
                iso(r["due_at"]), iso(r.get("expires_at")),
                json.dumps(r["data"]) if r.get("data") else None, stamp, stamp,
            )

    before = db.conn.total_changes
    db.conn.executemany(
        "INSERT OR IGNORE INTO outbox (dedupe_key, kind, subscriber_id, campaign_id, stream, ref, "
        "to_addr, message_id, priority, status, due_at, expires_at, data, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
        params(),
    )
    return db.conn.total_changes - before


# ----------------------------------------------------------------- claim / mark
def recover_stale(db, settings: Settings, now: datetime) -> tuple[int, int]:
    """Requeue rows left in ``sending`` past their lease (their sender died).

    Returns (requeued, parked).  Each such row is counted as uncertain: it may
    or may not have reached the server.  It is resent with the same
    Message-ID; after ``crash_limit`` crashes it is parked as failed.
    """
    with transaction(db):
        stamp = iso(now)
        parked = db.execute(
            "UPDATE outbox SET status = 'failed', uncertain = uncertain + 1, crashes = crashes + 1, "
            "lease_token = NULL, lease_until = NULL, updated_at = ?, "
            "last_error = 'parked: the sender crashed while sending this message ' || (crashes + 1) || ' times' "
            "WHERE status = 'sending' AND lease_until < ? AND crashes + 1 >= ?",
            (stamp, stamp, settings.crash_limit),
        ).rowcount
        requeued = db.execute(
            "UPDATE outbox SET status = 'retry', uncertain = uncertain + 1, crashes = crashes + 1, "
            "lease_token = NULL, lease_until = NULL, due_at = ?, updated_at = ?, "
            "last_error = 'the sender stopped while this message was in flight; resending' "
            "WHERE status = 'sending' AND lease_until < ?",
            (stamp, stamp, stamp),
        ).rowcount
    return requeued, parked


def expire_due(db, now: datetime) -> int:
    """Rows past their expiry never go out (e.g. webinar mail after the start)."""
    return db.execute(
        "UPDATE outbox SET status = 'expired', updated_at = ?, lease_token = NULL, "
        "last_error = COALESCE(last_error, 'expired before it could be sent') "
        "WHERE status IN ('queued', 'retry') AND expires_at IS NOT NULL AND expires_at <= ?",
        (iso(now), iso(now)),
    ).rowcount


def claim(
    db,
    now: datetime,
    limit: int,
    *,
    lease: timedelta = DEFAULT_LEASE,
    where: str = "",
    params: Sequence = (),
) -> tuple[str, list[OutboxRow]]:
    """Claim up to ``limit`` due rows for this worker; returns (lease_token, rows).

    ``where``/``params`` let the delivery engine add a bound SQL filter (for
    example, skip paused campaigns); they are never built from user input.
    """
    token = secrets.token_hex(8)
    stamp = iso(now)
    with transaction(db):  # BEGIN IMMEDIATE: one claimer at a time
        expire_due(db, now)
        ids = [
            r[0]
            for r in db.execute(
                "SELECT id FROM outbox WHERE status IN ('queued', 'retry') AND due_at <= ? "
                f"{where} ORDER BY priority, due_at, id LIMIT ?",
                (stamp, *params, limit),
            ).fetchall()
        ]
        if not ids:
            return token, []
        marks = ",".join("?" * len(ids))
        db.execute(
            f"UPDATE outbox SET status = 'sending', lease_token = ?, lease_until = ?, "
            f"attempts = attempts + 1, updated_at = ? WHERE id IN ({marks})",
            (token, iso(now + lease), stamp, *ids),
        )
        rows = [
            _row(t)
            for t in db.execute(
                f"SELECT {_ROW_COLUMNS} FROM outbox WHERE id IN ({marks}) ORDER BY priority, due_at, id",
                ids,
            ).fetchall()
        ]
    return token, rows


@dataclass(frozen=True)
class Outcome:
    """What happened to one claimed row."""

    row_id: int
    status: str  # sent | retry | failed | suppressed | expired | cancelled
    smtp_code: int | None = None
    error: str | None = None
    retry_at: datetime | None = None
    relay: str | None = None


def mark(db, lease_token: str, outcomes: Sequence[Outcome], now: datetime) -> int:
    """Record outcomes for rows this worker still owns; returns how many were NOT owned.

    Also writes a ``sent``/``failed`` event per row for the funnel report.
    """
    stamp = iso(now)
    lost = 0
    with transaction(db):
        for o in outcomes:
            cur = db.execute(
                "UPDATE outbox SET status = ?, smtp_code = ?, last_error = ?, relay = COALESCE(?, relay), "
                "due_at = COALESCE(?, due_at), sent_at = CASE WHEN ? = 'sent' THEN ? ELSE sent_at END, "
                "lease_token = NULL, lease_until = NULL, updated_at = ? "
                "WHERE id = ? AND lease_token = ? AND status = 'sending'",
                (
                    o.status, o.smtp_code, o.error, o.relay, iso(o.retry_at), o.status, stamp,
                    stamp, o.row_id, lease_token,
                ),
            )
            if cur.rowcount == 0:
                lost += 1
                continue
            if o.status in ("sent", "failed", "expired"):
                db.execute(
                    "INSERT INTO events (at, kind, subscriber_id, ref) "
                    "SELECT ?, ?, subscriber_id, COALESCE(ref, kind) FROM outbox WHERE id = ?",
                    (stamp, o.status, o.row_id),
                )
    return lost


def release(db, lease_token: str, row_ids: Sequence[int], now: datetime) -> None:
    """Give rows back unsent (e.g. the campaign was paused mid-batch)."""
    with transaction(db):
        for rid in row_ids:
            db.execute(
                "UPDATE outbox SET status = CASE WHEN attempts > 1 THEN 'retry' ELSE 'queued' END, "
                "attempts = MAX(attempts - 1, 0), lease_token = NULL, lease_until = NULL, updated_at = ? "
                "WHERE id = ? AND lease_token = ? AND status = 'sending'",
                (iso(now), rid, lease_token),
            )


def counts(db, where: str = "", params: Sequence = ()) -> dict[str, int]:
    """Rows per state, e.g. for ``funnel campaign status``."""
    rows = db.execute(
        f"SELECT status, COUNT(*) FROM outbox {('WHERE ' + where) if where else ''} GROUP BY status",
        params,
    ).fetchall()
    return dict(rows)


def due_count(db, now: datetime) -> int:
    return db.execute(
        "SELECT COUNT(*) FROM outbox WHERE status IN ('queued', 'retry') AND due_at <= ?", (iso(now),)
    ).fetchone()[0]
