"""THE schema, connection settings and status enums.

Only this module creates or alters tables, and only through numbered
sqlite-utils migrations.  The status enums below are mirrored in CHECK
constraints, so a bug elsewhere cannot store a state the code doesn't know.

Connections: WAL, ``busy_timeout`` 10 s, foreign keys on, ``synchronous=FULL``.
The sqlite3 connection runs in driver autocommit mode (``isolation_level=None``)
and every write path opens its own explicit transaction: :func:`transaction`
uses ``BEGIN IMMEDIATE`` so two writers queue on the busy timeout instead of
failing at once with "database is locked" (sqlite-utils' ``atomic()`` issues a
plain ``BEGIN``, which upgrades to a write lock too late).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import sqlite3
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import sqlite_utils
from sqlite_utils.migrations import Migrations

from . import clock
from .errors import DatabaseError, FunnelError, InputError

BUSY_TIMEOUT_MS = 10_000

# ----------------------------------------------------------------- enums
SUBSCRIBER_STATES = ("pending", "active", "unsubscribed", "bounced", "complained", "erased")
SUBSCRIPTION_STATES = ("subscribed", "paused", "unsubscribed")
OUTBOX_STATES = ("queued", "sending", "sent", "retry", "failed", "suppressed", "expired", "cancelled")
#: Rows the sender still has to deal with.
OUTBOX_UNFINISHED = ("queued", "sending", "retry")
CAMPAIGN_STATES = ("draft", "scheduled", "sending", "paused", "finished", "cancelled")
ENROLLMENT_STATES = ("active", "completed", "stopped")
WEBINAR_STATES = ("scheduled", "cancelled")
REGISTRATION_STATES = ("registered", "waitlisted", "attended", "no_show", "cancelled")
#: A click on a tracked link (campaigns/clicks.py): the first human click per
#: message and link, a later one, or one a link scanner made.
CLICK_VERDICTS = ("human", "repeat", "scanner")
BOUNCE_KINDS = ("hard", "soft", "complaint")
APPOINTMENT_STATES = ("new", "contacted", "booked", "closed")
CONTACT_METHODS = ("phone", "text", "email")
WEBHOOK_STATES = ("pending", "delivered", "failed", "cancelled")
CONSENT_ACTIONS = ("requested", "confirmed", "imported", "withdrawn", "erased")
#: Streams a subscriber can be on.  Series streams are ``series:<slug>``.
BASE_STREAMS = ("broadcasts", "webinars")
EVENT_KINDS = (
    "subscribed",
    "confirmation_queued",
    "confirmed",
    "enrolled",
    "sent",
    "failed",
    "expired",
    "bounced",
    "complained",
    "suppressed",
    "unsubscribed",
    "resubscribed",
    "preferences",
    "erased",
    "invited",
    "registered",
    "waitlisted",
    "attended",
    "no_show",
    "registration_cancelled",
    "clicked_offer",
    "admin",  # an admin's action (web/admin, the audit log): who, what, target, IP in data
    "completed",  # a reader received the last step of a series (migration 0020)
)


def _check(column: str, values: tuple[str, ...]) -> str:
    quoted = ", ".join(f"'{v}'" for v in values)
    return f"CHECK ({column} IN ({quoted}))"


def utcnow() -> datetime:
    """The injected clock (:func:`funnel.clock.now`); only the doors call it and pass ``now`` down."""
    return clock.now()


def iso(dt: datetime | None) -> str | None:
    """Store every time as an ISO-8601 UTC string that sorts lexically."""
    if dt is None:
        return None
    if dt.tzinfo is None:
        raise ValueError("naive datetime reached the database layer")
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str | None) -> datetime | None:
    if text is None:
        return None
    if len(text) == 27 and text[10] == "T" and text[-1] == "Z":
        # What iso() writes; fromisoformat is ~10x faster than strptime (the
        # scheduler parses a few per enrollment).
        return datetime.fromisoformat(text[:-1]).replace(tzinfo=UTC)
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


# ----------------------------------------------------------------- migrations
migrations = Migrations("funnel")


@migrations(name="0001_subscribers")
def m0001_subscribers(db: sqlite_utils.Database) -> None:
    db.executescript(
        f"""
        CREATE TABLE subscribers (
            id INTEGER PRIMARY KEY,
            email TEXT UNIQUE,                 -- normalised; NULL once erased
            email_hash TEXT NOT NULL UNIQUE,   -- keyed hash of the lower-cased address
            name TEXT NOT NULL DEFAULT '',
            timezone TEXT,                     -- IANA name, NULL = the clinic's default
            source TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL DEFAULT 'pending' {_check("status", SUBSCRIBER_STATES)},
            confirm_nonce TEXT,                -- current confirm token nonce; NULL once used
            confirm_sent_at TEXT,
            created_at TEXT NOT NULL,
            confirmed_at TEXT,
            updated_at TEXT NOT NULL,
            bounce_score REAL NOT NULL DEFAULT 0,
            last_bounce_at TEXT,
            CHECK (status = 'erased' OR email IS NOT NULL)
        );
        CREATE INDEX subscribers_status ON subscribers(status);
        CREATE INDEX subscribers_created ON subscribers(created_at);

        CREATE TABLE subscriptions (
            subscriber_id INTEGER NOT NULL REFERENCES subscribers(id) ON DELETE CASCADE,
            stream TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'subscribed' {_check("status", SUBSCRIPTION_STATES)},
            paused_until TEXT,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (subscriber_id, stream)
        );
        CREATE INDEX subscriptions_stream ON subscriptions(stream, status);

        -- Proof of consent, append-only.  Erase blanks ip/user_agent/note.
        CREATE TABLE consent (
            id INTEGER PRIMARY KEY,
            subscriber_id INTEGER NOT NULL REFERENCES subscribers(id) ON DELETE CASCADE,
            purpose TEXT NOT NULL,             -- 'newsletter' | 'webinar:<slug>' | ...
            action TEXT NOT NULL {_check("action", CONSENT_ACTIONS)},
            at TEXT NOT NULL,
            source TEXT NOT NULL DEFAULT '',
            ip TEXT,
            user_agent TEXT,
            consent_text_version TEXT,
            note TEXT
        );
        CREATE INDEX consent_subscriber ON consent(subscriber_id);

        -- Addresses that must never be mailed again, by hash only.
        CREATE TABLE suppressions (
            email_hash TEXT PRIMARY KEY,
            reason TEXT NOT NULL,
            at TEXT NOT NULL
        );

        -- The event log every state change writes to; the funnel report reads it.
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            kind TEXT NOT NULL {_check("kind", EVENT_KINDS)},
            subscriber_id INTEGER REFERENCES subscribers(id) ON DELETE SET NULL,
            ref TEXT,                          -- e.g. 'series:importance-of-exercise:3', 'webinar:spine-health'
            data TEXT                          -- JSON
        );
        CREATE INDEX events_kind_at ON events(kind, at);
        CREATE INDEX events_subscriber ON events(subscriber_id);
        """
    )


@migrations(name="0002_outbox")
def m0002_outbox(db: sqlite_utils.Database) -> None:
    db.executescript(
        f"""
        CREATE TABLE campaigns (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,                -- 'broadcast' | 'webinar_invite' | ...
            template TEXT NOT NULL,
            subject TEXT NOT NULL,
            preheader TEXT NOT NULL DEFAULT '',
            body_md TEXT NOT NULL DEFAULT '',
            segment TEXT NOT NULL DEFAULT 'all',
            stream TEXT NOT NULL DEFAULT 'broadcasts',
            status TEXT NOT NULL DEFAULT 'draft' {_check("status", CAMPAIGN_STATES)},
            send_at TEXT,                      -- UTC, or wall-clock when local_time = 1
            local_time INTEGER NOT NULL DEFAULT 0,
            ref TEXT,                          -- e.g. 'webinar:spine-health'
            data TEXT,                         -- JSON (ctas, extra template values)
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );

        -- One ledger row per recipient x message.  dedupe_key is UNIQUE so that
        -- queueing twice, or two workers racing, never creates a second row.
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY,
            dedupe_key TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,                -- 'confirm' | 'series' | 'broadcast' | 'webinar_*' ...
            subscriber_id INTEGER REFERENCES subscribers(id) ON DELETE SET NULL,
            campaign_id INTEGER REFERENCES campaigns(id),
            stream TEXT,                       -- NULL = transactional (confirmations)
            ref TEXT,                          -- 'series:<slug>:<step>' / 'webinar:<slug>' ...
            to_addr TEXT,                      -- NULL once erased
            message_id TEXT NOT NULL UNIQUE,   -- stable per row: resends reuse it
            priority INTEGER NOT NULL DEFAULT 50, -- lower goes first; series yield to broadcasts
            status TEXT NOT NULL DEFAULT 'queued' {_check("status", OUTBOX_STATES)},
            due_at TEXT NOT NULL,
            expires_at TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            crashes INTEGER NOT NULL DEFAULT 0,    -- claims that ended with the sender dying
            uncertain INTEGER NOT NULL DEFAULT 0,  -- times found in 'sending' after a crash
            lease_token TEXT,
            lease_until TEXT,
            relay TEXT,
            smtp_code INTEGER,
            last_error TEXT,
            data TEXT,                         -- JSON render context (not user-editable template source)
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            sent_at TEXT
        );
        CREATE INDEX outbox_due ON outbox(due_at, priority)
            WHERE status IN ('queued', 'retry');
        CREATE INDEX outbox_sending ON outbox(lease_until) WHERE status = 'sending';
        CREATE INDEX outbox_subscriber ON outbox(subscriber_id, status);
        CREATE INDEX outbox_campaign ON outbox(campaign_id, status);
        CREATE INDEX outbox_sent_at ON outbox(subscriber_id, sent_at) WHERE status = 'sent';
        CREATE INDEX outbox_ref ON outbox(ref, status);

        CREATE TABLE bounces (
            id INTEGER PRIMARY KEY,
            subscriber_id INTEGER REFERENCES subscribers(id) ON DELETE SET NULL,
            outbox_id INTEGER REFERENCES outbox(id) ON DELETE SET NULL,
            kind TEXT NOT NULL {_check("kind", BOUNCE_KINDS)},
            status_code TEXT,
            diagnostic TEXT,
            source TEXT,
            at TEXT NOT NULL
        );
        CREATE INDEX bounces_subscriber ON bounces(subscriber_id, at);
        """
    )


@migrations(name="0003_series")
def m0003_series(db: sqlite_utils.Database) -> None:
    db.executescript(
        f"""
        CREATE TABLE enrollments (
            subscriber_id INTEGER NOT NULL REFERENCES subscribers(id) ON DELETE CASCADE,
            series TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'active' {_check("status", ENROLLMENT_STATES)},
            enrolled_at TEXT NOT NULL,
            next_step INTEGER NOT NULL DEFAULT 0,  -- index into the series' current step list
            next_due_at TEXT,
            last_step_key TEXT,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (subscriber_id, series)
        );
        CREATE INDEX enrollments_due ON enrollments(next_due_at) WHERE status = 'active';

        -- Which step each subscriber has been sent, by stable step key, so edits
        -- to a live series never re-send a step.
        CREATE TABLE series_deliveries (
            subscriber_id INTEGER NOT NULL REFERENCES subscribers(id) ON DELETE CASCADE,
            series TEXT NOT NULL,
            step_key TEXT NOT NULL,
            part INTEGER,
            outbox_id INTEGER REFERENCES outbox(id) ON DELETE SET NULL,
            at TEXT NOT NULL,
            PRIMARY KEY (subscriber_id, series, step_key)
        );
        """
    )


@migrations(name="0004_webinars")
def m0004_webinars(db: sqlite_utils.Database) -> None:
    db.executescript(
        f"""
        CREATE TABLE webinars (
            id INTEGER PRIMARY KEY,
            slug TEXT NOT NULL UNIQUE,
            title TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            starts_at TEXT NOT NULL,           -- UTC
            timezone TEXT NOT NULL,            -- IANA zone the host set it in
            duration_minutes INTEGER NOT NULL DEFAULT 60 CHECK (duration_minutes > 0),
            join_url TEXT NOT NULL,
            replay_url TEXT,
            capacity INTEGER CHECK (capacity IS NULL OR capacity > 0),
            host_name TEXT NOT NULL DEFAULT '',
            offer TEXT NOT NULL DEFAULT 'appointment',
            reminder_offsets TEXT NOT NULL DEFAULT '[1440, 60, 10]',  -- minutes before start, JSON
            followup_delay_minutes INTEGER NOT NULL DEFAULT 120,
            sequence INTEGER NOT NULL DEFAULT 0,  -- iCalendar SEQUENCE, bumped on every change
            status TEXT NOT NULL DEFAULT 'scheduled' {_check("status", WEBINAR_STATES)},
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );

        CREATE TABLE registrations (
            id INTEGER PRIMARY KEY,
            webinar_id INTEGER NOT NULL REFERENCES webinars(id) ON DELETE CASCADE,
            subscriber_id INTEGER NOT NULL REFERENCES subscribers(id) ON DELETE CASCADE,
            status TEXT NOT NULL DEFAULT 'registered' {_check("status", REGISTRATION_STATES)},
            source TEXT NOT NULL DEFAULT '',
            registered_at TEXT NOT NULL,
            attended_minutes INTEGER,
            updated_at TEXT NOT NULL,
            UNIQUE (webinar_id, subscriber_id)
        );
        CREATE INDEX registrations_subscriber ON registrations(subscriber_id);
        """
    )


# ----------------------------------------------------------------- connections
#: Bytes of WAL file kept on disk after a checkpoint (see :func:`connect`).
WAL_SIZE_LIMIT = 64 * 2**20


def connect(path: str | Path, *, migrate: bool = False, readonly_ok: bool = False) -> sqlite_utils.Database:
    """Open the database with the connection settings every process uses.

    Raises :class:`DatabaseError` with one sentence if the file cannot be used.
    """
    path = str(path)
    try:
        conn = sqlite3.connect(
            path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,  # explicit transactions only, see module doc
            check_same_thread=False,
        )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")
        # 32 MB page cache (default 2 MB): random-keyed unique indexes (email_hash,
        # message_id) stay in memory during bulk imports and queueing.
        conn.execute("PRAGMA cache_size = -32000")
        # A big import or send leaves a WAL file of its size; SQLite reuses the file but
        # never shrinks it while any connection is open (the web server, the worker).
        # With this limit it is cut back to WAL_SIZE_LIMIT once a checkpoint lets the
        # log start over, so a year of running doesn't keep the biggest day's log on disk.
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal" and not readonly_ok and path != ":memory:":
            raise DatabaseError(f"{path}: could not switch the database to WAL mode (got {mode})")
    except sqlite3.OperationalError as exc:
        raise _db_error(path, exc) from exc
    db = sqlite_utils.Database(conn)
    if migrate:
        init_db(db)
    return db


def _db_error(path: str, exc: sqlite3.Error) -> DatabaseError:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return DatabaseError(
            f"{path}: the database is locked by another process and stayed locked for "
            f"{BUSY_TIMEOUT_MS // 1000} s; nothing was changed"
        )
    if "readonly" in text or "read-only" in text:
        return DatabaseError(f"{path}: the database file is read-only; nothing was changed")
    if "unable to open" in text or "disk is full" in text or "disk I/O error" in text:
        folder = Path(path).parent
        try:
            fs = os.statvfs(folder)
        except OSError:
            return DatabaseError(f"{path}: cannot open the database file (does the folder exist?)")
        if fs.f_flag & os.ST_RDONLY:
            return DatabaseError(f"{path}: the file system holding the database is read-only; nothing was changed")
        if fs.f_bavail == 0 or "disk is full" in text:
            return DatabaseError(f"{path}: the disk holding the database is full; nothing was changed")
        if "unable to open" in text:
            return DatabaseError(f"{path}: cannot open the database file (check its folder and permissions)")
        return DatabaseError(f"{path}: the disk failed ({text}); nothing was changed")
    return DatabaseError(f"{path}: {text}")


def explain_failure(exc: BaseException, path: str) -> FunnelError | None:
    """One sentence for a failure of the machine rather than of the input, or None.

    The CLI turns these into one line instead of a traceback: SQLite errors
    that escaped a transaction (disk full, read-only file), a file that cannot
    be written (no space, read-only file system, no permission) and text that
    cannot be encoded (an argument that is not valid UTF-8).
    """
    if isinstance(exc, FunnelError):
        return exc
    if isinstance(exc, sqlite3.Error):
        return _db_error(path, exc)
    if isinstance(exc, UnicodeError):
        return InputError(
            f"text that is not valid UTF-8 cannot be stored or shown ({exc.reason}); nothing was changed"
        )
    if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
        where = exc.filename or path
        return DatabaseError(f"{where}: {_STORAGE_ERRNOS[exc.errno]}; nothing was changed")
    return None


_STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EIO: "input/output error from the disk",
}


def init_db(db: sqlite_utils.Database) -> list[str]:
    """Create or upgrade the schema; returns the migrations applied now."""
    before = {m.name for m in migrations.applied(db)}
    try:
        migrations.apply(db)
    except sqlite3.OperationalError as exc:
        raise _db_error(db_path(db), exc) from exc
    return [m.name for m in migrations.applied(db) if m.name not in before]


def db_path(db: sqlite_utils.Database) -> str:
    row = db.execute("PRAGMA database_list").fetchone()
    return row[2] or ":memory:"


def pending_migrations(db: sqlite_utils.Database) -> list[str]:
    return [m.name for m in migrations.pending(db)]


@contextlib.contextmanager
def transaction(db: sqlite_utils.Database, *, immediate: bool = True) -> Iterator[sqlite_utils.Database]:
    """One explicit transaction; ``BEGIN IMMEDIATE`` takes the write lock up front.

    Nested use becomes a savepoint, so a domain function can call another
    domain function inside its own transaction.
    """
    conn = db.conn
    if conn.in_transaction:
        yield from _savepoint(conn, db)
        return
    try:
        conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    except sqlite3.OperationalError as exc:
        raise _db_error(db_path(db), exc) from exc
    try:
        yield db
    except sqlite3.OperationalError as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise _db_error(db_path(db), exc) from exc
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    else:
        try:
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise _db_error(db_path(db), exc) from exc


def _savepoint(conn: sqlite3.Connection, db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """A nested transaction.  One fixed name, not sqlite-utils' random one per use:
    the statements stay in the driver's cache (a signup nests three deep), and
    RELEASE / ROLLBACK TO act on the innermost savepoint of that name."""
    conn.execute("SAVEPOINT funnel_nested")
    try:
        yield db
    except BaseException:
        # A RAISE(ROLLBACK) trigger can end the whole transaction, savepoints included.
        if conn.in_transaction:
            conn.execute("ROLLBACK TO SAVEPOINT funnel_nested")
            conn.execute("RELEASE SAVEPOINT funnel_nested")
        raise
    else:
        conn.execute("RELEASE SAVEPOINT funnel_nested")


def log_event(
    db: sqlite_utils.Database,
    kind: str,
    now: datetime,
    subscriber_id: int | None = None,
    ref: str | None = None,
    data: str | None = None,
) -> None:
    """Append to the event log (call inside the caller's transaction)."""
    db.execute(_LOG_EVENT, (iso(now), kind, subscriber_id, ref, data))


_LOG_EVENT = "INSERT INTO events (at, kind, subscriber_id, ref, data) VALUES (?, ?, ?, ?, ?)"


def unchanged(db: sqlite_utils.Database, key: tuple, load):
    """``load()``, reused for ``key`` while nothing in the database has changed.

    For reads repeated per message while a batch is built (a broadcast's campaign
    row for each of its 500 messages): nothing changed when no other connection
    has committed (``PRAGMA data_version``) and this one has written nothing
    (``total_changes``), so the row read before is the row now.  The memo lives
    on this connection's Database object and holds one database state at a time.
    Inside :func:`one_state` the state is checked once for the whole block.
    """
    memo = db.__dict__.get(_MEMO) if db.__dict__.get(_PINNED) else None
    if memo is None or memo[0][1] != db.conn.total_changes:
        memo = _memo(db)
    found = memo[1].get(key, memo)  # the memo itself marks "absent"
    if found is memo:
        found = memo[1][key] = load()
    return found


def remember(db: sqlite_utils.Database, entries: dict) -> None:
    """Seed :func:`unchanged`'s memo for the database as it is now with values read
    in bulk (a batch's readers in one query instead of one query per message)."""
    _memo(db)[1].update(entries)


@contextlib.contextmanager
def one_state(db: sqlite_utils.Database):
    """One ``PRAGMA data_version`` check for every :func:`unchanged` read in the
    block (the reads that build one message, microseconds apart), instead of one
    per read.  A write on this connection inside the block still starts a new
    state."""
    _memo(db)
    db.__dict__[_PINNED] = True
    try:
        yield
    finally:
        db.__dict__[_PINNED] = False


_MEMO, _PINNED = "_funnel_unchanged", "_funnel_unchanged_pinned"


def _memo(db: sqlite_utils.Database) -> tuple[tuple[int, int], dict]:
    """The memo for the database's state now, emptied when the state moved on."""
    state = (db.conn.execute("PRAGMA data_version").fetchone()[0], db.conn.total_changes)
    memo = db.__dict__.get(_MEMO)
    if memo is None or memo[0] != state:
        memo = (state, {})
        db.__dict__[_MEMO] = memo
    return memo


#: Events per statement in :func:`log_events`; keeps each JSON parameter a few hundred KB.
EVENTS_PER_STATEMENT = 5000
_LOG_EVENTS = (
    "INSERT INTO events (at, kind, subscriber_id, ref, data) SELECT json_extract(value, '$[0]'), "
    "json_extract(value, '$[1]'), json_extract(value, '$[2]'), json_extract(value, '$[3]'), "
    "json_extract(value, '$[4]') FROM json_each(?)"
)


#: The same event (time, kind, ref, data) for each reader id in a JSON list.
_LOG_SAME_EVENT = (
    "INSERT INTO events (at, kind, subscriber_id, ref, data) SELECT ?, ?, value, ?, ? FROM json_each(?)"
)


def same_but_reader(rows: Sequence[tuple], index: int) -> tuple | None:
    """The values every one of *rows* holds when the rows differ only in the reader
    id at *index*, and each id is an integer or None (not text, and not a bool,
    which JSON would write as true or false); else None.

    Such rows (an import batch's events or consent, an enrolment's events) are
    written with the shared values bound once and only the ids sent through
    ``json_each``, one statement for the lot.
    """
    if len(rows) < 2:
        return None
    first = rows[0]
    shared = first[:index] + first[index + 1 :]
    for row in rows:
        sid = row[index]
        if not (sid is None or sid.__class__ is int) or row[:index] + row[index + 1 :] != shared:
            return None
    return shared


def log_events(db: sqlite_utils.Database, rows: list[tuple]) -> None:
    """Append many events, each ``(at, kind, subscriber_id, ref[, data])``, in few
    statements (call inside the caller's transaction).

    Why not ``executemany``: ``events`` has triggers (reader_bits, migration 0032),
    and SQLite then opens a statement journal for every execution of the INSERT,
    whether a trigger's WHEN holds or not: 23 µs an event against 7 µs without
    triggers.  One ``INSERT … SELECT FROM json_each`` per chunk pays that once per
    chunk, and the triggers still see each row: 10–11 µs an event (1M imported
    readers, 1M enrolled readers: about 12 s each).  JSON keeps every value's type:
    text stays text, an id stays an integer, None is NULL.  When a chunk is one
    event for many readers (an import, an enrolment), the shared values are bound
    once and only the ids go through JSON (a 1M-row import: 6.4 -> 5.7 µs an event).
    """
    for start in range(0, len(rows), EVENTS_PER_STATEMENT):
        chunk = rows[start : start + EVENTS_PER_STATEMENT]
        shared = same_but_reader(chunk, 2)
        if shared is not None:  # one event for many readers: only their ids go through JSON
            at, kind, ref, *data = shared
            ids = json.dumps([row[2] for row in chunk], separators=(",", ":"))
            db.conn.execute(_LOG_SAME_EVENT, (at, kind, ref, data[0] if data else None, ids))
            continue
        payload = json.dumps(chunk, ensure_ascii=False, separators=(",", ":"))
        if "\\u0000" in payload:  # SQLite's JSON cuts a string at an escaped NUL: bind them one by one
            db.conn.executemany(_LOG_EVENT, [(*row, None) if len(row) == 4 else row for row in chunk])
        else:
            db.conn.execute(_LOG_EVENTS, (payload,))


@contextlib.contextmanager
def indexes_built_after(db: sqlite_utils.Database, tables: tuple[str, ...]) -> Iterator[list[str]]:
    """Inside the caller's write transaction: for each of *tables* that is empty now,
    drop its plain (non-UNIQUE) indexes, and create them again when the block ends
    without an error; yields the names of the indexes dropped.

    For a bulk load into empty tables (a first CSV import): building an index
    once over the loaded rows sorts them and packs its pages, where inserting
    row by row splits pages in random key order and leaves them part-full
    (bench/README.md, "One Message-ID range per pass, and indexes built after a
    first import").  UNIQUE indexes stay, because they check the rows as they
    go in.  DDL is transactional in SQLite: if the block raises, the caller's
    rollback brings the indexes back as they were, and other connections never
    see a table without them.
    Triggers that fire on each inserted row must not look up a table whose
    indexes are gone (tests/test_io.py checks the import's tables: their INSERT
    triggers touch only reader_bits and enrollment_queue, by primary key).
    """
    if not db.conn.in_transaction:
        raise RuntimeError("indexes_built_after needs the caller's write transaction")
    dropped: list[tuple[str, str]] = []
    for table in tables:
        if db.execute(f"SELECT EXISTS (SELECT 1 FROM [{table}])").fetchone()[0]:
            continue
        dropped += db.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
            "AND sql IS NOT NULL AND sql NOT LIKE 'CREATE UNIQUE%' ORDER BY name",
            (table,),
        ).fetchall()
    for name, _sql in dropped:
        db.execute(f"DROP INDEX [{name}]")
    yield [name for name, _sql in dropped]
    for _name, sql in dropped:
        db.execute(sql)


