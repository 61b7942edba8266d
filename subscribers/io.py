"""CSV import and export, GDPR export and erase.

Import streams the file and inserts in batches inside ONE transaction: by
default the first bad row (or any bad row, all of which are reported) rolls
the whole file back, so a failed import stores nothing.  ``skip_invalid``
keeps the good rows and reports the rest.  Every problem is reported as
``file:line: reason``.
"""

from __future__ import annotations

import csv
import functools
import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from funnel import outbox
from funnel.db import db_path, indexes_built_after, iso, log_events, reader_bits_after, transaction
from funnel.errors import InputError, RowsRejected
from funnel.settings import Settings
from funnel.spreadsheet import SafeDictWriter

from . import lifecycle, optin, retention

REQUIRED = ("email",)
OPTIONAL = ("name", "timezone", "source")
ALIASES = {"e-mail": "email", "email address": "email", "tz": "timezone", "time zone": "timezone",
           "time_zone": "timezone", "first name": "name", "first_name": "name"}
BATCH = 400  # rows per batched lookup/insert (SQLite allows 32,766 bound parameters)
#: The import's page cache, KiB (the connection's usual one is 32 MB).  A big import
#: inserts into unique indexes in random key order (email, email_hash, the nocase
#: ones, the confirmations' message ids): past 32 MB every insert read a page back
#: and spilled a dirty one to the WAL, so the cost per row grew with the file
#: (1M rows: 86 µs of CPU a row, 132 s; with this cache 73 µs, 87 s; bench/import.py).
#: Pages are taken as they are used, and given back when the import ends.
IMPORT_CACHE_KIB = 1_048_576
#: The tables an import writes.  Those empty when it starts (a first import) get
#: their plain indexes built once at the end, not row by row (funnel.db.indexes_built_after).
IMPORT_TABLES = ("subscribers", "consent", "events", "outbox", "subscriptions")


@dataclass
class ImportReport:
    path: str
    imported: int = 0
    already_present: int = 0
    problems: list[str] = field(default_factory=list)
    committed: bool = False

    @property
    def bad_rows(self) -> int:
        return len(self.problems)


def _rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, row) from a UTF-8 CSV (BOM tolerated), streaming."""
    try:
        raw = path.open("rb")
    except OSError as exc:
        raise InputError(f"{path}: cannot open the file ({exc.strerror})") from exc
    with raw:
        head = raw.read(4)
        if not head.strip():
            raise InputError(f"{path}: the file is empty")
        raw.seek(0)

        def decoded_lines() -> Iterator[str]:
            # Decode line by line (not in buffered chunks) so a bad byte is
            # reported at its own physical line.
            for number, line in enumerate(raw, 1):
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise InputError(f"{path}:{number}: the file is not UTF-8 text ({exc.reason})") from exc
                yield text.lstrip("\ufeff") if number == 1 else text

        reader = csv.reader(decoded_lines())
        header = next(reader, None)
        if header is None or not any(h.strip() for h in header):
            raise InputError(f"{path}: the file is empty")
        names = [ALIASES.get(h.strip().lower(), h.strip().lower()) for h in header]
        missing = [c for c in REQUIRED if c not in names]
        if missing:
            raise InputError(
                f"{path}:1: missing column {missing[0]!r} (the header has: {', '.join(header)})"
            )
        unknown = [h for h, n in zip(header, names, strict=True) if n not in REQUIRED + OPTIONAL]
        if unknown:
            raise InputError(
                f"{path}:1: unknown column {unknown[0]!r}; columns are email, name, timezone, source"
            )
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise InputError(f"{path}:{reader.line_num}: {exc}") from exc
            if not any(v.strip() for v in values):
                continue
            if len(values) > len(names):
                yield reader.line_num, {"__error__": f"{len(values)} fields, but the header has {len(names)}"}
                continue
            yield reader.line_num, dict(zip(names, values, strict=False))


def import_csv(
    db,
    settings: Settings,
    path: Path,
    now: datetime,
    *,
    skip_invalid: bool = False,
    pre_confirmed: bool = False,
    consent_note: str = "",
    default_source: str = "import",
) -> ImportReport:
    """Import subscribers from CSV; see the module docstring for the rules."""
    path = Path(path)
    if pre_confirmed and not consent_note.strip():
        raise InputError("--consent-note: pre-confirmed imports need a note saying how these people consented")
    report = ImportReport(str(path))
    seen: dict[str, int] = {}
    with (_big_cache(db), transaction(db), indexes_built_after(db, IMPORT_TABLES),
          reader_bits_after(db)):
        writer = _BatchWriter(db, settings, path, now, pre_confirmed, consent_note)
        pending: list[tuple] = []  # validated rows waiting for one batched existence check
        for line, row in _rows(path):
            try:
                pending.append((line, *_clean_row(row, line, seen, default_source)))
            except InputError as exc:
                report.problems.append(f"{path}:{line}: {exc}")
                continue
            if len(pending) >= BATCH:
                writer.take(pending, report, write=skip_invalid or not report.problems)
        writer.take(pending, report, write=skip_invalid or not report.problems)
        if report.problems and not skip_invalid:
            raise RowsRejected(report)
    report.committed = True
    return report


@contextmanager
def _big_cache(db) -> Iterator[None]:
    """IMPORT_CACHE_KIB of page cache for the import; the connection's own size after."""
    (before,) = db.execute("PRAGMA cache_size").fetchone()
    db.execute(f"PRAGMA cache_size = -{IMPORT_CACHE_KIB}")
    try:
        yield
    finally:
        db.execute(f"PRAGMA cache_size = {int(before)}")
        db.execute("PRAGMA shrink_memory")


