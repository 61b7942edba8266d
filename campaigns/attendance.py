"""Webinar attendance: read a Zoom-style attendance CSV, mark who came.

:func:`import_attendance` marks each registrant attended or no-show from the
file and queues their follow-up (offer or replay); :func:`parse_attendance`
reads the CSV, matching header names loosely.  Bad rows reject the whole file
unless the caller asks to skip them.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from funnel import outbox
from funnel.db import iso, log_event, transaction
from funnel.errors import InputError, RowsRejected
from funnel.settings import Settings
from subscribers import optin

from .webinars import FOLLOWUP_VALID, get_webinar, queue_row

_EMAIL_COLS = ("useremail", "email", "emailaddress", "attendeeemail", "participantemail")
_JOIN_COLS = ("jointime", "joined", "joinedat", "firstjointime")
_DURATION_COLS = (
    "durationminutes",
    "duration",
    "timeinsessionminutes",
    "minutes",
    "totaldurationminutes",
    "durationmins",
    "minutesattended",
)
_ATTENDED_COLS = ("attended",)
_TIME_FORMATS = (
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%dT%H:%M:%SZ",
    "%b %d, %Y %H:%M:%S",
    "%b %d, %Y %I:%M:%S %p",
    "%m/%d/%Y %I:%M:%S %p",
    "%m/%d/%Y %H:%M:%S",
    "%m/%d/%Y %H:%M",
    "%d/%m/%Y %H:%M:%S",
    "%d/%m/%Y %H:%M",
)


def _norm(header: str) -> str:
    return re.sub(r"[^a-z0-9]", "", header.lower())


def _col(headers: list[str], names: tuple[str, ...]) -> int | None:
    normed = [_norm(h) for h in headers]
    for name in names:
        if name in normed:
            return normed.index(name)
    return None


class _Cells:
    """``cell(i)``: the stripped cell, or "" for a missing column or short row."""

    def __init__(self, row: list[str]):
        self.row = row

    def __call__(self, i: int | None) -> str:
        return self.row[i].strip() if i is not None and i < len(self.row) else ""


def _parse_join(text: str) -> datetime | None:
    text = text.strip()
    for fmt in _TIME_FORMATS:
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    return None


@dataclass
class AttendanceReport:
    path: str
    attended: int = 0
    no_show: int = 0
    unknown: list[str] = field(default_factory=list)  # "file:line: reason", not fatal
    problems: list[str] = field(default_factory=list)  # bad rows
    followups_queued: int = 0


def parse_attendance(
    path: Path, text: str | None = None
) -> tuple[dict[str, int], AttendanceReport, dict[str, int]]:
    """``({email: minutes}, report, {email: line})`` from a Zoom-style CSV.

    Header names are matched case- and punctuation-insensitively ("User Email",
    "Email", "Join Time", "Duration (Minutes)", "Time in Session (minutes)").
    Zoom reports put title sections above the table; any row that carries an
    email header starts a new table.  Rejoins add up.
    """
    report = AttendanceReport(str(path))
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8-sig")
        except OSError as exc:
            raise InputError(f"{path}: cannot read the file ({exc.strerror})") from exc
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}: not UTF-8 text; export the CSV as UTF-8") from exc
    reader = csv.reader(io.StringIO(text))
    cols: tuple[int, int | None, int | None, int | None] | None = None
    minutes: dict[str, int] = {}
    lines: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        if not any(c.strip() for c in row):
            continue
        email_col = _col(row, _EMAIL_COLS)
        if email_col is not None and "@" not in row[email_col]:
            cols = (
                email_col,
                _col(row, _JOIN_COLS),
                _col(row, _DURATION_COLS),
                _col(row, _ATTENDED_COLS),
            )
            continue
        if cols is None:
            continue  # report preamble before the table
        e_col, j_col, d_col, a_col = cols
        cell = _Cells(row)
        if a_col is not None and cell(a_col).lower() in ("no", "false", "0"):
            continue  # Zoom lists registrants who never joined as Attended = No
        raw_email = cell(e_col)
        if not raw_email:
            report.unknown.append(f"{path}:{line}: no email address (a guest?); skipped")
            continue
        try:
            addr = optin.clean_email(raw_email, field=f"{path}:{line}: email")
        except InputError as exc:
            report.problems.append(str(exc))
            continue
        mins = 0
        if d_col is not None:
            raw = cell(d_col)
            try:
                mins = round(float(raw)) if raw else 0
                if mins < 0:
                    raise ValueError
            except ValueError:
                report.problems.append(
                    f"{path}:{line}: duration {raw!r} is not a number of minutes"
                )
                continue
        if j_col is not None and cell(j_col) and _parse_join(cell(j_col)) is None:
            report.problems.append(
                f"{path}:{line}: join time {cell(j_col)!r} is not a date and time"
            )
            continue
        key = addr.lower()
        minutes[key] = minutes.get(key, 0) + mins
        lines.setdefault(key, line)
    if cols is None:
        raise InputError(
            f'{path}: no header row with an email column (expected e.g. "User Email" or "Email")'
        )
    return minutes, report, lines


def import_attendance(
    db,
    settings: Settings,
    slug: str,
    path: Path,
    now: datetime,
    *,
    skip_invalid: bool = False,
    text: str | None = None,
) -> AttendanceReport:
    """Mark registrants attended / no_show from the CSV and queue their follow-ups.

    The file is taken as the full list of who joined: everyone registered and
    not in it is a no-show (re-importing a corrected file recomputes).
    Waitlisted people stay waitlisted unless they appear in the file.
    Unknown addresses are reported, not fatal.  Bad rows reject the file
    (nothing changes) unless ``skip_invalid``.
    """
    w = get_webinar(db, slug)
    if w.status == "cancelled":
        raise InputError(f"webinar {slug!r} was cancelled; there is no attendance to import")
    if w.starts_at > now:
        raise InputError(
            f"webinar {slug!r} has not started yet ({w.local_start:%Y-%m-%d %H:%M %Z}); "
            "import attendance after it"
        )
    minutes, report, lines = parse_attendance(path, text)
    if report.problems and not skip_invalid:
        raise RowsRejected(report)
    with transaction(db):
        regs = db.execute(
            "SELECT r.subscriber_id, s.email, r.status FROM registrations r "
            "JOIN subscribers s ON s.id = r.subscriber_id WHERE r.webinar_id = ? "
            "AND r.status IN ('registered', 'waitlisted', 'attended', 'no_show')",
            (w.id,),
        ).fetchall()
        known = {(addr or "").lower(): (sid, addr, status) for sid, addr, status in regs}
        for key in minutes:
            if key not in known:
                report.unknown.append(f"{path}:{lines[key]}: {key} is not registered for {slug}")
        due = max(now, w.ends_at + timedelta(minutes=w.followup_delay_minutes))
        for key, (sid, addr, status) in known.items():
            if key in minutes:
                new = "attended"
            elif status == "waitlisted":
                continue
            else:
                new = "no_show"
            db.execute(
                "UPDATE registrations SET status = ?, attended_minutes = ?, updated_at = ? "
                "WHERE webinar_id = ? AND subscriber_id = ?",
                (new, minutes.get(key), iso(now), w.id, sid),
            )
            if new != status:
                detail = json.dumps({"minutes": minutes[key]}) if key in minutes else None
                log_event(db, new, now, sid, w.ref, detail)
            if new == "attended":
                report.attended += 1
            else:
                report.no_show += 1
            if addr and queue_row(
                db, settings, w, "webinar_followup", sid, addr, due, now,
                f"webinar_followup:{slug}:{sid}", outbox.PRIORITY_WEBINAR, due + FOLLOWUP_VALID,
            ):  # fmt: skip
                report.followups_queued += 1
    return report


#: The largest attendance file the console accepts (the people import's limit).
UPLOAD_LIMIT = 50 * 1024 * 1024


def import_upload(db, settings: Settings, slug: str, stream: BinaryIO, filename: str,
                  now: datetime, *, skip_invalid: bool = False) -> AttendanceReport:
    """:func:`import_attendance` for an uploaded file, with the CLI's errors named by ``filename``."""
    data = stream.read(UPLOAD_LIMIT + 1)
    if len(data) > UPLOAD_LIMIT:
        raise InputError(f"{filename}: the file is larger than 50 MB; split it, or import it on "
                         "the server with `funnel webinar attendance`")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{filename}: not UTF-8 text; export the CSV as UTF-8") from exc
    return import_attendance(db, settings, slug, Path(filename), now, skip_invalid=skip_invalid,
                             text=text)