@contextlib.contextmanager
def reader_bits_after(db: sqlite_utils.Database) -> Iterator[None]:
    """Inside the caller's write transaction: the events inserted in the block set
    their reader_bits once, at its end, not one trigger run per event.

    The insert trigger (migration 0032) does an UPDATE and, when that changed
    nothing, an INSERT for every event; for a bulk load (a CSV import's
    ``subscribed`` events) that was about 3 µs of each row's 40.  Here the
    trigger is dropped, the events go in, and then one statement ORs the
    block's bits in from the events themselves (grouped per kind, ref and word,
    as the migration's backfill does), and the trigger is created again from
    its own stored SQL.  As with :func:`indexes_built_after`, DDL is
    transactional: a rollback brings the trigger back, and no other
    connection can write an event while the caller holds the write lock.
    Events deleted or changed in the block still clear bits through their
    own triggers, which stay.
    """
    if not db.conn.in_transaction:
        raise RuntimeError("reader_bits_after needs the caller's write transaction")
    (trigger,) = db.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = 'reader_bits_insert'"
    ).fetchone()
    before = db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
    db.execute("DROP TRIGGER reader_bits_insert")
    yield
    db.execute(_READER_BITS_SINCE, (before,))
    db.execute(trigger)


@migrations(name="0005_delivery")
def m0005_delivery(db: sqlite_utils.Database) -> None:
    """Delivery engine: series versions for ``series diff``, anchors for the drip rhythm."""
    db.executescript(
        """
        -- The nominal slot (UTC) of the last step materialised for this enrollment:
        -- the next step is timed from it, so a postponed step keeps the weekly rhythm.
        ALTER TABLE enrollments ADD COLUMN last_due_at TEXT;
        -- Set when every recipient row of a campaign has been queued.
        ALTER TABLE campaigns ADD COLUMN queued_at TEXT;

        -- The step-key list of a series as last applied (``funnel series apply``);
        -- the scheduler holds a series whose content no longer matches it.
        CREATE TABLE series_versions (
            series TEXT NOT NULL,
            version INTEGER NOT NULL,
            step_keys TEXT NOT NULL,           -- JSON list, send order
            applied_at TEXT NOT NULL,
            PRIMARY KEY (series, version)
        );
        CREATE INDEX series_deliveries_part ON series_deliveries(series, part);
        CREATE INDEX campaigns_status ON campaigns(status, send_at);
        """
    )