@dataclass
class Preview:
    """What an import would do, read without storing anything."""

    path: str
    rows: list[dict] = field(default_factory=list)  # the first good rows, cleaned
    good: int = 0
    problems: list[str] = field(default_factory=list)  # file:line: reason, as the import reports them


def preview_csv(path: Path, *, first: int = 10, default_source: str = "import",
                shown_name: str | None = None) -> Preview:
    """Check every row as :func:`import_csv` would (same ``file:line`` messages, same
    encoding and header errors) and keep the first ``first`` good rows; stores nothing.

    ``shown_name`` replaces the path in the messages (an upload's own file name).
    """
    path = Path(path)
    shown = shown_name or str(path)
    report = Preview(shown)
    seen: dict[str, int] = {}
    try:
        for line, row in _rows(path):
            try:
                email, _, name, tz, source = _clean_row(row, line, seen, default_source)
            except InputError as exc:
                report.problems.append(f"{shown}:{line}: {exc}")
                continue
            report.good += 1
            if len(report.rows) < first:
                report.rows.append({"line": line, "email": email, "name": name, "timezone": tz or "",
                                    "source": source})
    except InputError as exc:
        raise InputError(str(exc).replace(str(path), shown, 1)) from exc
    return report


def _clean_row(row: dict[str, str], line: int, seen: dict[str, int],
               default_source: str) -> tuple[str, str, str, str | None, str]:
    """(email, hash, name, timezone, source) of one CSV row, or InputError saying why not.

    *seen* holds the file's addresses so far (lower-cased -> line).
    """
    if "__error__" in row:
        raise InputError(row["__error__"])
    email = optin.clean_email(row.get("email", ""), field="email")
    key = email.lower()
    if key in seen:
        raise InputError(f"duplicate of line {seen[key]} ({email})")
    seen[key] = line
    name = optin.clean_name(row.get("name"), field="name")
    tz = _clean_zone(row.get("timezone"), "timezone")
    source = _clean_source(row.get("source") or default_source, "source")
    return email, lifecycle.email_hash(email), name, tz, source


#: Zones and sources repeat down a file, so each distinct value is checked once.
#: The checks are pure, and an exception is not cached: a bad value is still
#: reported on every line that has it.
_clean_zone = functools.lru_cache(maxsize=1024)(optin.clean_timezone)
_clean_source = functools.lru_cache(maxsize=1024)(optin.clean_source)


