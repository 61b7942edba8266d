"""Bounces and complaints: DSN (RFC 3464) and ARF (RFC 5965) parsing, VERP, scoring.

Where bounces come from
-----------------------
* At send time: a 5xx reply at RCPT or DATA (campaigns/sender.py calls
  :func:`record_smtp_failure`).
* Afterwards: delivery status notifications that the receiving systems mail
  back to our signed VERP envelope sender ``bounce+ROW-MAC@domain``
  (subscribers/tokens.py), and spam complaints (ARF feedback reports) from
  mailbox providers' feedback loops.  ``funnel inbox process PATH...`` (alias
  ``funnel bounces process``) reads them from files or a Maildir, together
  with the mailto unsubscribe requests sent to ``unsubscribe+ROW-MAC@domain``.

Which row a report is about (:func:`find_row`): the signed VERP address (in
the report's To, Delivered-To, X-Original-To or Envelope-To header, an ARF's
Original-Mail-From, or the quoted original's Return-Path), else the original
Message-ID (random per row).  An unsigned or badly signed ``bounce+`` address
is not trusted.  The report must also be about that row's recipient
(Final-Recipient or Original-Recipient; for an ARF, Original-Rcpt-To or the
original's To).  Anything else is "unmatched" and changes nothing: a stranger
who knows a row number and an address cannot suppress anyone.

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
a report that is not a failure, an unsubscribe request, or an unmatched
report or request) is moved to ``cur/`` with the ``S`` flag, so the next run
skips it.  A message that cannot be parsed is reported as ``file: reason`` and
left where it is.  Plain files given on
the command line are never moved.  Recording the same report twice (same row,
same report) is detected and skipped, so re-running is safe.
"""

from __future__ import annotations

import email
import email.parser
import email.policy
import email.utils
import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from funnel.db import iso, parse_iso, transaction
from funnel.errors import InputError, TokenError, TransitionError
from funnel.policy import policy
from funnel.settings import Settings

from . import admins, lifecycle, preferences, tokens

WEIGHTS = policy().bounce_weights  # [bounces] in funnel/policy.toml: hard 1.0, soft 0.5
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
    verp: str | None  # the bounce+... local part the report names, not yet verified
    message_id: str | None
    funnel_row: int | None  # the original's X-Funnel-Row: unsigned, so never trusted alone
    source: str
    recipients: tuple[str, ...] = ()  # every address the report says it is about
    verps: tuple[str, ...] = ()  # every bounce+... local part found, in header order


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


def _original_headers(msg) -> email.message.Message | None:
    for part in msg.walk():
        headers = _header_block(part)
        if headers is not None:
            return headers
    return None


def _find_original(headers) -> tuple[str | None, int | None]:
    if headers is None:
        return None, None
    mid = (headers.get("Message-ID") or "").strip() or None
    row = (headers.get("X-Funnel-Row") or "").strip()
    return mid, int(row) if row.isdigit() else None


def _local_parts(values, purpose: str, domain: str) -> list[str]:
    """Local parts ``PURPOSE+...`` at our domain named in ``values`` (any case)."""
    pattern = re.compile(rf"\b({purpose}\+[^@\s<>\"',;]+)@{re.escape(domain)}\b", re.IGNORECASE)
    found = []
    for value in values:
        found += pattern.findall(str(value or ""))
    return found


def _addresses_in(value) -> list[str]:
    return [addr.lower() for _, addr in email.utils.getaddresses([str(value or "")]) if addr]


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
    original = _original_headers(msg)
    original_id, funnel_row = _find_original(original)
    where = [v for name in _VERP_HEADERS for v in msg.get_all(name) or ()]
    if original is not None:
        where += original.get_all("Return-Path") or []
    parts = {p.get_content_type(): p for p in msg.get_payload() if hasattr(p, "get_content_type")}
    found = _Found(original_id, funnel_row, source, where, settings.sender_domain)
    if report_type == "feedback-report":
        return _complaint(parts, original, found)
    if report_type != "delivery-status":
        raise InputError(
            f"multipart/report with report-type {report_type or '(none)'!r}; "
            "expected delivery-status or feedback-report"
        )
    return _delivery_status(parts, found)


@dataclass(frozen=True)
class _Found:
    """What parse_report read from the report's envelope, for the two kinds' steps."""

    original_id: str | None
    funnel_row: int | None
    source: str
    where: list[str]  # header values that may carry our VERP address
    sender_domain: str


