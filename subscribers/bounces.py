"""Bounces and complaints: DSN (RFC 3464) and ARF (RFC 5965) parsing, VERP, scoring.

Where bounces come from
-----------------------
* At send time: a 5xx reply at RCPT or DATA (campaigns/sender.py calls
  :func:`record_smtp_failure`).
* Afterwards: delivery status notifications that the receiving systems mail
  back to our VERP envelope sender ``bounce+ROW@domain``, and spam complaints
  (ARF feedback reports) from mailbox providers' feedback loops.
  ``funnel bounces process PATH...`` reads them from files or a Maildir.

Which row a report is about: the VERP address (the report's To, Delivered-To,
X-Original-To or Envelope-To header names ``bounce+ROW@domain``), else the
original Message-ID (in the report's text/rfc822-headers or message/rfc822
part, stable per row), else the original's ``X-Funnel-Row`` header.

Classification: ``Status: 5.x.x`` is hard, ``4.x.x`` soft;
``report-type=feedback-report`` is a complaint.

Scoring (GNU Mailman's model): a hard bounce adds 1, a soft one 0.5, counted
at most once per UTC day; the score resets after ``bounce_reset_days`` (7)
without a counted bounce.  A subscriber is suppressed (``bounced``) when the
score reaches ``bounce_score_threshold`` (5) -- and at once for a complaint
(``complained``) or a hard bounce.  With ``suppress_policy_bounces = false``
only a hard bounce that says the *address* is bad suppresses at once; a
permanent failure about policy or content (enhanced status 5.7.x spam/policy
blocks, 5.6.x content, 5.3.x system, 5.2.2 mailbox full, 5.2.3 message too
big) is then recorded as hard and scored, so one campaign caught by a spam
filter cannot wipe out the list.

Maildir handling: messages in ``new/`` and in ``cur/`` without the ``S``
(seen) flag are read.  A message that was handled (recorded, a duplicate, or
a report that is not a failure) is moved to ``cur/`` with the ``S`` flag, so
the next run skips it.  A message that cannot be parsed or matched to a row
is reported as ``file: reason`` and left where it is.  Plain files given on
the command line are never moved.  Recording the same report twice (same row,
same report) is detected and skipped, so re-running is safe.
"""

from __future__ import annotations

import email
import email.parser
import email.policy
import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from funnel.db import iso, parse_iso, transaction
from funnel.errors import InputError, TransitionError
from funnel.settings import Settings

from . import lifecycle

WEIGHTS = {"hard": 1.0, "soft": 0.5}
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_NOT_ADDRESS = ("5.2.2", "5.2.3", "5.3.", "5.6.", "5.7.")
_VERP_HEADERS = ("To", "Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To")


def enhanced_status(text: str | None) -> str | None:
    """The first enhanced status code (RFC 3463) in ``text``, e.g. "5.1.1"."""
    m = _STATUS.search(text or "")
    return ".".join(m.groups()) if m else None


def status_from_reply(code: int, message: str) -> str:
    """An SMTP reply as a status code: its enhanced code, else "5.0.0" from 550."""
    return enhanced_status(message) or f"{code // 100}.0.0"


def is_address_failure(status: str | None) -> bool:
    """A permanent failure that says the address itself is bad (module docstring)."""
    return bool(status) and status.startswith("5.") and not status.startswith(_NOT_ADDRESS)


# ----------------------------------------------------------------- scoring
@dataclass(frozen=True)
class Recorded:
    subscriber_id: int | None
    kind: str
    score: float
    suppressed: str | None = None  # 'bounced' | 'complained' when this report suppressed them
    duplicate: bool = False


