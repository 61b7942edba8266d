"""The per-recipient ledger: enqueue, claim, mark.

One row per recipient x message.  A row's life::

    queued --claim--> sending --> sent | retry | failed | suppressed | expired
    retry  --claim--> sending ...
    queued/retry --> cancelled (unsubscribe, campaign cancel) | expired (past expires_at)

Crash safety:

* ``dedupe_key`` is UNIQUE, so enqueueing twice or two workers racing never
  creates a second row for one recipient.
* ``claim`` runs in ``BEGIN IMMEDIATE`` and stamps each claimed row with a
  lease token, a lease deadline and the owner ("host:pid:start").  ``mark``
  only updates rows that still carry the caller's token, so a stalled worker
  whose lease was taken over cannot overwrite the new owner's result.
* A row found in ``sending`` whose sender is gone is counted as uncertain and
  requeued with the SAME Message-ID, so receivers can deduplicate.  "Gone"
  means either the lease ran out (any host) or -- so that a plain restart of
  ``funnel send`` does not wait out a 5-minute lease -- the owning process is
  on this host and no longer alive (see :func:`owner_alive`).
* A row that has crashed the sender ``crash_limit`` times is parked as
  ``failed`` with the error, and the campaign carries on.  The sender resends
  recovered rows one per claim, so a poison message crashes alone and only
  its own counter climbs (campaigns/sender.py).
* Marks are committed in batches (one transaction per claimed batch): the
  duplicates a kill can cause are bounded by the batch in flight.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache

from funnel.db import iso, transaction
from funnel.policy import policy
from funnel.settings import Settings

DEFAULT_LEASE = timedelta(minutes=5)

# Priorities: lower goes first.  Series steps yield to broadcasts and webinar
# mail.  The values are data ([priorities] in funnel/policy.toml), read once.
PRIORITY_TRANSACTIONAL = policy().priorities["transactional"]
PRIORITY_WEBINAR = policy().priorities["webinar"]
PRIORITY_BROADCAST = policy().priorities["broadcast"]
PRIORITY_SERIES = policy().priorities["series"]


def new_message_id(settings: Settings, now: datetime) -> str:
    """A Message-ID minted once per row and stored, so every resend reuses it."""
    return _mint_message_id(settings.sender_domain, _id_prefix(now))


def _id_prefix(now: datetime) -> str:
    """The queueing second in hex, first in the Message-ID.  The UNIQUE index on
    message_id then takes a bulk enqueue's rows in one narrow key range, instead
    of one random page each across millions of rows (a page read back and a page
    written per row once the index outgrows the cache)."""
    return f"{int(now.timestamp()):x}"


def _reseed() -> None:
    """After the second, a per-process sequence number (from a random start, fresh in
    a forked child), so that one process's rows of one second also arrive at the
    index in ascending order.  With the second alone, the 300,000 rows of one
    scheduler pass went to random places among each other: every 5,000-row commit
    wrote thousands of that index's pages again (bench/README.md, "One Message-ID
    range per pass").  The 80 random bits after it keep the ID unique and
    unguessable, as before."""
    global _SEQ
    _SEQ = itertools.count(secrets.randbits(32))


_reseed()
os.register_at_fork(after_in_child=_reseed)


def _mint_message_id(domain: str, prefix: str) -> str:
    return f"<{prefix}.{next(_SEQ) & 0xFFFFFFFF:08x}.{secrets.token_hex(10)}.funnel@{domain}>"


#: The priorities in use among unsent rows, one index seek each (a recursive CTE
#: walking ``outbox_claim (priority, due_at, id)`` with MIN).  ``priority IN
#: DUE_PRIORITIES AND due_at <= ?`` lets a due_at range query seek that index
#: per priority: the separate (due_at, priority) index it used to need doubled
#: the index writes of every enqueue, claim and mark (migration 0031).
DUE_PRIORITIES = (
    "(WITH RECURSIVE p(v) AS (SELECT MIN(priority) FROM outbox WHERE status IN ('queued', 'retry') "
    "UNION ALL SELECT (SELECT MIN(priority) FROM outbox WHERE status IN ('queued', 'retry') "
    "AND priority > v) FROM p WHERE v IS NOT NULL) SELECT v FROM p)"
)


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
    created_at: str | None = None


_ROW_COLUMNS = (
    "id, dedupe_key, kind, subscriber_id, campaign_id, stream, ref, to_addr, message_id, "
    "attempts, crashes, uncertain, lease_token, expires_at, data, created_at"
)


def _row(t: tuple) -> OutboxRow:
    *head, data, created_at = t
    return OutboxRow(*head, data=json.loads(data) if data else {}, created_at=created_at)


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
    """Queue one message; returns the new row id, or None if it was already queued.

    Without ``expires_at`` a row that keeps failing temporarily is given up
    ``settings.newsletter_expiry_hours`` after it was queued (the sender
    applies that default when it schedules a retry).
    """
    cur = db.execute(
        "INSERT OR IGNORE INTO outbox (dedupe_key, kind, subscriber_id, campaign_id, stream, ref, "
        "to_addr, message_id, priority, status, due_at, expires_at, data, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
        (
            dedupe_key, kind, subscriber_id, campaign_id, stream, ref, to_addr,
            new_message_id(settings, now), priority, iso(due_at), iso(expires_at),
            json.dumps(data) if data else None, iso(now), iso(now),
        ),
    )  # fmt: skip
    return cur.lastrowid if cur.rowcount else None


def enqueue_many(db, settings: Settings, rows: Iterable[dict], now: datetime) -> int:
    """Bulk enqueue (dicts with enqueue()'s keyword names); returns rows inserted.

    Call inside the caller's transaction; duplicates are skipped by the
    UNIQUE dedupe key.  ``rows`` may be a generator: nothing is held in memory.
    """
    stamp = iso(now)
    domain, prefix = settings.sender_domain, _id_prefix(now)
    times: dict = {}  # bulk rows share a few times: format each once

    def when(dt: datetime | None) -> str | None:
        if dt not in times:
            times[dt] = iso(dt)
        return times[dt]

    texts: dict = {}  # ...and a few data payloads (a series step's): encode each once

    def encoded(data: dict | None) -> str | None:
        if not data:
            return None
        try:
            # The items in order, with their types (1, 1.0 and True are equal keys
            # but not the same JSON): the same key always encodes to the same text.
            key = tuple((k, v.__class__, v) for k, v in data.items())
            text = texts.get(key)
        except TypeError:  # a list or dict inside: not hashable, encode it every time
            return json.dumps(data)
        if text is None:
            text = texts[key] = json.dumps(data)
        return text

    def params():
        for r in rows:
            yield (
                r["dedupe_key"], r["kind"], r.get("subscriber_id"), r.get("campaign_id"),
                r.get("stream"), r.get("ref"), r["to_addr"],
                _mint_message_id(domain, prefix), r.get("priority", PRIORITY_SERIES),
                when(r["due_at"]), when(r.get("expires_at")), encoded(r.get("data")), stamp, stamp,
            )  # fmt: skip

    before = db.conn.total_changes
    db.conn.executemany(
        "INSERT OR IGNORE INTO outbox (dedupe_key, kind, subscriber_id, campaign_id, stream, ref, "
        "to_addr, message_id, priority, status, due_at, expires_at, data, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
        params(),
    )
    return db.conn.total_changes - before


# ----------------------------------------------------------------- lease owners
@cache
def _process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), or "" elsewhere.

    Stored with the pid so that a recycled pid is not mistaken for the
    original owner.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return ""
    # Field 2 (comm) may contain spaces and parentheses: split after the last ")".
    fields = stat[stat.rfind(b")") + 2 :].split()
    return fields[19].decode() if len(fields) > 19 else ""


def this_owner() -> str:
    """Who holds a lease: ``host:pid:start``."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_process_start(pid)}"


def owner_alive(owner: str | None) -> bool:
    """False only when we can tell for sure that the lease owner has died.

    An owner on another host, an unreadable owner, a live process and a pid we
    may not signal all count as alive: those rows wait for their lease to run
    out, which is always safe.  A zombie (dead, not yet reaped) counts as dead.
    """
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return True
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return True  # no /proc: trust kill()
    fields = stat[stat.rfind(b")") + 2 :].split()
    if fields and fields[0] == b"Z":
        return False
    if start and len(fields) > 19 and fields[19].decode() != start:
        return False  # the pid was recycled by another process
    return True


# ----------------------------------------------------------------- claim / mark
@dataclass(frozen=True)
class Recovery:
    requeued: list[int]
    parked: list[int]


def recover(
    db, settings: Settings, now: datetime, *, alive: Callable[[str | None], bool] = owner_alive
) -> Recovery:
    """Requeue rows left in ``sending`` by a sender that is gone; returns their ids.

    Each such row is counted as uncertain: it may or may not have reached the
    server.  It is resent with the same Message-ID; after ``crash_limit``
    crashes it is parked as failed.
    """
    stamp = iso(now)
    with transaction(db):
        stale: list[int] = []
        for rid, until, owner in db.execute(
            "SELECT id, lease_until, lease_owner FROM outbox WHERE status = 'sending'"
        ).fetchall():
            if until is None or until < stamp or not alive(owner):
                stale.append(rid)
        if not stale:
            return Recovery([], [])
        marks = ",".join("?" * len(stale))
        parked = [
            r[0]
            for r in db.execute(
                f"SELECT id FROM outbox WHERE id IN ({marks}) AND crashes + 1 >= ?",
                (*stale, settings.crash_limit),
            ).fetchall()
        ]
        db.execute(
            "UPDATE outbox SET status = CASE WHEN crashes + 1 >= ? THEN 'failed' ELSE 'retry' END, "
            "last_error = CASE WHEN crashes + 1 >= ? "
            "THEN 'parked: the sender crashed while sending this message ' || (crashes + 1) || ' times' "
            "ELSE 'the sender stopped while this message was in flight; resending' END, "
            "uncertain = uncertain + 1, crashes = crashes + 1, due_at = ?, updated_at = ?, "
            f"lease_token = NULL, lease_until = NULL, lease_owner = NULL WHERE id IN ({marks})",
            (settings.crash_limit, settings.crash_limit, stamp, stamp, *stale),
        )
        if parked:
            db.conn.executemany(
                "INSERT INTO events (at, kind, subscriber_id, ref) "
                "SELECT ?, 'failed', subscriber_id, COALESCE(ref, kind) FROM outbox WHERE id = ?",
                [(stamp, rid) for rid in parked],
            )
    parked_set = set(parked)
    return Recovery([r for r in stale if r not in parked_set], parked)


def recover_stale(
    db, settings: Settings, now: datetime, *, alive: Callable[[str | None], bool] = owner_alive
) -> tuple[int, int]:
    """Like :func:`recover`, returning (requeued, parked) counts."""
    r = recover(db, settings, now, alive=alive)
    return len(r.requeued), len(r.parked)


def expire_due(db, now: datetime) -> int:
    """Rows past their expiry never go out (e.g. webinar mail after the start).

    A row held for a configuration error is not expired by the delay the
    admin takes to fix it, except webinar mail, whose expiry is the event's
    own time (a reminder after the start is pointless).
    """
    return db.execute(
        "UPDATE outbox SET status = 'expired', updated_at = ?, lease_token = NULL, "
        "last_error = COALESCE(last_error, 'expired before it could be sent') "
        "WHERE status IN ('queued', 'retry') AND expires_at IS NOT NULL AND expires_at <= ? "
        "AND (held_config IS NULL OR kind LIKE 'webinar%')",
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
    owner: str | None = None,
) -> tuple[str, list[OutboxRow]]:
    """Claim up to ``limit`` due rows for this worker; returns (lease_token, rows).

    ``where``/``params`` let the delivery engine add a bound SQL filter (for
    example, skip paused campaigns); they are never built from user input.
    ``owner`` defaults to this process (:func:`this_owner`).
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
            f"lease_owner = ?, attempts = attempts + 1, updated_at = ? WHERE id IN ({marks})",
            (token, iso(now + lease), owner or this_owner(), stamp, *ids),
        )
        rows = [
            _row(t)
            for t in db.execute(
                f"SELECT {_ROW_COLUMNS} FROM outbox WHERE id IN ({marks}) "
                "ORDER BY priority, due_at, id",
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
    crashed: bool = False  # building it raised an unexpected exception
    #: status 'queued' with this set: held for a configuration error under the
    #: configuration with this fingerprint (campaigns/sender.py); not an attempt
    held_config: str | None = None


_FINAL_EVENTS = ("sent", "failed", "expired")


def mark_owned(db, lease_token: str, outcomes: Sequence[Outcome], now: datetime) -> list[int]:
    """Record outcomes for rows this worker still owns; returns the ids it did NOT own.

    One transaction (a savepoint inside the caller's), with ``executemany``:
    the ledger write per batch costs one commit, not one per message.
    """
    stamp = iso(now)
    with transaction(db):
        owned = {
            r[0]
            for r in db.execute(
                "SELECT id FROM outbox WHERE status = 'sending' AND lease_token = ?", (lease_token,)
            ).fetchall()
        }
        mine = [o for o in outcomes if o.row_id in owned]
        db.conn.executemany(
            "UPDATE outbox SET status = ?, smtp_code = ?, last_error = ?, "
            "relay = COALESCE(?, relay), due_at = COALESCE(?, due_at), "
            "sent_at = CASE WHEN ? = 'sent' THEN ? ELSE sent_at END, crashes = crashes + ?, "
            "held_config = ?, attempts = attempts - ?, "
            "lease_token = NULL, lease_until = NULL, lease_owner = NULL, updated_at = ? "
            "WHERE id = ? AND lease_token = ?",
            [
                (
                    o.status, o.smtp_code, o.error, o.relay, iso(o.retry_at), o.status, stamp,
                    int(o.crashed), o.held_config, int(o.held_config is not None), stamp,
                    o.row_id, lease_token,
                )
                for o in mine
            ],
        )  # fmt: skip
        # One statement for the batch, not executemany: see db.log_events for why.
        db.conn.execute(
            "INSERT INTO events (at, kind, subscriber_id, ref) "
            "SELECT ?, json_extract(j.value, '$[1]'), o.subscriber_id, COALESCE(o.ref, o.kind) "
            "FROM json_each(?) j CROSS JOIN outbox o ON o.id = json_extract(j.value, '$[0]') "
            "ORDER BY j.key",
            (stamp, json.dumps([(o.row_id, o.status) for o in mine if o.status in _FINAL_EVENTS])),
        )
    return [o.row_id for o in outcomes if o.row_id not in owned]


def mark(db, lease_token: str, outcomes: Sequence[Outcome], now: datetime) -> int:
    """Record outcomes for rows this worker still owns; returns how many were NOT owned.

    Also writes a ``sent``/``failed``/``expired`` event per row for the funnel report.
    """
    return len(mark_owned(db, lease_token, outcomes, now))


def release(db, lease_token: str, row_ids: Sequence[int], now: datetime) -> None:
    """Give rows back unsent (e.g. the relays are at their limit): no attempt is counted."""
    with transaction(db):
        db.conn.executemany(
            "UPDATE outbox SET status = CASE WHEN attempts > 1 THEN 'retry' ELSE 'queued' END, "
            "attempts = MAX(attempts - 1, 0), lease_token = NULL, lease_until = NULL, "
            "lease_owner = NULL, updated_at = ? "
            "WHERE id = ? AND lease_token = ? AND status = 'sending'",
            [(iso(now), rid, lease_token) for rid in row_ids],
        )


def sent_via(db, relay: str, since: datetime) -> int:
    """Messages the ledger says went out through ``relay`` since ``since``.

    The hourly/daily relay windows are counted here, so they survive restarts
    and see what other workers sent (index ``outbox_relay_sent``).
    """
    return db.execute(
        "SELECT COUNT(*) FROM outbox WHERE status = 'sent' AND relay = ? AND sent_at >= ?",
        (relay, iso(since)),
    ).fetchone()[0]


def counts(db, where: str = "", params: Sequence = ()) -> dict[str, int]:
    """Rows per state, e.g. for ``funnel campaign status``."""
    rows = db.execute(
        f"SELECT status, COUNT(*) FROM outbox {('WHERE ' + where) if where else ''} GROUP BY status",
        params,
    ).fetchall()
    return dict(rows)


def due_count(db, now: datetime) -> int:
    """Rows due now, not counting those held for a configuration error."""
    return db.execute(
        "SELECT COUNT(*) FROM outbox WHERE status IN ('queued', 'retry') "
        f"AND priority IN {DUE_PRIORITIES} AND due_at <= ? AND held_config IS NULL",
        (iso(now),),
    ).fetchone()[0]


def held_reasons(db, where: str = "", params: Sequence = ()) -> list[tuple[str, int]]:
    """(reason, rows) for queued rows held by a configuration error, most first."""
    return [
        (reason, n)
        for reason, n in db.execute(
            "SELECT last_error, COUNT(*) FROM outbox WHERE status = 'queued' AND held_config "
            f"IS NOT NULL {('AND ' + where) if where else ''} GROUP BY last_error "
            "ORDER BY COUNT(*) DESC, last_error",
            params,
        ).fetchall()
    ]