def _complaint(parts: dict, original, found: _Found) -> Report:
    """An ARF feedback report (RFC 5965): a complaint."""
    part = parts.get("message/feedback-report")
    if part is None:
        raise InputError("feedback report without a message/feedback-report part")
    payload = part.get_payload()
    fields = payload[0] if isinstance(payload, list) and payload else None
    if fields is None or not fields.get("Feedback-Type"):
        raise InputError("the feedback report has no Feedback-Type field")
    verp = _local_parts(
        [*(fields.get_all("Original-Mail-From") or ()), *found.where], "bounce",
        found.sender_domain,
    )  # fmt: skip
    rcpts = [_strip_type(v).lower() for v in fields.get_all("Original-Rcpt-To") or ()]
    if original is not None:
        rcpts += [a for v in original.get_all("To") or () for a in _addresses_in(v)]
    rcpts = [r for r in rcpts if r]
    return Report(
        "complaint", None, f"feedback; {fields['Feedback-Type']}",
        rcpts[0] if rcpts else None, verp[0] if verp else None, found.original_id,
        found.funnel_row, found.source, tuple(rcpts), tuple(verp),
    )  # fmt: skip


def _delivery_status(parts: dict, found: _Found) -> Report:
    """A DSN (RFC 3464): hard or soft bounce, or good news (kind None)."""
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
    rcpts = tuple(
        r.lower() for r in (
            _strip_type(block.get("Final-Recipient")), _strip_type(block.get("Original-Recipient"))
        ) if r
    )  # fmt: skip
    diagnostic = str(block.get("Diagnostic-Code") or "").strip()
    if not failing:
        kind = None  # delivered / relayed / expanded: good news, nothing to record
    else:
        kind = "hard" if status.startswith("5") and action == "failed" else "soft"
    verp = _local_parts(found.where, "bounce", found.sender_domain)
    return Report(
        kind,
        status,
        diagnostic or f"{action}; {status}",
        rcpts[0] if rcpts else None,
        verp[0] if verp else None,
        found.original_id,
        found.funnel_row,
        found.source,
        rcpts,
        tuple(verp),
    )


class Unmatched(InputError):
    """A report or request that names no row of ours, or not convincingly: ignored."""


def find_row(db, settings: Settings, report: Report) -> tuple[int, int | None]:
    """(outbox_id, subscriber_id) the report is about; :class:`Unmatched` says why not.

    The row comes from the signed VERP address (``bounce+ROW-MAC``), else from
    the original's Message-ID (random per row, so only a real recipient knows
    it).  An unsigned or badly signed ``bounce+`` address is not trusted and
    is not rescued by the Message-ID; ``X-Funnel-Row`` alone is never trusted.
    Then the report must be about the row's recipient: its Final-Recipient or
    Original-Recipient (ARF: Original-Rcpt-To or the original's To) equals the
    row's address, ignoring case.
    """
    if report.verp is not None:
        row_id = None
        for local in report.verps or (report.verp,):
            try:
                row_id = tokens.read_local_part(settings, "bounce", local)
                break
            except TokenError as exc:
                error = exc
        if row_id is None:
            raise Unmatched(f"the bounce address is not ours: {error}")
        row = db.execute(
            "SELECT id, subscriber_id, to_addr FROM outbox WHERE id = ?", (row_id,)
        ).fetchone()
        if row is None:
            raise Unmatched(f"the bounce address names outbox row {row_id}, which does not exist")
    else:
        row = None
        if report.message_id:
            row = db.execute(
                "SELECT id, subscriber_id, to_addr FROM outbox WHERE message_id = ?",
                (report.message_id,),
            ).fetchone()
        if row is None:
            raise Unmatched(
                "no outbox row matches the report (no signed bounce+ROW-MAC address, "
                f"Message-ID {report.message_id or 'missing'})"
            )
    outbox_id, subscriber_id, to_addr = row
    if not report.recipients:
        raise Unmatched(f"the report names no recipient to compare with row {outbox_id}")
    if to_addr is None or to_addr.lower() not in report.recipients:
        raise Unmatched(
            f"the report is about {', '.join(report.recipients)}, "
            f"not the recipient of row {outbox_id}"
        )
    return outbox_id, subscriber_id


# ----------------------------------------------------------------- mailto unsubscribe
_RECIPIENT_HEADERS = ("To", "Cc", *_VERP_HEADERS[1:])


def unsubscribe_request(data: bytes, settings: Settings) -> str | None:
    """The ``unsubscribe+...`` local part a message is addressed to, or None.

    Delivery reports are never requests; the address may be in To, Cc,
    Delivered-To, X-Original-To, Envelope-To or X-Envelope-To.
    """
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    if msg.get_content_type() == "multipart/report":
        return None
    values = [v for name in _RECIPIENT_HEADERS for v in msg.get_all(name) or ()]
    found = _local_parts(values, "unsubscribe", settings.sender_domain)
    return found[0] if found else None