@migrations(name="0006_devmail")
def m0006_devmail(db: sqlite_utils.Database) -> None:
    """Mail caught by the embedded dev SMTP server (``funnel up``, see funnel/devmail.py).

    Only the dev server writes here, so the table stays empty in production.
    It lives in the main database (not a side file) so the schema keeps one
    owner and the dev inbox needs no second connection string.
    """
    db.executescript(
        """
        CREATE TABLE devmail (
            id INTEGER PRIMARY KEY,
            received_at TEXT NOT NULL,
            mail_from TEXT NOT NULL DEFAULT '',
            rcpt_tos TEXT NOT NULL DEFAULT '[]',   -- JSON list
            subject TEXT NOT NULL DEFAULT '',
            data BLOB NOT NULL                     -- the message exactly as received
        );
        """
    )


@migrations(name="0008_sending")
def m0008_sending(db: sqlite_utils.Database) -> None:
    """Sending half of the delivery engine (campaigns/sender.py, campaigns/smtp.py).

    ``lease_owner`` ("host:pid:start") lets a restarted ``funnel send`` see at
    once that the worker holding a lease is dead, instead of waiting for the
    lease to run out.  The relay index makes the per-relay hourly/daily window
    (messages sent via a relay since T, counted from the ledger so the limits
    survive restarts) an index range scan instead of a table scan.
    """
    db.executescript(
        """
        ALTER TABLE outbox ADD COLUMN lease_owner TEXT;
        CREATE INDEX outbox_relay_sent ON outbox(relay, sent_at) WHERE status = 'sent';
        """
    )


