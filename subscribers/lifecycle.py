"""Subscriber states and per-stream subscriptions: the ONLY code that changes them.

::

    pending --> active --> unsubscribed | bounced | complained | erased
       |          ^             |
       |          +-- (fresh opt-in: unsubscribed -> pending -> active)
       +--> unsubscribed | bounced | complained | erased

``erased`` is final and keeps only a hash of the address, which stays on the
suppression list.  ``bounced`` and ``complained`` are suppressed too: those
addresses are never mailed again unless an admin intervenes.

Leaving ``active`` for good (unsubscribe, bounce, complaint, erase) cancels
every queued send at once, so nothing more goes out.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from funnel.db import iso, log_event, remember, same_but_reader, transaction, unchanged
from funnel.errors import InputError, NotFound, TransitionError
from funnel.validate import check_header_text, check_visible, zone_name

#: status -> the statuses it may move to.
ALLOWED: dict[str, frozenset[str]] = {
    "pending": frozenset({"active", "unsubscribed", "bounced", "complained", "erased"}),
    "active": frozenset({"unsubscribed", "bounced", "complained", "erased"}),
    "unsubscribed": frozenset({"pending", "erased"}),
    "bounced": frozenset({"erased"}),
    "complained": frozenset({"erased"}),
    "erased": frozenset(),
}
#: Statuses that put the address on the suppression list.
SUPPRESSING = {"bounced": "bounced", "complained": "complained", "erased": "erased"}
STREAM_STATES = ("subscribed", "paused", "unsubscribed")
MAX_NAME = 100

_WHY = {
    ("unsubscribed", "active"): "they unsubscribed and must opt in again before they can be active",
    ("bounced", "pending"): "their address bounces and is suppressed",
    ("bounced", "active"): "their address bounces and is suppressed",
    ("complained", "pending"): "they marked our mail as spam and are suppressed",
    ("complained", "active"): "they marked our mail as spam and are suppressed",
    ("active", "pending"): "they have already confirmed",
    ("active", "active"): "they are already active",
    ("pending", "pending"): "they are already waiting to confirm",
}


def email_hash(email: str) -> str:
    """The suppression key: a hash of the lower-cased address.

    Unkeyed on purpose, so it survives secret-key rotation; it is only ever
    compared, never shown.
    """
    return hashlib.sha256(("funnel:" + email.strip().lower()).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Subscriber:
    id: int
    email: str | None
    name: str
    timezone: str | None
    source: str
    status: str
    created_at: str
    confirmed_at: str | None
    confirm_nonce: str | None
    confirm_sent_at: str | None

    @classmethod
    def from_row(cls, row: dict) -> Subscriber:
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})

    @property
    def first_name(self) -> str:
        return self.name.split()[0] if self.name.strip() else ""


_COLUMNS = ", ".join(Subscriber.__dataclass_fields__)


def stand_in(email: str, name: str = "") -> Subscriber:
    """A reader with no row (id 0), for a test send to an admin's address."""
    return Subscriber(0, email, name, None, "test", "active", "", None, None, None)


def get(db, subscriber_id: int) -> Subscriber:
    sub = _by_id(db, subscriber_id)
    if sub is None:
        raise _missing(subscriber_id)
    return sub


def _missing(subscriber_id: int) -> NotFound:
    return NotFound(f"subscriber {subscriber_id} does not exist")


def current(db, subscriber_id: int) -> Subscriber:
    """:func:`get` for building a message: reused while the database is unchanged,
    and seeded for a whole batch by :func:`read_ahead` (funnel.db.unchanged)."""
    sub = unchanged(db, ("subscriber", subscriber_id), lambda: _by_id(db, subscriber_id))
    if sub is None:
        raise _missing(subscriber_id)
    return sub


def subscription(db, subscriber_id: int, stream: str) -> tuple[str, str | None] | None:
    """(status, paused_until) of a reader's subscription to ``stream``, None when they
    have none; reused like :func:`current`."""
    return unchanged(
        db, ("subscription", subscriber_id, stream),
        lambda: db.execute(
            "SELECT status, paused_until FROM subscriptions WHERE subscriber_id = ? AND stream = ?",
            (subscriber_id, stream),
        ).fetchone(),
    )  # fmt: skip