def record(
    db,
    settings: Settings,
    *,
    subscriber_id: int | None,
    outbox_id: int | None,
    kind: str,
    status_code: str | None,
    diagnostic: str,
    source: str,
    now: datetime,
) -> Recorded:
    """Store one bounce or complaint, update the score, suppress if due."""
    if kind not in ("hard", "soft", "complaint"):
        raise InputError(f"kind: {kind!r} is not hard, soft or complaint")
    with transaction(db):
        if (
            outbox_id is not None
            and db.execute(
                "SELECT 1 FROM bounces WHERE outbox_id = ? AND source = ?", (outbox_id, source)
            ).fetchone()
        ):
            return Recorded(subscriber_id, kind, 0.0, duplicate=True)
        db.execute(
            "INSERT INTO bounces (subscriber_id, outbox_id, kind, status_code, diagnostic, source, at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (subscriber_id, outbox_id, kind, status_code, diagnostic[:1000], source, iso(now)),
        )
        row = None
        if subscriber_id is not None:
            row = db.execute(
                "SELECT status, bounce_score, last_bounce_at FROM subscribers WHERE id = ?",
                (subscriber_id,),
            ).fetchone()
        if row is None:
            return Recorded(subscriber_id, kind, 0.0)
        status, score, last_text = row
        last = parse_iso(last_text)
        if last is not None and now - last >= timedelta(days=settings.bounce_reset_days):
            score, last = 0.0, None  # a quiet week wipes the slate
        counted = kind in WEIGHTS and not (last is not None and last.date() == now.date())
        if counted:
            score += WEIGHTS[kind]
            last = now
        db.execute(
            "UPDATE subscribers SET bounce_score = ?, last_bounce_at = ? WHERE id = ?",
            (score, iso(last), subscriber_id),
        )
        if kind == "complaint":
            target = "complained"
        elif (
            kind == "hard"
            and (settings.suppress_policy_bounces or is_address_failure(status_code))
        ) or (
            score >= settings.bounce_score_threshold
        ):
            target = "bounced"
        else:
            target = None
        suppressed = None
        if target and status not in ("bounced", "complained", "erased"):
            try:
                lifecycle.suppress(
                    db, subscriber_id, target, now,
                    detail=f"{kind} {status_code or ''} {diagnostic}".strip()[:300],
                )  # fmt: skip
                suppressed = target
            except TransitionError:
                suppressed = None  # e.g. unsubscribed already: nothing more is sent anyway
    return Recorded(subscriber_id, kind, score, suppressed)


def record_smtp_failure(
    db,
    settings: Settings,
    *,
    subscriber_id: int,
    outbox_id: int,
    code: int,
    message: str,
    relay: str,
    now: datetime,
) -> Recorded:
    """A 5xx reply at RCPT or DATA: a hard bounce recorded at send time."""
    return record(
        db, settings, subscriber_id=subscriber_id, outbox_id=outbox_id, kind="hard",
        status_code=status_from_reply(code, message), diagnostic=f"smtp; {code} {message}",
        source=f"smtp:{relay}", now=now,
    )  # fmt: skip


# ----------------------------------------------------------------- parsing
@dataclass(frozen=True)
class Report:
    """One parsed DSN or ARF report."""

    kind: str | None  # hard | soft | complaint; None: not a failure (e.g. Action: delivered)
    status: str | None
    diagnostic: str
    recipient: str | None
    verp_row: int | None
    message_id: str | None
    funnel_row: int | None
    source: str


def _header_block(part) -> email.message.Message | None:
    """The headers of the original message in a text/rfc822-headers or message/rfc822 part."""
    ctype = part.get_content_type()
    if ctype == "message/rfc822":
        payload = part.get_payload()
        return payload[0] if isinstance(payload, list) and payload else None
    if ctype == "text/rfc822-headers":
        raw = part.get_payload(decode=True) or b""
        return email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(raw)
    return None


def _find_original(msg) -> tuple[str | None, int | None]:
    for part in msg.walk():
        headers = _header_block(part)
        if headers is None:
            continue
        mid = (headers.get("Message-ID") or "").strip() or None
        row = (headers.get("X-Funnel-Row") or "").strip()
        return mid, int(row) if row.isdigit() else None
    return None, None