@migrations(name="0010_claim_index")
def m0010_claim_index(db: sqlite_utils.Database) -> None:
    """``outbox.claim`` orders by (priority, due_at, id); with this index it walks
    the due rows in that order and stops at LIMIT, instead of sorting every due
    row on every claim (O(batch) rather than O(due rows) per claim).
    """
    db.executescript(
        """
        CREATE INDEX outbox_claim ON outbox(priority, due_at, id)
            WHERE status IN ('queued', 'retry');
        """
    )


@migrations(name="0013_enrollment_queue")
def m0013_enrollment_queue(db: sqlite_utils.Database) -> None:
    """Readers whose series subscriptions may need an enrollment (``enrollment.reconcile``).

    Enrollment is a reconciling pass, not a confirm hook: before each tick it
    enrols every active reader whose ``series:<slug>`` stream is on and who has
    no enrollment in that series.  Looking at every subscription on every tick
    would cost O(subscribers); these triggers note which readers changed, so a
    tick with nothing new reads an empty table.  A trigger fires for any writer
    (confirm, pre-confirmed import, preferences, resubscribe, a future door),
    so no code path can forget to ask for enrollment.  The queue only says
    "look at this reader"; every rule stays in ``campaigns/enrollment.py``.

    Readers already subscribed but never enrolled (a pre-confirmed import made
    before this migration) are queued once here.  The triggers test for an
    existing row rather than using INSERT OR IGNORE, because an outer
    statement's conflict policy (an upsert, INSERT OR REPLACE) overrides the
    one written inside a trigger.
    """
    db.executescript(
        """
        CREATE TABLE enrollment_queue (
            subscriber_id INTEGER PRIMARY KEY
        );
        CREATE TRIGGER enrollment_queue_stream_added AFTER INSERT ON subscriptions
        WHEN NEW.status != 'unsubscribed' AND NEW.stream LIKE 'series:%'
        BEGIN
            INSERT INTO enrollment_queue (subscriber_id) SELECT NEW.subscriber_id
            WHERE NOT EXISTS (SELECT 1 FROM enrollment_queue WHERE subscriber_id = NEW.subscriber_id);
        END;
        CREATE TRIGGER enrollment_queue_stream_on AFTER UPDATE OF status ON subscriptions
        WHEN NEW.status != 'unsubscribed' AND OLD.status = 'unsubscribed'
            AND NEW.stream LIKE 'series:%'
        BEGIN
            INSERT INTO enrollment_queue (subscriber_id) SELECT NEW.subscriber_id
            WHERE NOT EXISTS (SELECT 1 FROM enrollment_queue WHERE subscriber_id = NEW.subscriber_id);
        END;
        CREATE TRIGGER enrollment_queue_activated AFTER UPDATE OF status ON subscribers
        WHEN NEW.status = 'active' AND OLD.status != 'active'
        BEGIN
            INSERT INTO enrollment_queue (subscriber_id) SELECT NEW.id
            WHERE NOT EXISTS (SELECT 1 FROM enrollment_queue WHERE subscriber_id = NEW.id);
        END;
        INSERT OR IGNORE INTO enrollment_queue (subscriber_id)
            SELECT ss.subscriber_id FROM subscriptions ss
            JOIN subscribers s ON s.id = ss.subscriber_id AND s.status = 'active'
            WHERE ss.stream LIKE 'series:%' AND ss.status != 'unsubscribed'
            AND NOT EXISTS (SELECT 1 FROM enrollments e WHERE e.subscriber_id = ss.subscriber_id
                            AND ss.stream = 'series:' || e.series);
        """
    )