def read_ahead(db, wanted: list[tuple[int, str | None]]) -> None:
    """Read the subscribers, and their subscription to the given stream, for a batch
    of (subscriber id, stream) pairs in two queries, for :func:`current` and
    :func:`subscription` to find while the database stays as it is now."""
    ids = sorted({sid for sid, _ in wanted})
    if not ids:
        return
    found = {
        row[0]: Subscriber(*row)
        for row in db.conn.execute(
            f"SELECT {_COLUMNS} FROM subscribers WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(ids),),
        )
    }
    entries: dict[tuple, object] = {("subscriber", i): found.get(i) for i in ids}
    pairs = {(sid, stream) for sid, stream in wanted if stream}
    if pairs:
        entries.update(dict.fromkeys((("subscription", *p) for p in pairs), None))
        for sid, stream, status, paused in db.conn.execute(
            "SELECT ss.subscriber_id, ss.stream, ss.status, ss.paused_until FROM json_each(?) j "
            "JOIN subscriptions ss ON ss.subscriber_id = json_extract(j.value, '$[0]') "
            "AND ss.stream = json_extract(j.value, '$[1]')",
            (json.dumps(sorted(pairs)),),
        ):
            entries[("subscription", sid, stream)] = (status, paused)
    remember(db, entries)


def _by_id(db, subscriber_id: int) -> Subscriber | None:
    row = db.execute(f"SELECT {_COLUMNS} FROM subscribers WHERE id = ?", (subscriber_id,)).fetchone()
    return Subscriber(*row) if row else None


def find(db, email: str) -> Subscriber | None:
    row = db.execute(
        f"SELECT {_COLUMNS} FROM subscribers WHERE email_hash = ?", (email_hash(email),)
    ).fetchone()
    return Subscriber(*row) if row else None


def get_by_email(db, email: str) -> Subscriber:
    sub = find(db, email)
    if sub is None:
        raise NotFound(f"email: no subscriber with the address {email!r}")
    return sub


def is_suppressed(db, email: str) -> bool:
    row = db.execute("SELECT 1 FROM suppressions WHERE email_hash = ?", (email_hash(email),)).fetchone()
    return row is not None


def can_transition(old: str, new: str) -> bool:
    return new in ALLOWED.get(old, frozenset())


def transition(db, subscriber_id: int, new: str, now: datetime, *, ref: str | None = None,
               data: dict | None = None) -> Subscriber:
    """Move a subscriber to ``new`` or raise TransitionError saying why not."""
    with transaction(db):
        sub = get(db, subscriber_id)
        if not can_transition(sub.status, new):
            why = _WHY.get((sub.status, new), f"{sub.status!r} cannot become {new!r}")
            raise TransitionError(f"subscriber {subscriber_id} is {sub.status}: {why}.")
        fields = {"status": new, "updated_at": iso(now)}
        if new == "active":
            fields["confirmed_at"] = iso(now)
            fields["confirm_nonce"] = None
        elif new == "pending":
            fields["confirmed_at"] = None  # a fresh opt-in: the old confirmation no longer stands
        else:
            # Leaving for good: a confirm link sent earlier must not bring them back.
            fields["confirm_nonce"] = None
        sets = ", ".join(f"{k} = ?" for k in fields)
        db.execute(f"UPDATE subscribers SET {sets} WHERE id = ?", (*fields.values(), subscriber_id))
        if new in SUPPRESSING:
            db.execute(
                "INSERT OR IGNORE INTO suppressions (email_hash, reason, at) "
                "SELECT email_hash, ?, ? FROM subscribers WHERE id = ?",
                (SUPPRESSING[new], iso(now), subscriber_id),
            )
        if new in ("unsubscribed", "bounced", "complained", "erased"):
            db.execute(
                "UPDATE subscriptions SET status = 'unsubscribed', updated_at = ? "
                "WHERE subscriber_id = ? AND status != 'unsubscribed'",
                (iso(now), subscriber_id),
            )
            cancel_queued(db, subscriber_id, now, reason=f"subscriber {new}")
        if new == "erased":
            _forget(db, subscriber_id, now)
        event = {"active": "confirmed", "pending": "resubscribed"}.get(new, new)
        log_event(db, event, now, subscriber_id, ref, json.dumps(data) if data else None)
    return get(db, subscriber_id)