def _verp_row(msg, domain: str) -> int | None:
    pattern = re.compile(rf"bounce\+(\d+)@{re.escape(domain)}\b", re.IGNORECASE)
    for name in _VERP_HEADERS:
        for value in msg.get_all(name) or ():
            m = pattern.search(str(value))
            if m:
                return int(m.group(1))
    return None


def _strip_type(value: str | None) -> str:
    """'rfc822; x@y' or '<x@y>' -> 'x@y'."""
    value = str(value or "").strip()
    value = value.split(";", 1)[1].strip() if ";" in value else value
    return value.strip("<>")


def parse_report(data: bytes, settings: Settings) -> Report:
    """Parse a DSN or ARF message; raises InputError saying why it isn't one."""
    if not data.strip():
        raise InputError("the file is empty")
    msg = email.message_from_bytes(data, policy=email.policy.default)
    ctype = msg.get_content_type()
    if ctype != "multipart/report":
        raise InputError(
            f"not a delivery report: Content-Type is {ctype}, expected multipart/report"
        )
    report_type = (msg.get_param("report-type") or "").lower()
    own_id = (msg.get("Message-ID") or "").strip()
    source = f"dsn:{own_id}" if own_id else "sha256:" + hashlib.sha256(data).hexdigest()[:32]
    verp = _verp_row(msg, settings.sender_domain)
    original_id, funnel_row = _find_original(msg)
    parts = {p.get_content_type(): p for p in msg.get_payload() if hasattr(p, "get_content_type")}
    if report_type == "feedback-report":
        part = parts.get("message/feedback-report")
        if part is None:
            raise InputError("feedback report without a message/feedback-report part")
        payload = part.get_payload()
        fields = payload[0] if isinstance(payload, list) and payload else None
        if fields is None or not fields.get("Feedback-Type"):
            raise InputError("the feedback report has no Feedback-Type field")
        return Report(
            "complaint", None, f"feedback; {fields['Feedback-Type']}",
            _strip_type(fields.get("Original-Rcpt-To")) or None, verp, original_id,
            funnel_row, source,
        )  # fmt: skip
    if report_type != "delivery-status":
        raise InputError(
            f"multipart/report with report-type {report_type or '(none)'!r}; "
            "expected delivery-status or feedback-report"
        )
    part = parts.get("message/delivery-status")
    if part is None:
        raise InputError("delivery report without a message/delivery-status part")
    blocks = part.get_payload()
    blocks = blocks if isinstance(blocks, list) else []
    # The first block is per-message (Reporting-MTA...); recipients carry Action/Status.
    recipients = [b for b in blocks if b.get("Status") or b.get("Action")]
    if not recipients:
        raise InputError("the delivery-status part has no per-recipient fields")
    failing = [
        b for b in recipients if (b.get("Action") or "").strip().lower() in ("failed", "delayed")
    ]
    block = failing[0] if failing else recipients[0]
    action = (block.get("Action") or "").strip().lower()
    status = enhanced_status(block.get("Status"))
    if status is None:
        raise InputError("the delivery-status part has no valid Status field (like 5.1.1)")
    recipient = _strip_type(block.get("Final-Recipient") or block.get("Original-Recipient")) or None
    diagnostic = str(block.get("Diagnostic-Code") or "").strip()
    if not failing:
        kind = None  # delivered / relayed / expanded: good news, nothing to record
    else:
        kind = "hard" if status.startswith("5") and action == "failed" else "soft"
    return Report(
        kind,
        status,
        diagnostic or f"{action}; {status}",
        recipient,
        verp,
        original_id,
        funnel_row,
        source,
    )