@migrations(name="0016_webinar_verifications")
def m0016_webinar_verifications(db: sqlite_utils.Database) -> None:
    """Webinar registrations that wait for the address's owner (issue 10, item 2).

    Someone who unsubscribed, bounced, complained or was erased can only be
    registered for a webinar by confirming a link sent to the address.  One row
    per (webinar, subscriber): ``nonce`` is in the link and is cleared when it
    is used; the address itself is only in the outbox row that carries the
    link (``outbox_id``), which for an erased person is the one place it is.
    """
    db.executescript(
        """
        CREATE TABLE webinar_verifications (
            id INTEGER PRIMARY KEY,
            webinar_id INTEGER NOT NULL REFERENCES webinars(id) ON DELETE CASCADE,
            subscriber_id INTEGER NOT NULL REFERENCES subscribers(id) ON DELETE CASCADE,
            nonce TEXT,                        -- in the link; NULL once used
            outbox_id INTEGER REFERENCES outbox(id) ON DELETE SET NULL,
            requested_at TEXT NOT NULL,
            confirmed_at TEXT,
            UNIQUE (webinar_id, subscriber_id)
        );
        """
    )


@migrations(name="0017_views")
def m0017_views(db: sqlite_utils.Database) -> None:
    """What each sent email showed, so view-in-browser (``/m/``) shows it again.

    ``views`` holds one row per sent outbox row: the moment the message was
    built (the "now" its links were signed with, so re-rendering signs the
    very same tokens and no link outlives the emailed one) and the builder's
    per-recipient values (confirm, registration and offer links as sent, the
    first name).  The content shared by many recipients (subject, body,
    calls to action) is stored once in ``view_contents``, keyed by its digest.
    A purged outbox row takes its view with it; erasing a subscriber deletes
    their views (subscribers/lifecycle.py).
    """
    db.executescript(
        """
        CREATE TABLE view_contents (
            id INTEGER PRIMARY KEY,
            digest TEXT NOT NULL UNIQUE,     -- sha256 of the canonical JSON below
            content TEXT NOT NULL            -- JSON: kind, subject, preheader, body_md, ctas, extra, bulk, list_id
        );
        CREATE TABLE views (
            outbox_id INTEGER PRIMARY KEY REFERENCES outbox(id) ON DELETE CASCADE,
            content_id INTEGER NOT NULL REFERENCES view_contents(id),
            built_at TEXT NOT NULL,          -- UTC ISO; the "now" the message was built with
            recipient TEXT NOT NULL          -- JSON: the builder's per-recipient values + first_name
        );
        """
    )


@migrations(name="0011_heartbeats")
def m0011_heartbeats(db: sqlite_utils.Database) -> None:
    """When each long-lived part last showed it was alive (funnel/health.py).

    ``worker`` is stamped by every scheduler tick and sending batch (the worker
    loop and ``funnel send`` alike); ``web`` by each ``/healthz`` answer, which
    doubles as the check that the database still takes a write.
    """
    db.executescript(
        """
        CREATE TABLE heartbeats (
            name TEXT PRIMARY KEY CHECK (name IN ('worker', 'web')),
            at TEXT NOT NULL
        );
        """
    )


