"""Is this installation healthy?  What ``/healthz`` answers.

Three things can stop a running funnel without anyone noticing:

- the database no longer takes a write (read-only file or mount, locked for
  longer than the busy timeout, an I/O error);
- the disk holding it is (nearly) full, so the next signup fails;
- nothing sends mail: neither ``funnel worker`` nor a cron ``funnel send``
  has ticked recently, so confirmations wait forever.

The worker loop and ``funnel send`` stamp the ``worker`` heartbeat on every
scheduler tick and every sending batch (:func:`beat`), with the clock they
were given.  :func:`problems` compares it with the caller's ``now``.

The check is cheap: one ``statvfs``, one single-row upsert (which is also the
write test) and one primary-key read.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
from datetime import datetime
from pathlib import Path

import sqlite_utils

from .db import iso, parse_iso, pending_migrations, transaction
from .errors import DatabaseError
from .settings import Settings

HEARTBEATS = ("worker", "web")
MB = 1024 * 1024


def beat(db: sqlite_utils.Database, name: str, now: datetime) -> None:
    """Record that ``name`` (``worker`` or ``web``) was alive at ``now``."""
    if name not in HEARTBEATS:
        raise ValueError(f"unknown heartbeat {name!r}")
    with transaction(db):
        db.execute(
            "INSERT INTO heartbeats (name, at) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET at = excluded.at",
            (name, iso(now)),
        )


def last_beat(db: sqlite_utils.Database, name: str) -> datetime | None:
    row = db.execute("SELECT at FROM heartbeats WHERE name = ?", (name,)).fetchone()
    return parse_iso(row[0]) if row else None


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Checker:
    """:func:`problems`, with the write test run at most every ``write_every`` seconds.

    A probe hammering ``/healthz`` must not turn into a stream of fsyncs: after a
    write succeeded, the next ``write_every`` seconds (by the caller's clock)
    skip it.  After a failure every call tries again, so recovery shows at once.
    """

    def __init__(self, write_every: float = 5.0):
        self.write_every = write_every
        self._last_write_ok: datetime | None = None
        self._lock = threading.Lock()

    def problems(self, db: sqlite_utils.Database, settings: Settings, now: datetime) -> list[str]:
        with self._lock:
            last = self._last_write_ok
        fresh = last is not None and 0 <= (now - last).total_seconds() < self.write_every
        found = problems(db, settings, now, write=not fresh)
        if not fresh:
            ok = not any(p.startswith(("database:", "disk: full")) for p in found)
            with self._lock:
                self._last_write_ok = now if ok else None
        return found


def problems(
    db: sqlite_utils.Database, settings: Settings, now: datetime, *, write: bool = True
) -> list[str]:
    """Every reason the site is not healthy now, one short line each ([] = healthy).

    ``write=False`` skips the write test (see :class:`Checker`).
    """
    found: list[str] = []
    pending = pending_migrations(db)
    if pending:
        found.append(f"database: migrations pending ({', '.join(pending)}); run `funnel init`")
        return found  # the tables below may not exist yet

    folder = Path(settings.db).resolve().parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        found.append(f"disk: cannot read free space of {folder} ({exc.strerror or exc})")
    else:
        if free < settings.healthz_min_free_mb * MB:
            found.append(
                f"disk: only {free / MB:.1f} MB free for {folder} "
                f"(healthz_min_free_mb = {settings.healthz_min_free_mb:g})"
            )

    try:
        if write:
            beat(db, "web", now)
    except (DatabaseError, sqlite3.Error) as exc:
        text = str(exc)
        if "full" in text:
            found.append(f"disk: full, the database cannot grow ({text})")
        else:
            found.append(f"database: not writable ({text})")

    limit = settings.healthz_worker_seconds
    if limit > 0:
        last = last_beat(db, "worker")
        if last is None:
            found.append(
                "worker: has never ticked; run `funnel worker` or cron `funnel send` every minute"
            )
        else:
            age = (now - last).total_seconds()
            if age > limit:
                found.append(
                    f"worker: last tick {_ago(age)} ago (healthz_worker_seconds = {limit:g}); "
                    "is `funnel worker` or cron `funnel send` running?"
                )
    return found


__all__ = ["beat", "last_beat", "problems", "Checker", "HEARTBEATS"]
