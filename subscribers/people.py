"""The admin console's People screen: search, one person's page, the actions on them.

Search is keyset-paged, newest first (``id < before``), and built so that
SQLite answers it from indexes at a million rows: the text matches a prefix
of the address or of the name through the two NOCASE indexes of migration
0021 (an OR of two index ranges), and the filters are segment expressions
(subscribers/segments.py), so user text only ever becomes bound parameters.
``bench/admin_search.py`` measures it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import BinaryIO

from funnel.db import SUBSCRIBER_STATES
from funnel.errors import InputError, RowsRejected
from funnel.settings import Settings

from . import lifecycle, optin, segments
from .io import ImportReport, Preview, import_csv, preview_csv, write_export

PAGE = 50
#: Larger than any character a prefix can continue with (the range's upper end).
_TOP = "\U0010ffff"


@dataclass(frozen=True)
class Filters:
    q: str = ""
    status: str = ""
    stream: str = ""
    series: str = ""  # a series slug ...
    step: int | None = None  # ... and the part reached (>=)
    segment: str = ""  # expressions, comma-separated, e.g. "tz=Europe/London, segment:engaged"

    def expressions(self) -> list[str]:
        exprs = []
        if self.status:
            if self.status not in SUBSCRIBER_STATES:
                raise InputError(f"status: {self.status!r} is not one of {', '.join(SUBSCRIBER_STATES)}")
            exprs.append(f"status={self.status}")
        if self.stream:
            exprs.append(f"stream={self.stream}")
        if self.series:
            exprs.append(f"series:{self.series}>={self.step if self.step is not None else 1}")
        exprs += [e.strip() for e in self.segment.split(",") if e.strip()]
        return exprs


@dataclass(frozen=True)
class Page:
    rows: list[dict]
    next_before: int | None  # pass as ``before`` for the next page; None = last page


def search(db, settings: Settings, filters: Filters, now: datetime, *,
           before: int | None = None, limit: int = PAGE) -> Page:
    """People matching the text and filters, newest first, ``limit`` a page."""
    clauses, params = ["1"], []
    exprs = filters.expressions()
    if exprs:
        sql, p = segments.compile_segment(settings, None, where=exprs, now=now)
        clauses.append(f"({sql})")
        params += p
    text = filters.q.strip()
    if text:
        clauses.append(
            "((s.email COLLATE NOCASE >= ? AND s.email COLLATE NOCASE < ?) "
            "OR (s.name COLLATE NOCASE >= ? AND s.name COLLATE NOCASE < ?))"
        )
        params += [text, text + _TOP, text, text + _TOP]
    if before is not None:
        clauses.append("s.id < ?")
        params.append(before)
    rows = db.execute(
        "SELECT s.id, s.email, s.name, s.timezone, s.status, s.created_at FROM subscribers s "
        f"WHERE {' AND '.join(clauses)} ORDER BY s.id DESC LIMIT ?",
        (*params, limit + 1),
    ).fetchall()
    keys = ("id", "email", "name", "timezone", "status", "created_at")
    found = [dict(zip(keys, r, strict=True)) for r in rows[:limit]]
    return Page(found, found[-1]["id"] if len(rows) > limit else None)


# ----------------------------------------------------------------- one person
@dataclass(frozen=True)
class Person:
    subscriber: lifecycle.Subscriber
    streams: dict[str, dict]
    consent: list[dict]
    bounce_score: float
    suppressed: bool


def person(db, subscriber_id: int) -> Person:
    sub = lifecycle.get(db, subscriber_id)
    consent = [
        dict(zip(("purpose", "action", "at", "source", "ip", "user_agent", "version", "note"), r,
                 strict=True))
        for r in db.execute(
            "SELECT purpose, action, at, source, ip, user_agent, consent_text_version, note "
            "FROM consent WHERE subscriber_id = ? ORDER BY id", (subscriber_id,)
        ).fetchall()
    ]
    score, email_hash = db.execute(
        "SELECT bounce_score, email_hash FROM subscribers WHERE id = ?", (subscriber_id,)
    ).fetchone()
    suppressed = db.execute(
        "SELECT 1 FROM suppressions WHERE email_hash = ?", (email_hash,)
    ).fetchone() is not None
    return Person(sub, lifecycle.subscriptions(db, subscriber_id), consent, score, suppressed)


def resend_confirmation(db, settings: Settings, subscriber_id: int, now: datetime) -> str:
    """Send a waiting person their confirmation again (at most once per
    ``confirm_resend_hours``); returns 'resent' or 'throttled'."""
    sub = lifecycle.get(db, subscriber_id)
    if sub.status != "pending" or sub.email is None:
        raise InputError(f"status: {sub.email or 'this person'} is {sub.status}; only a person "
                         "waiting to confirm can be sent the confirmation again")
    return optin.signup(db, settings, sub.email, now, source="admin").action


def export_json(db, subscriber_id: int) -> str:
    """What ``funnel subscribers export --format json --email`` writes for this person."""
    sub = lifecycle.get(db, subscriber_id)
    if sub.email is None:
        raise InputError("email: this person was erased; nothing is left to export")
    out = StringIO()
    write_export(db, out, "json", sub.email)
    return out.getvalue()




# ----------------------------------------------------------------- CSV upload
UPLOAD_LIMIT = 50 * 1024 * 1024
UPLOAD_KEEP = timedelta(days=1)
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _upload_dir(settings: Settings) -> Path:
    return Path(settings.db).resolve().parent / "admin-imports"


def staged_path(settings: Settings, token: str) -> Path:
    if not token or len(token) > 64 or not set(token) <= _TOKEN_CHARS:
        raise InputError("file: the upload has expired; choose the file again")
    path = _upload_dir(settings) / f"{token}.csv"
    if not path.is_file():
        raise InputError("file: the upload has expired; choose the file again")
    return path


def stage_upload(settings: Settings, stream: BinaryIO, filename: str, now: datetime) -> str:
    """Keep an uploaded CSV until the admin confirms the import; returns its token.

    More than :data:`UPLOAD_LIMIT` bytes is refused (nothing kept).  Uploads
    older than a day are removed here.
    """
    folder = _upload_dir(settings)
    folder.mkdir(mode=0o700, exist_ok=True)
    for old in folder.glob("*.csv"):
        if datetime.fromtimestamp(old.stat().st_mtime, now.tzinfo) < now - UPLOAD_KEEP:
            old.unlink(missing_ok=True)
    token = secrets.token_urlsafe(18)
    path = folder / f"{token}.csv"
    size = 0
    with path.open("wb") as out:
        while chunk := stream.read(1 << 20):
            size += len(chunk)
            if size > UPLOAD_LIMIT:
                out.close()
                path.unlink(missing_ok=True)
                raise InputError(f"{filename}: the file is larger than 50 MB; split it, or import "
                                 "it on the server with `funnel subscribers import`")
            out.write(chunk)
    return token


def preview_upload(settings: Settings, token: str, filename: str) -> Preview:
    return preview_csv(staged_path(settings, token), shown_name=filename)


def import_upload(db, settings: Settings, token: str, filename: str, now: datetime, *,
                  pre_confirmed: bool = False, consent_note: str = "") -> ImportReport:
    """Import a staged upload exactly as ``funnel subscribers import`` does (all or nothing)."""
    path = staged_path(settings, token)
    try:
        report = import_csv(db, settings, path, now, pre_confirmed=pre_confirmed,
                            consent_note=consent_note, default_source="admin-upload")
    except RowsRejected as exc:
        exc.report.problems = [p.replace(str(path), filename, 1) for p in exc.report.problems]
        raise
    except InputError as exc:
        raise InputError(str(exc).replace(str(path), filename, 1)) from exc
    path.unlink(missing_ok=True)
    report.path = filename
    return report


__all__ = [
    "Filters",
    "Page",
    "Person",
    "export_json",
    "import_upload",
    "person",
    "preview_upload",
    "resend_confirmation",
    "search",
    "stage_upload",
    "staged_path",
]