class _BatchWriter:
    """Writes new subscribers a batch at a time: the subscriber rows, their
    consent (through lifecycle's one consent writer), the events, and either
    their default streams (pre-confirmed) or their confirmation emails (the
    same outbox row as a form signup)."""

    def __init__(self, db, settings: Settings, path: Path, now: datetime,
                 pre_confirmed: bool, consent_note: str):
        self.db, self.settings, self.now = db, settings, now
        self.pre_confirmed = pre_confirmed
        self.stamp = iso(now)
        self.status = "active" if pre_confirmed else "pending"
        self.consent = lifecycle.Consent(
            0, "imported" if pre_confirmed else "requested", now, source=f"import:{path.name}",
            version=settings.consent_version, note=consent_note or None,
        )
        self.next_id = db.execute("SELECT COALESCE(MAX(id), 0) FROM subscribers").fetchone()[0] + 1
        self.existing = _ExistingLookup(db)

    def take(self, pending: list[tuple], report: ImportReport, *, write: bool) -> None:
        """Count and (unless the file will be rejected) write the pending rows."""
        if not pending:
            return
        known = self.existing.known([p[2] for p in pending])
        rows: list[tuple] = []
        for _line, email, h, name, tz, source in pending:
            if h in known:
                report.already_present += 1
                continue
            sid, self.next_id = self.next_id, self.next_id + 1
            report.imported += 1
            if write:  # else the file will be rejected: stop writing, keep checking
                rows.append((sid, email, h, name, tz, source))
        pending.clear()
        self._write(rows)

    def _write(self, rows: list[tuple]) -> None:
        if not rows:
            return
        db, stamp, pre = self.db, self.stamp, self.pre_confirmed
        db.conn.executemany(
            "INSERT INTO subscribers (id, email, email_hash, name, timezone, source, status, "
            "confirm_nonce, confirm_sent_at, created_at, updated_at, confirmed_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(*r, self.status, None if pre else secrets.token_urlsafe(12), None if pre else stamp,
              stamp, stamp, stamp if pre else None) for r in rows],
        )
        tail = self.consent[1:]
        lifecycle.record_consent(db, [lifecycle.Consent(r[0], *tail) for r in rows])
        log_events(db, [(stamp, "confirmed" if pre else "subscribed", r[0], "import") for r in rows])
        if pre:
            streams = optin.default_streams(self.settings)
            lifecycle.write_streams(db, [(r[0], s, "subscribed", None, stamp) for r in rows for s in streams])
        else:
            outbox.enqueue_many(
                db, self.settings,
                optin.confirmation_rows(self.settings, ((r[0], r[1]) for r in rows), self.now), self.now,
            )


class _ExistingLookup:
    """Is this address already in the database (or suppressed)?  Indexed lookups."""

    def __init__(self, db):
        self.db = db
        # Made inside the import's write transaction: when nobody is stored or suppressed
        # yet (a first import), nobody can be until it commits, and the file's own
        # duplicates are caught by _clean_row, so there is nothing to look up.
        self.empty = db.execute(
            "SELECT NOT EXISTS (SELECT 1 FROM subscribers) AND NOT EXISTS (SELECT 1 FROM suppressions)"
        ).fetchone()[0] == 1

    def known(self, hashes: list[str]) -> set[str]:
        if self.empty:
            return set()
        marks = ",".join("?" * len(hashes))
        return {
            r[0]
            for r in self.db.execute(
                f"SELECT email_hash FROM subscribers WHERE email_hash IN ({marks}) UNION "
                f"SELECT email_hash FROM suppressions WHERE email_hash IN ({marks})",
                (*hashes, *hashes),
            ).fetchall()
        }


# ----------------------------------------------------------------- add by hand
def add(db, settings: Settings, email: str, now: datetime, *, name: str = "", timezone: str | None = None,
        source: str = "admin") -> optin.SignupResult:
    """Add one subscriber by hand: the same double opt-in as the form."""
    return optin.signup(db, settings, email, now, name=name, timezone=timezone, source=source)


# ----------------------------------------------------------------- export
EXPORT_COLUMNS = ("email", "name", "timezone", "source", "status", "created_at", "confirmed_at",
                  "consent_at", "consent_source", "consent_ip", "consent_user_agent", "consent_text_version")