@migrations(name="0012_held_config")
def m0012_held_config(db: sqlite_utils.Database) -> None:
    """A row that cannot be built because of a setting (a CTA without a URL, a
    template error) stays ``queued`` with the reason in ``last_error``;
    ``held_config`` holds the configuration fingerprint it failed under, and
    the sender skips it until the fingerprint changes (campaigns/sender.py)."""
    db.executescript(
        """
        ALTER TABLE outbox ADD COLUMN held_config TEXT;
        CREATE INDEX outbox_held ON outbox(held_config) WHERE held_config IS NOT NULL;
        """
    )


@migrations(name="0018_appointments")
def m0018_appointments(db: sqlite_utils.Database) -> None:
    """Appointment requests from ``/appointment`` and the ledger of their webhook deliveries.

    A request keeps what the form asked (contact details, method, preferred
    times, reason), the contact consent, where the reader came from
    (``attr_*``, all nullable) and its status with timestamped notes (JSON).
    It is purged after ``appointment_retention_days`` and by erase (matched on
    ``email``).  ``appointment_webhooks`` is the retry ledger of the signed
    POST to ``appointment_webhook_url``: one row per request, retried with
    backoff until ``deadline_at``, then ``failed``; the request itself never
    depends on it.
    """
    db.executescript(
        f"""
        CREATE TABLE appointments (
            id INTEGER PRIMARY KEY,
            status TEXT NOT NULL DEFAULT 'new' {_check("status", APPOINTMENT_STATES)},
            name TEXT NOT NULL,
            email TEXT,                        -- normalised; NULL when only a phone was given
            phone TEXT,
            contact_method TEXT NOT NULL {_check("contact_method", CONTACT_METHODS)},
            preferred_times TEXT NOT NULL DEFAULT '[]',   -- JSON list of keys
            reason TEXT NOT NULL DEFAULT '',
            consent_text TEXT NOT NULL,        -- the contact-consent sentence shown
            newsletter INTEGER NOT NULL DEFAULT 0,
            source TEXT NOT NULL DEFAULT '',
            notes TEXT NOT NULL DEFAULT '[]',  -- JSON list of {{at, status, note}}
            attr_click_id INTEGER,
            attr_kind TEXT,
            attr_series TEXT,
            attr_step TEXT,
            attr_broadcast_id INTEGER,
            attr_webinar TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            contacted_at TEXT,
            booked_at TEXT,
            closed_at TEXT,
            CHECK (email IS NOT NULL OR phone IS NOT NULL)
        );
        CREATE INDEX appointments_created ON appointments(created_at);
        CREATE INDEX appointments_status ON appointments(status, created_at);
        CREATE INDEX appointments_email ON appointments(email) WHERE email IS NOT NULL;

        CREATE TABLE appointment_webhooks (
            id INTEGER PRIMARY KEY,
            appointment_id INTEGER NOT NULL UNIQUE REFERENCES appointments(id) ON DELETE CASCADE,
            status TEXT NOT NULL DEFAULT 'pending' {_check("status", WEBHOOK_STATES)},
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT NOT NULL,
            deadline_at TEXT NOT NULL,         -- retried until then, then failed
            http_status INTEGER,
            last_error TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            delivered_at TEXT
        );
        CREATE INDEX appointment_webhooks_due ON appointment_webhooks(next_attempt_at)
            WHERE status = 'pending';
        """
    )


@migrations(name="0019_clicks")
def m0019_clicks(db: sqlite_utils.Database) -> None:
    """Click tracking and opens (issue 12, part 2; campaigns/clicks.py).

    ``click_links`` keeps each distinct list of links a tracked content has
    (JSON ``[["u", url] | ["r", recipient key], ...]``), once; a sent row's
    view names its list (``views.links_id``), so ``/c/TOKEN.N`` redirects only
    to link N of that very message.  ``clicks`` holds no address, IP or user
    agent: the row, the link, the moment, the verdict and, for a scanner,
    why.  ``link`` is the address for a fixed link, ``{key}`` for a
    per-recipient one (whose address carries a personal token).  Only one
    ``human`` click per row and link (the unique index); ``opens`` is filled
    only with ``track_opens``.
    """
    db.executescript(
        f"""
        CREATE TABLE click_links (
            id INTEGER PRIMARY KEY,
            digest TEXT NOT NULL UNIQUE,
            links TEXT NOT NULL
        );
        ALTER TABLE views ADD COLUMN links_id INTEGER REFERENCES click_links(id);
        CREATE TABLE clicks (
            id INTEGER PRIMARY KEY,
            outbox_id INTEGER NOT NULL REFERENCES outbox(id) ON DELETE CASCADE,
            link_index INTEGER NOT NULL,
            link TEXT NOT NULL,
            at TEXT NOT NULL,
            verdict TEXT NOT NULL {_check("verdict", CLICK_VERDICTS)},
            reason TEXT
        );
        CREATE UNIQUE INDEX clicks_first_human ON clicks(outbox_id, link_index)
            WHERE verdict = 'human';
        CREATE INDEX clicks_outbox ON clicks(outbox_id, at);
        CREATE TABLE opens (
            id INTEGER PRIMARY KEY,
            outbox_id INTEGER NOT NULL REFERENCES outbox(id) ON DELETE CASCADE,
            at TEXT NOT NULL,
            apple INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX opens_outbox ON opens(outbox_id);
        """
    )


# --- admin console (issue 13) ---
def _widen_event_kinds(db: sqlite_utils.Database) -> None:
    """Rebuild ``events`` so its CHECK allows every kind in EVENT_KINDS.

    SQLite cannot alter a CHECK constraint; the table is copied into a new one
    with the same columns, indexes and triggers (reader_bits, migration 0032).
    Later migrations that add event kinds call this again (it reads the
    current definition, so added columns stay).
    """
    sql = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'events'").fetchone()[0]
    wanted = _check("kind", EVENT_KINDS)
    new_sql, n = re.subn(r"CHECK \(kind IN \([^)]*\)\)", wanted, sql, count=1)
    if n != 1 or new_sql == sql:
        return
    schema = [r[0] for r in db.execute(  # indexes first: the triggers' queries may use them
        "SELECT sql FROM sqlite_master WHERE type IN ('index', 'trigger') AND tbl_name = 'events' "
        "AND sql IS NOT NULL ORDER BY type = 'trigger'"
    ).fetchall()]
    db.execute(new_sql.replace("CREATE TABLE events", "CREATE TABLE events_widened", 1))
    db.execute("INSERT INTO events_widened SELECT * FROM events")
    db.execute("DROP TABLE events")
    db.execute("ALTER TABLE events_widened RENAME TO events")
    for sql in schema:
        db.execute(sql)