def _forget(db, subscriber_id: int, now: datetime) -> None:
    """Remove everything personal; the hash stays, on the suppression list."""
    email = db.execute("SELECT email FROM subscribers WHERE id = ?", (subscriber_id,)).fetchone()[0]
    if email:
        # Mail caught by the dev inbox (dev mode only; empty in production).
        db.execute(
            "DELETE FROM devmail WHERE EXISTS (SELECT 1 FROM json_each(devmail.rcpt_tos) "
            "WHERE lower(json_each.value) = lower(?))",
            (email,),
        )
    db.execute(
        "UPDATE subscribers SET email = NULL, name = '', timezone = NULL, source = '', "
        "confirm_nonce = NULL WHERE id = ?", (subscriber_id,),
    )
    db.execute(
        "UPDATE consent SET ip = NULL, user_agent = NULL, note = NULL, source = '' WHERE subscriber_id = ?",
        (subscriber_id,),
    )
    record_consent(db, [Consent(subscriber_id, "erased", now)])
    db.execute(
        "UPDATE outbox SET to_addr = NULL, data = NULL, last_error = NULL WHERE subscriber_id = ?", (subscriber_id,)
    )
    db.execute(  # the view-in-browser copies hold their first name and links
        "DELETE FROM views WHERE outbox_id IN (SELECT id FROM outbox WHERE subscriber_id = ?)",
        (subscriber_id,),
    )
    db.execute("UPDATE bounces SET diagnostic = NULL, source = NULL WHERE subscriber_id = ?", (subscriber_id,))
    db.execute("UPDATE events SET data = NULL WHERE subscriber_id = ?", (subscriber_id,))


def cancel_queued(db, subscriber_id: int, now: datetime, *, stream: str | None = None,
                  reason: str = "") -> int:
    """Cancel unsent rows for a subscriber (one stream, or all); returns how many.

    Rows already handed to the SMTP server (``sending``) are left alone: they
    are in flight and cannot be recalled.
    """
    sql = (
        "UPDATE outbox SET status = 'cancelled', updated_at = ?, last_error = ?, lease_token = NULL "
        "WHERE subscriber_id = ? AND status IN ('queued', 'retry')"
    )
    params: list = [iso(now), reason or "cancelled", subscriber_id]
    if stream is not None:
        sql += " AND stream = ?"
        params.append(stream)
    return db.execute(sql, params).rowcount


# ----------------------------------------------------------------- streams
def subscriptions(db, subscriber_id: int) -> dict[str, dict]:
    rows = db.execute(
        "SELECT stream, status, paused_until FROM subscriptions WHERE subscriber_id = ? ORDER BY stream",
        (subscriber_id,),
    ).fetchall()
    return {r[0]: {"status": r[1], "paused_until": r[2]} for r in rows}


def write_streams(db, rows: Sequence[tuple[int, str, str, str | None, str]]) -> None:
    """The one writer of ``subscriptions`` rows: each (subscriber_id, stream, status,
    paused_until, updated_at) is inserted or replaces that reader's row for the
    stream, with one executemany however many there are.  The caller checks the
    transition and logs its event; this only stores it."""
    db.conn.executemany(
        "INSERT INTO subscriptions (subscriber_id, stream, status, paused_until, updated_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (subscriber_id, stream) DO UPDATE SET "
        "status = excluded.status, paused_until = excluded.paused_until, updated_at = excluded.updated_at",
        rows,
    )


def set_subscription(db, subscriber_id: int, stream: str, status: str, now: datetime,
                     paused_until: datetime | None = None, source: str = "") -> None:
    """Subscribe, pause or unsubscribe one stream.  Unsubscribing cancels its queue."""
    if status not in STREAM_STATES:
        raise TransitionError(f"stream status {status!r} is not one of {', '.join(STREAM_STATES)}")
    with transaction(db):
        sub = get(db, subscriber_id)
        if status != "unsubscribed" and sub.status not in ("active", "pending"):
            raise TransitionError(
                f"subscriber {subscriber_id} is {sub.status}; streams can only be turned on "
                "for active subscribers."
            )
        write_streams(db, [(subscriber_id, stream, status, iso(paused_until) if paused_until else None,
                            iso(now))])
        if status == "unsubscribed":
            cancel_queued(db, subscriber_id, now, stream=stream, reason=f"unsubscribed from {stream}")
            log_event(db, "unsubscribed", now, subscriber_id, stream,
                      json.dumps({"source": source}) if source else None)
        else:
            log_event(db, "preferences", now, subscriber_id, stream, json.dumps({"status": status}))


def grant_stream(db, subscriber_id: int, stream: str, now: datetime) -> None:
    """Turn one stream on because the address's owner asked for it by a link sent there.

    Unlike :func:`set_subscription` this works for unsubscribed, bounced and
    complained people too, and changes nothing else: they stay out of every
    other stream.  Used for a webinar's mail after its verification link is
    confirmed (``campaigns.webinars.confirm_verification``).
    """
    with transaction(db):
        sub = get(db, subscriber_id)
        if sub.email is None:
            raise TransitionError(f"subscriber {subscriber_id} is erased; restore the address first.")
        write_streams(db, [(subscriber_id, stream, "subscribed", None, iso(now))])
        log_event(db, "preferences", now, subscriber_id, stream, json.dumps({"status": "subscribed"}))