def find_row(db, report: Report) -> tuple[int, int | None] | None:
    """(outbox_id, subscriber_id) the report is about, or None."""
    if report.verp_row is not None:
        row = db.execute(
            "SELECT id, subscriber_id FROM outbox WHERE id = ?", (report.verp_row,)
        ).fetchone()
        if row:
            return row[0], row[1]
    if report.message_id:
        row = db.execute(
            "SELECT id, subscriber_id FROM outbox WHERE message_id = ?", (report.message_id,)
        ).fetchone()
        if row:
            return row[0], row[1]
    if report.funnel_row is not None:
        row = db.execute(
            "SELECT id, subscriber_id FROM outbox WHERE id = ?", (report.funnel_row,)
        ).fetchone()
        if row:
            return row[0], row[1]
    return None


# ----------------------------------------------------------------- files and Maildirs
@dataclass
class ProcessReport:
    processed: int = 0
    kinds: Counter = field(default_factory=Counter)
    suppressed: int = 0
    duplicates: int = 0
    ignored: int = 0  # reports that are not failures (Action: delivered)
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        kinds = ", ".join(f"{self.kinds[k]} {k}" for k in ("hard", "soft", "complaint"))
        text = f"{self.processed} report(s) recorded ({kinds}); {self.suppressed} subscriber(s) suppressed"
        if self.duplicates:
            text += f"; {self.duplicates} already recorded"
        if self.ignored:
            text += f"; {self.ignored} not a failure"
        if self.problems:
            text += f"; {len(self.problems)} left in place (see above)"
        return text


def _maildir_files(folder: Path) -> list[Path]:
    files = []
    for sub in ("new", "cur"):
        for entry in sorted((folder / sub).iterdir()):
            if not entry.is_file() or entry.name.startswith("."):
                continue
            if sub == "cur" and "S" in entry.name.partition(":2,")[2]:
                continue  # seen: handled by an earlier run
            files.append(entry)
    return files


def _mark_seen(path: Path) -> None:
    """Move a Maildir message to cur/ with the S (seen) flag."""
    base, _, flags = path.name.partition(":2,")
    flags = "".join(sorted(set(flags) | {"S"}))
    os.replace(path, path.parent.parent / "cur" / f"{base}:2,{flags}")


def collect(paths: list[Path]) -> list[tuple[Path, bool]]:
    """(file, in_maildir) for each message to read; InputError for a bad path."""
    found: list[tuple[Path, bool]] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            if not ((path / "cur").is_dir() and (path / "new").is_dir()):
                raise InputError(f"{path}: a folder that is not a Maildir (it needs cur/ and new/)")
            found += [(f, True) for f in _maildir_files(path)]
        elif path.is_file():
            found.append((path, False))
        else:
            raise InputError(f"{path}: no such file or folder")
    return found


def process_paths(db, settings: Settings, paths: list[Path], now: datetime) -> ProcessReport:
    """Read DSN/ARF messages from files or Maildirs and record them (module docstring)."""
    report = ProcessReport()
    for path, in_maildir in collect(paths):
        try:
            data = path.read_bytes()
            parsed = parse_report(data, settings)
            if parsed.kind is None:
                report.ignored += 1
            else:
                target = find_row(db, parsed)
                if target is None:
                    raise InputError(
                        "no outbox row matches the report (no bounce+ROW address, "
                        f"Message-ID {parsed.message_id or 'missing'})"
                    )
                outbox_id, subscriber_id = target
                result = record(
                    db, settings, subscriber_id=subscriber_id, outbox_id=outbox_id,
                    kind=parsed.kind, status_code=parsed.status, diagnostic=parsed.diagnostic,
                    source=parsed.source, now=now,
                )  # fmt: skip
                if result.duplicate:
                    report.duplicates += 1
                else:
                    report.processed += 1
                    report.kinds[parsed.kind] += 1
                    report.suppressed += result.suppressed is not None
        except InputError as exc:
            report.problems.append(f"{path}: {exc}")
            continue
        except OSError as exc:
            report.problems.append(f"{path}: cannot read it ({exc.strerror or exc})")
            continue
        if in_maildir:
            _mark_seen(path)
    return report