@migrations(name="0021_admin")
def m0021_admin(db: sqlite_utils.Database) -> None:
    """The admin console: users, server-side sessions, the login throttle.

    ``admin_sessions`` stores a hash of each session id, never the id itself;
    ``stage`` is 'totp' or 'enrol' between the password and the second factor.
    ``admin_throttle`` counts failed logins per key ('account:<email>' or
    'ip:<address>'), known accounts and unknown ones alike.  The events log
    gains the 'admin' kind for the audit trail.
    """
    _widen_event_kinds(db)
    db.executescript(
        """
        CREATE TABLE admin_users (
            id INTEGER PRIMARY KEY,
            email TEXT NOT NULL UNIQUE COLLATE NOCASE,
            password_hash TEXT NOT NULL,
            totp_secret TEXT,                  -- base32; NULL = no second factor
            totp_last_step INTEGER,            -- the last TOTP time step used (no replays)
            disabled_at TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE admin_sessions (
            id_hash TEXT PRIMARY KEY,          -- sha256 of the cookie value
            user_id INTEGER NOT NULL REFERENCES admin_users(id) ON DELETE CASCADE,
            stage TEXT NOT NULL CHECK (stage IN ('active', 'totp', 'enrol')),
            pending_totp TEXT,                 -- the secret offered on the enrol page
            created_at TEXT NOT NULL,
            last_seen_at TEXT NOT NULL,
            ip TEXT NOT NULL DEFAULT '',
            last_ip TEXT NOT NULL DEFAULT '',
            user_agent TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX admin_sessions_user ON admin_sessions(user_id);
        CREATE TABLE admin_throttle (
            key TEXT PRIMARY KEY,
            failures INTEGER NOT NULL DEFAULT 0,
            first_at TEXT NOT NULL,
            locked_until TEXT
        );
        CREATE INDEX subscribers_name_nocase ON subscribers(name COLLATE NOCASE);
        CREATE INDEX subscribers_email_nocase ON subscribers(email COLLATE NOCASE);
        """
    )


@migrations(name="0020_completed_event")
def m0020_completed_event(db: sqlite_utils.Database) -> None:
    """``completed``: a reader was sent the last step of a series (the 28-day
    programme's finish line in ``funnel report``).  The events table's CHECK
    widens to the current ``EVENT_KINDS``."""
    _widen_event_kinds(db)


@migrations(name="0023_feed_watches")
def m0023_feed_watches(db: sqlite_utils.Database) -> None:
    """Feeds watched for new posts (campaigns/feeds.py, `funnel feed watch`).

    ``feed_watches`` holds each URL, how often it is checked and the validators
    of the last answer (conditional GET).  ``synced_at`` is the last successful
    read: the first one only records what the feed already holds.
    ``feed_entries`` is the dedupe ledger, one row per entry id (or link); a new
    entry's draft broadcast is ``campaign_id`` (NULL while it waits for the
    weekly digest; baseline rows never get one).
    """
    db.executescript(
        """
        CREATE TABLE feed_watches (
            id INTEGER PRIMARY KEY,
            url TEXT NOT NULL UNIQUE,
            every_seconds INTEGER NOT NULL CHECK (every_seconds >= 60),
            digest TEXT NOT NULL DEFAULT 'none' CHECK (digest IN ('none', 'weekly')),
            allow_private INTEGER NOT NULL DEFAULT 0 CHECK (allow_private IN (0, 1)),
            etag TEXT,
            last_modified TEXT,
            next_check_at TEXT NOT NULL,
            last_checked_at TEXT,
            synced_at TEXT,
            last_error TEXT,
            digest_due_at TEXT,
            created_at TEXT NOT NULL
        );
        CREATE TABLE feed_entries (
            id INTEGER PRIMARY KEY,
            watch_id INTEGER NOT NULL REFERENCES feed_watches(id) ON DELETE CASCADE,
            entry_key TEXT NOT NULL,
            title TEXT NOT NULL,
            link TEXT,
            body_md TEXT NOT NULL DEFAULT '',
            baseline INTEGER NOT NULL DEFAULT 0 CHECK (baseline IN (0, 1)),
            campaign_id INTEGER REFERENCES campaigns(id) ON DELETE SET NULL,
            seen_at TEXT NOT NULL,
            UNIQUE (watch_id, entry_key)
        );
        """
    )


@migrations(name="0025_ab_subjects")
def m0025_ab_subjects(db: sqlite_utils.Database) -> None:
    """A/B subjects for a broadcast (issue 12, part 3; campaigns/broadcasts.py).

    The campaign's own ``subject`` is variant A; ``subject_b`` is B.  When the
    campaign starts, an equal random slice of ``test_share`` of the audience
    gets each variant (the outbox row's data says which: ``{"variant": "B"}``)
    and ``decide_at`` is set; at that moment the worker picks the variant with
    more human clicks (A on a tie or under the minimum; ``reason`` says why)
    and queues it to everyone else.
    """
    db.executescript(
        """
        CREATE TABLE ab_tests (
            campaign_id INTEGER PRIMARY KEY REFERENCES campaigns(id) ON DELETE CASCADE,
            subject_b TEXT NOT NULL,
            test_share REAL NOT NULL CHECK (test_share > 0 AND test_share < 1),
            decide_after_seconds INTEGER NOT NULL CHECK (decide_after_seconds > 0),
            test_queued_at TEXT,
            decide_at TEXT,
            decided_at TEXT,
            winner TEXT CHECK (winner IN ('A', 'B')),
            clicks_a INTEGER,
            clicks_b INTEGER,
            reason TEXT
        );
        CREATE INDEX ab_tests_due ON ab_tests(decide_at) WHERE decided_at IS NULL;
        """
    )


@migrations(name="0024_report_index")
def m0024_report_index(db: sqlite_utils.Database) -> None:
    """``funnel report`` counts distinct readers per event kind (and per series
    step ref) in a time window.  With (kind, at) alone every matching event was
    looked up in the table for its reader and ref: 7.8 s over 1M events.  This
    index carries both, so the report reads the index only; it replaces
    (kind, at), which it extends."""
    db.executescript(
        """
        CREATE INDEX events_kind_at_reader ON events(kind, at, subscriber_id, ref);
        DROP INDEX events_kind_at;
        """
    )


@migrations(name="0026_enrollments_due_keyset")
def m0026_enrollments_due_keyset(db: sqlite_utils.Database) -> None:
    """The scheduler walks due enrollments in keyset order (next_due_at,
    subscriber_id, series).  With (next_due_at) alone each chunk re-read and
    sorted every row sharing the cursor's due time (half a million after a
    bulk enrolment: quadratic).  This index carries the whole key, so a chunk
    is one index seek; it replaces (next_due_at), which it extends."""
    db.executescript(
        """
        CREATE INDEX enrollments_due_keyset ON enrollments(next_due_at, subscriber_id, series)
            WHERE status = 'active';
        DROP INDEX enrollments_due;
        """
    )


@migrations(name="0030_clicks_at")
def m0030_clicks_at(db: sqlite_utils.Database) -> None:
    """The console's dashboard counts human clicks in a time window; without
    this index that count read the whole clicks table on every page load."""
    db.executescript("CREATE INDEX clicks_verdict_at ON clicks(verdict, at);")


@migrations(name="0027_report_scale")
def m0027_report_scale(db: sqlite_utils.Database) -> None:
    """``funnel report`` at 10M events and 5M outbox rows (issue 15, part 4).

    Each funnel step is a set of distinct readers; read through (kind, at, ...)
    every reader's events had to be de-duplicated in a temporary b-tree.  In
    (kind, ref, reader) order the distinct readers of each kind and ref come out
    already sorted, so the report reads them in one pass.  The click-rate table
    counts the messages sent per (kind, ref): a partial index of the sent rows in
    that order replaces a read of the whole outbox (``status`` is in it so that
    the count reads the index alone; a query that repeats the index's WHERE
    terms skips testing them on each row: half the time).  series_deliveries_part gains the step key
    and the reader, so the report's known parts and a ``series:SLUG>=N``
    segment read that index alone."""
    db.executescript(
        """
        CREATE INDEX events_kind_ref_reader ON events(kind, ref, subscriber_id, at);
        CREATE INDEX outbox_sent_kind_ref ON outbox(kind, ref, campaign_id, sent_at, status)
            WHERE status = 'sent' AND sent_at IS NOT NULL;
        DROP INDEX series_deliveries_part;
        CREATE INDEX series_deliveries_part ON series_deliveries(series, part, step_key, subscriber_id);
        """
    )