def apply_unsubscribe(db, settings: Settings, local: str, now: datetime) -> str | None:
    """Unsubscribe the reader of the row a signed ``unsubscribe+ROW-MAC`` names.

    Exactly what the one-click POST does (the same domain function, the same
    scope: the stream the email came from), recorded with source "mailto".
    Returns the scope used (None = everything); :class:`Unmatched` for a
    forged or unknown address.
    """
    try:
        row_id = tokens.read_local_part(settings, "unsubscribe", local)
    except TokenError as exc:
        raise Unmatched(f"the unsubscribe address is not ours: {exc}") from exc
    row = db.execute("SELECT subscriber_id, stream FROM outbox WHERE id = ?", (row_id,)).fetchone()
    if row is None or row[0] is None:
        raise Unmatched(f"the unsubscribe address names outbox row {row_id}, which has no reader")
    return preferences.unsubscribe_from_link(
        db, settings, row[0], now, stream=row[1], everything=False, source="mailto"
    )


# ----------------------------------------------------------------- files and Maildirs
@dataclass
class ProcessReport:
    processed: int = 0
    kinds: Counter = field(default_factory=Counter)
    suppressed: int = 0
    duplicates: int = 0
    ignored: int = 0  # reports that are not failures (Action: delivered)
    unsubscribed: int = 0  # mailto unsubscribe requests applied
    unmatched: int = 0  # reports/requests that named no row of ours, or not convincingly
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # why each unmatched message changed nothing

    def line(self) -> str:
        kinds = ", ".join(f"{self.kinds[k]} {k}" for k in ("hard", "soft", "complaint"))
        text = f"{self.processed} report(s) recorded ({kinds}); {self.suppressed} subscriber(s) suppressed"
        if self.unsubscribed:
            text += f"; {self.unsubscribed} unsubscribed by mail"
        if self.duplicates:
            text += f"; {self.duplicates} already recorded"
        if self.ignored:
            text += f"; {self.ignored} not a failure"
        if self.unmatched:
            text += f"; {self.unmatched} unmatched (nothing changed)"
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
    """Read DSN/ARF reports and mailto unsubscribe requests from files or Maildirs.

    A report or request that does not verify (module docstring, :func:`find_row`,
    :func:`apply_unsubscribe`) changes nothing: it is counted as unmatched, its
    reason is listed, and in a Maildir it is marked seen like a handled one.
    """
    report = ProcessReport()
    for path, in_maildir in collect(paths):
        try:
            data = path.read_bytes()
            local = unsubscribe_request(data, settings)
            if local is not None:
                apply_unsubscribe(db, settings, local, now)
                report.unsubscribed += 1
            else:
                _process_report(db, settings, data, now, report)
        except Unmatched as exc:
            report.unmatched += 1
            report.notes.append(f"{path}: unmatched: {exc}")
        except InputError as exc:
            report.problems.append(f"{path}: {exc}")
            continue
        except OSError as exc:
            report.problems.append(f"{path}: cannot read it ({exc.strerror or exc})")
            continue
        if in_maildir:
            _mark_seen(path)
    return report


def _process_report(db, settings: Settings, data: bytes, now: datetime,
                    report: ProcessReport) -> None:
    parsed = parse_report(data, settings)
    if parsed.kind is None:
        report.ignored += 1
        return
    outbox_id, subscriber_id = find_row(db, settings, parsed)
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


# ----------------------------------------------------------------- admin
def unsuppress(db, email: str, reason: str, actor: str, now: datetime, *,
               ip: str | None = None) -> lifecycle.Subscriber:
    """Take a bounced address off the suppression list once it is fixed (a full
    mailbox emptied, a typo corrected by the reader).  ``reason`` is required
    and is written to the audit log with ``actor``; complaints stay suppressed."""
    reason = " ".join((reason or "").split())
    if not reason:
        raise InputError("reason: say why the address can be mailed again (e.g. 'mailbox fixed')")
    if len(reason) > 300:
        raise InputError("reason: at most 300 characters")
    with transaction(db):
        sub = lifecycle.get_by_email(db, email)
        restored = lifecycle.restore_bounced(db, sub.id, now, detail=reason)
        admins.audit(db, actor, "unsuppress", f"subscriber {sub.id}", now, detail=reason, ip=ip,
                     subscriber_id=sub.id)
    return restored