def restore_erased(db, subscriber_id: int, email: str, now: datetime) -> Subscriber:
    """An erased person proved they own the address again: keep it, nothing more.

    Only the address comes back (it must hash to the kept hash); name and
    zone stay empty and the status becomes ``unsubscribed``, so no newsletter,
    series or invitation reaches them.  The suppression entry stays.
    """
    with transaction(db):
        sub = get(db, subscriber_id)
        row = db.execute("SELECT email_hash FROM subscribers WHERE id = ?", (subscriber_id,)).fetchone()
        if sub.status != "erased" or row[0] != email_hash(email):
            raise TransitionError(f"subscriber {subscriber_id} is not an erased record of that address.")
        db.execute(
            "UPDATE subscribers SET email = ?, status = 'unsubscribed', updated_at = ? WHERE id = ?",
            (email, iso(now), subscriber_id),
        )
    return get(db, subscriber_id)


class Consent(NamedTuple):
    """One line of the append-only consent ledger (proof of consent)."""

    subscriber_id: int
    action: str  # one of funnel.db.CONSENT_ACTIONS
    at: datetime
    purpose: str = "newsletter"  # or a webinar's ref
    source: str = ""
    ip: str | None = None
    user_agent: str | None = None
    version: str | None = None  # the consent text version shown
    note: str | None = None


_CONSENT_SQL = (
    "INSERT INTO consent (subscriber_id, purpose, action, at, source, ip, user_agent, "
    "consent_text_version, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


_CONSENT_MANY_SQL = (
    "INSERT INTO consent (subscriber_id, purpose, action, at, source, ip, user_agent, "
    "consent_text_version, note) SELECT value, ?, ?, ?, ?, ?, ?, ?, ? FROM json_each(?)"
)


def record_consent(db, entries: Iterable[Consent]) -> None:
    """The one writer of consent rows; call inside the caller's transaction.

    Takes any number of entries so a bulk import writes its batch in one
    statement.
    """
    entries = list(entries)
    if same_but_reader(entries, 0) is not None:
        # One consent for many readers (an import batch): the shared values are
        # bound once and only the ids go through JSON (a 1M-row import: 3.2 -> 1.0 µs a row).
        first = entries[0]
        db.conn.execute(
            _CONSENT_MANY_SQL,
            (first.purpose, first.action, iso(first.at), first.source, first.ip, first.user_agent,
             first.version, first.note, json.dumps([c.subscriber_id for c in entries])),
        )  # fmt: skip
        return
    stamps: dict[datetime, str] = {}  # a batch shares one time: format it once
    db.conn.executemany(
        _CONSENT_SQL,
        [
            (c.subscriber_id, c.purpose, c.action,
             stamps.get(c.at) or stamps.setdefault(c.at, iso(c.at)),
             c.source, c.ip, c.user_agent, c.version, c.note)
            for c in entries
        ],
    )


def unsubscribe(db, subscriber_id: int, now: datetime, *, stream: str | None = None,
                source: str = "") -> Subscriber:
    """Unsubscribe from one stream, or from everything.  Safe to repeat."""
    with transaction(db):
        sub = get(db, subscriber_id)
        if stream is not None:
            set_subscription(db, subscriber_id, stream, "unsubscribed", now, source=source)
            return get(db, subscriber_id)
        if sub.status in ("unsubscribed", "bounced", "complained", "erased"):
            return sub  # already out: repeating is harmless
        record_consent(db, [Consent(subscriber_id, "withdrawn", now, source=source)])
        return transition(db, subscriber_id, "unsubscribed", now, data={"source": source} if source else None)


def suppress(db, subscriber_id: int, kind: str, now: datetime, *, detail: str = "") -> Subscriber:
    """Mark a subscriber bounced or complained (suppressing the address)."""
    if kind not in ("bounced", "complained"):
        raise TransitionError(f"cannot suppress as {kind!r}; use 'bounced' or 'complained'")
    sub = get(db, subscriber_id)
    if sub.status == kind:
        return sub
    return transition(db, subscriber_id, kind, now, data={"detail": detail} if detail else None)


def listing(db, *, status: str | None = None, limit: int = 50) -> list[dict]:
    """Newest subscribers first, optionally of one status."""
    sql = "SELECT id, email, name, timezone, status, created_at FROM subscribers"
    params: list = []
    if status:
        sql += " WHERE status = ?"
        params.append(status)
    sql += " ORDER BY id DESC LIMIT ?"
    params.append(limit)
    return list(db.query(sql, params))


# ----------------------------------------------------------------- details
def clean_name(raw: str | None, field: str = "name") -> str:
    """A display name: no line breaks or control characters, at most 100 characters.

    Encoded newlines (``=?utf-8?q?=0A?=``) are caught later by the header
    function too; rejecting them here keeps them out of the database.
    """
    name = (raw or "").strip()
    if len(name) > MAX_NAME:
        raise InputError(f"{field}: the name is longer than {MAX_NAME} characters")
    # isprintable() is a fast C check that is False for every control character;
    # only then look closer (it is also False for harmless format characters).
    if not name.isprintable() and any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in name):
        raise InputError(f"{field}: the name contains a line break or control character")
    lowered = name.lower()
    if "=?" in lowered and "?=" in lowered and ("=0a" in lowered or "=0d" in lowered or "=00" in lowered):
        raise InputError(f"{field}: the name contains an encoded line break")
    if "%0a" in lowered or "%0d" in lowered:
        raise InputError(f"{field}: the name contains an encoded line break")
    try:
        # The header rules themselves (base64 encoded words, nesting, ...), so a
        # name that could never be sent is refused now, not at send time.
        check_header_text(name, field)
    except InputError as exc:
        raise InputError(f"{field}: the name contains an encoded line break or control character") from exc
    check_visible(name, field)
    return " ".join(name.split())