@migrations(name="0031_outbox_fewer_indexes")
def m0031_outbox_fewer_indexes(db: sqlite_utils.Database) -> None:
    """Queueing series steps at 1M readers (issue 15, part 4): every outbox insert
    wrote seven indexes.  Two go:

    * ``outbox_due (due_at, priority)`` duplicated ``outbox_claim (priority,
      due_at, id)`` over the same unsent rows.  The queries that read a due_at
      range (``outbox.due_count``, ``enrollment.defer_held``) now seek
      ``outbox_claim`` once per priority in use (``outbox.DUE_PRIORITIES``).
    * ``outbox_campaign`` becomes partial (``campaign_id IS NOT NULL``): series
      steps and transactional mail have no campaign, and every query on it asks
      for one campaign, which implies NOT NULL, so the planner still uses it."""
    db.executescript(
        """
        DROP INDEX outbox_due;
        DROP INDEX outbox_campaign;
        CREATE INDEX outbox_campaign ON outbox(campaign_id, status) WHERE campaign_id IS NOT NULL;
        """
    )


#: The events kept in reader_bits (migration 0032), as a condition on an events
#: row called ``{e}``: the kinds ``funnel report`` counts by reader; ``sent`` and
#: ``enrolled`` only for series refs (a broadcast's sends are not funnel steps).
READER_BITS_EVENT = (
    "{e}.subscriber_id IS NOT NULL AND ({e}.kind IN "
    "('subscribed', 'confirmed', 'invited', 'registered', 'attended', 'clicked_offer') "
    "OR ({e}.kind IN ('sent', 'enrolled') AND {e}.ref LIKE 'series:%'))"
)
#: Its reader_bits ref: the event's own for sent and enrolled, '' (every ref) for the rest.
READER_BITS_REF = "CASE WHEN {e}.kind IN ('sent', 'enrolled') THEN {e}.ref ELSE '' END"
#: reader_bits computed from the events (the migration's backfill; the tests' reference).
#: The readers of one word are distinct, so their bits never overlap: SUM is OR.
#: ``{since}`` narrows the events read: nothing here, ``e.id > ? AND `` below.
_READER_BITS_GROUPED = (
    "SELECT kind, ref, sid >> 6 AS word, SUM(1 << (sid & 63)) AS bits FROM ("
    "SELECT DISTINCT e.kind, " + READER_BITS_REF.format(e="e") + " AS ref, e.subscriber_id AS sid "
    "FROM events e WHERE {since}" + READER_BITS_EVENT.format(e="e") + ") GROUP BY kind, ref, word"
)
READER_BITS_FROM_EVENTS = _READER_BITS_GROUPED.format(since="")

#: reader_bits ORed in from the events after a given id (see reader_bits_after).
_READER_BITS_SINCE = (
    "INSERT INTO reader_bits (kind, ref, word, bits) SELECT * FROM ("
    + _READER_BITS_GROUPED.format(since="e.id > ? AND ")
    + ") WHERE true ON CONFLICT (kind, ref, word) DO UPDATE SET bits = bits | excluded.bits"
)


@migrations(name="0032_reader_bits")
def m0032_reader_bits(db: sqlite_utils.Database) -> None:
    """``funnel report`` under 2 s at 10M events (issue 15, part 4): who has had
    each event kind, as a bitmap.

    The report's steps are sets of readers, and its containment rule compares
    them (a step's percentage is of the nearest step above that holds all its
    readers).  Read from the events, that is one index entry per event, ~8M at
    1M readers.  reader_bits keeps the same sets as 64 readers per row: bit
    ``subscriber_id & 63`` of the row ``word = subscriber_id >> 6``, per event
    kind (and series ref, for ``sent`` and ``enrolled``), so an all-time report
    reads 1/64 of the rows.  The triggers keep it in the same transaction as the
    event: an insert ORs the reader's bit in; a delete, or an update of the
    reader, kind or ref (a deleted subscriber's events are set to NULL) clears
    it once no such event of that reader is left.  reader_bits_word finds a
    reader's rows; only a new row touches it, not a bit set in an existing one."""
    new_event, old_event = READER_BITS_EVENT.format(e="NEW"), READER_BITS_EVENT.format(e="OLD")
    new_ref, old_ref = READER_BITS_REF.format(e="NEW"), READER_BITS_REF.format(e="OLD")
    # The row is nearly always there: UPDATE, then INSERT only when it changed nothing
    # (changes() is the trigger's own last statement's).  An UPSERT cost 3x as much CPU.
    set_bit = (
        f"UPDATE reader_bits SET bits = bits | (1 << (NEW.subscriber_id & 63)) WHERE {new_event} "
        f"AND kind = NEW.kind AND ref = {new_ref} AND word = NEW.subscriber_id >> 6; "
        f"INSERT OR IGNORE INTO reader_bits (kind, ref, word, bits) SELECT NEW.kind, {new_ref}, "
        f"NEW.subscriber_id >> 6, 1 << (NEW.subscriber_id & 63) WHERE changes() = 0 AND {new_event};"
    )
    clear_bit = (
        f"UPDATE reader_bits SET bits = bits & ~(1 << (OLD.subscriber_id & 63)) WHERE {old_event} "
        f"AND kind = OLD.kind AND ref = {old_ref} AND word = OLD.subscriber_id >> 6 "
        "AND NOT EXISTS (SELECT 1 FROM events e WHERE e.subscriber_id = OLD.subscriber_id "
        "AND e.kind = OLD.kind AND (OLD.kind NOT IN ('sent', 'enrolled') OR e.ref = OLD.ref));"
    )
    db.executescript(
        f"""
        CREATE TABLE reader_bits (
            kind TEXT NOT NULL,
            ref TEXT NOT NULL,
            word INTEGER NOT NULL,
            bits INTEGER NOT NULL,
            PRIMARY KEY (kind, ref, word)
        ) WITHOUT ROWID;
        INSERT INTO reader_bits (kind, ref, word, bits) {READER_BITS_FROM_EVENTS};
        CREATE INDEX reader_bits_word ON reader_bits(word);
        CREATE TRIGGER reader_bits_insert AFTER INSERT ON events WHEN {new_event}
        BEGIN {set_bit} END;
        CREATE TRIGGER reader_bits_delete AFTER DELETE ON events WHEN {old_event}
        BEGIN {clear_bit} END;
        CREATE TRIGGER reader_bits_update AFTER UPDATE OF kind, ref, subscriber_id ON events
        BEGIN {clear_bit} {set_bit} END;
        """
    )


@migrations(name="0033_outbox_failed")
def m0033_outbox_failed(db: sqlite_utils.Database) -> None:
    """The dashboard's outbox health without reading the whole outbox.

    It counts the rows waiting (queued, retrying: outbox_claim holds them) and the
    last 30 days' failures per relay.  The failures had no index, so the query
    read every row: 0.4 s at 500k rows, seconds at 5M, on every dashboard load.
    Failed rows are few, so this partial index costs next to nothing to keep."""
    db.executescript("CREATE INDEX outbox_failed ON outbox(updated_at) WHERE status = 'failed';")