def export_records(db, email: str | None = None) -> Iterator[dict]:
    """One dict per subscriber, with streams and the full consent ledger."""
    if email is not None:
        sub = lifecycle.get_by_email(db, optin.clean_email(email))
        ids: list[int] | None = [sub.id]
    else:
        ids = None
    sql = ("SELECT id, email, name, timezone, source, status, created_at, confirmed_at FROM subscribers "
           "WHERE status != 'erased'")
    params: list = []
    if ids is not None:
        sql += " AND id = ?"
        params = ids
    cur = db.conn.cursor()
    for sid, em, name, tz, source, status, created, confirmed in cur.execute(sql + " ORDER BY id", params):
        consent = [
            dict(zip(("purpose", "action", "at", "source", "ip", "user_agent", "consent_text_version", "note"), c, strict=True))
            for c in db.execute(
                "SELECT purpose, action, at, source, ip, user_agent, consent_text_version, note "
                "FROM consent WHERE subscriber_id = ? ORDER BY id", (sid,)
            ).fetchall()
        ]
        yield {
            "email": em, "name": name, "timezone": tz, "source": source, "status": status,
            "created_at": created, "confirmed_at": confirmed,
            "streams": lifecycle.subscriptions(db, sid), "consent": consent,
        }


def write_export(db, out, fmt: str, email: str | None = None) -> int:
    """Write CSV or JSON to a text stream; returns the number of people written."""
    if fmt not in ("csv", "json"):
        raise InputError(f"--format: {fmt!r} is not csv or json")
    n = 0
    if fmt == "json":
        out.write("[\n")
        for rec in export_records(db, email):
            out.write((",\n" if n else "") + json.dumps(rec, ensure_ascii=False, indent=2))
            n += 1
        out.write("\n]\n")
        return n
    w = SafeDictWriter(out, fieldnames=EXPORT_COLUMNS)  # formula cells neutralised
    w.writeheader()
    for rec in export_records(db, email):
        # The CSV carries the consent that made them a subscriber: the latest
        # confirmed/imported entry, else the latest request.
        # Only entries since the last withdrawal count: after an unsubscribe and
        # a fresh signup, the old confirmation no longer stands.
        ledger = rec["consent"]
        last_out = max((i for i, c in enumerate(ledger) if c["action"] in ("withdrawn", "erased")), default=-1)
        current = ledger[last_out + 1 :] or ledger[-1:]
        chosen = next((c for c in reversed(current) if c["action"] in ("confirmed", "imported")), None) or (
            current[-1] if current else {}
        )
        w.writerow({
            **{k: rec[k] for k in ("email", "name", "timezone", "source", "status", "created_at", "confirmed_at")},
            "consent_at": chosen.get("at"), "consent_source": chosen.get("source"),
            "consent_ip": chosen.get("ip"), "consent_user_agent": chosen.get("user_agent"),
            "consent_text_version": chosen.get("consent_text_version"),
        })
        n += 1
    return n


# ----------------------------------------------------------------- erase
def erase(db, email: str, now: datetime) -> int:
    """Forget a person: only a hash of the address remains, on the suppression list.

    Their appointment requests are deleted too.  Returns 0 for someone who only
    ever asked for an appointment (no subscriber record).

    Removes name, address, zone and consent details everywhere they are
    stored, then VACUUMs and checkpoints the WAL so the address appears
    nowhere in the database file.  Returns the subscriber id.
    """
    address = optin.clean_email(email)
    sub = lifecycle.find(db, address)
    with transaction(db):
        # Their appointment requests go too (a requester need not be a subscriber).
        requests = retention.forget_appointments(db, "email = ? COLLATE NOCASE", (address,))
        if requests:
            _forget_devmail(db, address)
    if sub is None:
        # Suppress anyway: a request to be forgotten must also stop future mail.
        with transaction(db):
            db.execute(
                "INSERT OR IGNORE INTO suppressions (email_hash, reason, at) VALUES (?, 'erased', ?)",
                (lifecycle.email_hash(email), iso(now)),
            )
        if requests:
            compact(db)
            return 0
        raise InputError(f"email: no subscriber with the address {email!r}; it is suppressed anyway")
    if sub.status != "erased":
        lifecycle.transition(db, sub.id, "erased", now)
    compact(db)
    return sub.id


def _forget_devmail(db, address: str) -> None:
    db.execute(
        "DELETE FROM devmail WHERE EXISTS (SELECT 1 FROM json_each(devmail.rcpt_tos) "
        "WHERE lower(json_each.value) = lower(?))",
        (address,),
    )


def compact(db) -> None:
    """VACUUM and truncate the WAL so deleted bytes leave the file for good."""
    try:
        db.execute("VACUUM")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except Exception as exc:  # noqa: BLE001 - report which file, keep the erase
        raise InputError(f"{db_path(db)}: erased, but VACUUM failed ({exc}); run `funnel init --vacuum`") from exc