def clean_timezone(raw: str | None, field: str = "timezone") -> str | None:
    tz = (raw or "").strip()
    if not tz:
        return None
    return zone_name(tz, field)


def edit_profile(db, email: str, name: str | None = None, tz: str | None = None, *,
                 now: datetime) -> Subscriber:
    """Change a person's name and/or time zone (None = leave as is; tz '' = the clinic's).

    Details, not state: the same columns the preferences page changes.  A new
    zone makes waiting series steps due now, so the next scheduler pass
    re-times them in it.
    """
    fields = {}
    if name is not None:
        fields["name"] = clean_name(name)
    if tz is not None:
        fields["timezone"] = clean_timezone(tz)
    with transaction(db):
        sub = get_by_email(db, email)
        if sub.status == "erased":
            raise InputError(f"email: {email!r} was erased")
        changed = {k: v for k, v in fields.items() if getattr(sub, k) != v}
        if not changed:
            return sub
        sets = ", ".join(f"{k} = ?" for k in changed)
        db.execute(f"UPDATE subscribers SET {sets}, updated_at = ? WHERE id = ?",
                   (*changed.values(), iso(now), sub.id))
        log_event(db, "preferences", now, sub.id, "details", json.dumps({"changed": sorted(changed)}))
        if "timezone" in changed:
            db.execute(
                "UPDATE enrollments SET next_due_at = ?, updated_at = ? "
                "WHERE subscriber_id = ? AND status = 'active' AND next_due_at > ?",
                (iso(now), iso(now), sub.id, iso(now)),
            )
    return get(db, sub.id)


def restore_bounced(db, subscriber_id: int, now: datetime, *, detail: str = "") -> Subscriber:
    """Take a bounced person off the suppression list after the address was fixed.

    ``bounced`` -> ``active``, the bounce score is reset, and the streams the
    bounce switched off are switched on again (those it changed at that very
    moment).  Only for ``bounced``: a complaint or an erase is never undone here.
    """
    with transaction(db):
        sub = get(db, subscriber_id)
        if sub.status != "bounced":
            raise TransitionError(f"subscriber {subscriber_id} is {sub.status}, not bounced; "
                                  "only a bounced address can be taken off the suppression list.")
        row = db.execute("SELECT at FROM events WHERE subscriber_id = ? AND kind = 'bounced' "
                         "ORDER BY id DESC LIMIT 1", (subscriber_id,)).fetchone()
        db.execute("UPDATE subscribers SET status = 'active', bounce_score = 0, last_bounce_at = NULL, "
                   "updated_at = ? WHERE id = ?", (iso(now), subscriber_id))
        db.execute("DELETE FROM suppressions WHERE reason = 'bounced' AND email_hash = "
                   "(SELECT email_hash FROM subscribers WHERE id = ?)", (subscriber_id,))
        if row is not None:
            db.execute(
                "UPDATE subscriptions SET status = 'subscribed', paused_until = NULL, updated_at = ? "
                "WHERE subscriber_id = ? AND status = 'unsubscribed' AND updated_at = ?",
                (iso(now), subscriber_id, row[0]),
            )
        log_event(db, "resubscribed", now, subscriber_id, "unsuppressed",
                  json.dumps({"detail": detail}) if detail else None)
    return get(db, subscriber_id)
