"""Appointment requests: the form's rules, the request's life, its emails and its webhook.

A reader asks the clinic for an appointment on ``/appointment`` (or the
snippet on the clinic's own site).  :func:`create_request` checks the form
(:func:`clean_fields`: one sentence naming the field, nothing stored on
error) and, in one transaction, stores the request with where the reader
came from (``attr_*``), queues the clinic's notification (Reply-To the
requester) and the requester's acknowledgement through the outbox, starts
the usual double opt-in when the separate newsletter box was ticked, and
puts a row in the webhook ledger when ``appointment_webhook_url`` is set.

Status::

    new --> contacted --> booked | closed
     +--> closed

Each change may carry a note, kept with its time.  Requests are purged after
``appointment_retention_days`` and by ``funnel subscribers erase``
(subscribers/retention.py, matched on the address).

The two emails go to people who need not be subscribers (the clinic, a
requester who did not tick the newsletter box), so their builders are in
``kinds.DIRECT_BUILDERS``: they read the request at build time, so an erased
request is never mailed, and they carry no unsubscribe link (transactional)
but the usual sender identity and postal address.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import IO

from funnel import outbox
from funnel.db import APPOINTMENT_STATES, iso, parse_iso, transaction
from funnel.errors import InputError, NotFound, TransitionError
from funnel.settings import Settings
from funnel.spreadsheet import SafeDictWriter
from subscribers import lifecycle, optin

from . import clicks, render, webhooks
from .content import Content, Direct, SkipMessage

#: How the reader wants to be contacted: key -> words used on the page and in emails.
METHODS = {"phone": "a phone call", "text": "a text message", "email": "email"}
#: The preferred days and times offered (several may be ticked).
TIMES = {
    "weekday-morning": "Weekday mornings",
    "weekday-afternoon": "Weekday afternoons",
    "weekday-evening": "Weekday evenings (after 5 pm)",
    "saturday-morning": "Saturday mornings",
}
MAX_REASON = 1000
MIN_PHONE_DIGITS, MAX_PHONE_DIGITS = 6, 15
_PHONE_CHARS = frozenset("0123456789 +()-")
#: The sentence beside the required contact-consent box (stored with each request).
CONTACT_CONSENT = (
    "I agree that {site} may contact me about this request by the method I chose. "
    "This does not sign me up for any newsletter."
)
#: status -> the statuses it may move to.
ALLOWED = {
    "new": ("contacted", "closed"),
    "contacted": ("booked", "closed"),
    "booked": (),
    "closed": (),
}
ATTRIBUTION = (
    "attr_click_id", "attr_kind", "attr_series", "attr_step", "attr_broadcast_id", "attr_webinar",
)  # fmt: skip
#: Webhook retries: base * 2**(attempt-1), capped; given up (failed) after WEBHOOK_WINDOW.
WEBHOOK_BACKOFF_BASE = timedelta(minutes=1)
WEBHOOK_BACKOFF_CAP = timedelta(hours=2)
WEBHOOK_WINDOW = timedelta(hours=24)
#: A claimed delivery is left alone this long (a second worker must not POST it too).
WEBHOOK_LEASE = timedelta(minutes=5)
WEBHOOK_BATCH = 20


def contact_consent(settings: Settings) -> str:
    return CONTACT_CONSENT.format(site=settings.site_name)


# ================================================================= the form
@dataclass(frozen=True)
class Fields:
    """A request's fields once checked."""

    name: str
    email: str | None
    phone: str | None
    contact_method: str
    times: tuple[str, ...]
    reason: str
    newsletter: bool


def _text(fields: Mapping, key: str) -> str:
    value = fields.get(key)
    return value.strip() if isinstance(value, str) else ""


def _clean_phone(raw: str) -> str | None:
    if not raw:
        return None
    if any(c not in _PHONE_CHARS for c in raw):
        raise InputError(
            "phone: a phone number may only contain digits, spaces, + ( ) and -; "
            "please check the phone number"
        )
    digits = sum(c.isdigit() for c in raw)
    if not MIN_PHONE_DIGITS <= digits <= MAX_PHONE_DIGITS:
        raise InputError(
            f"phone: the phone number needs {MIN_PHONE_DIGITS} to {MAX_PHONE_DIGITS} digits"
        )
    return " ".join(raw.split())


def _clean_reason(raw: str) -> str:
    reason = raw.replace("\r\n", "\n").replace("\r", "\n").strip()
    if len(reason) > MAX_REASON:
        raise InputError(
            f"reason: the reason is {len(reason):,} characters long; please keep it to "
            f"{MAX_REASON:,} or fewer"
        )
    # Line breaks and tabs are the reader's; other control characters are nobody's.
    return "".join(c for c in reason if c in "\n\t" or unicodedata.category(c) != "Cc")


def _clean_times(raw) -> tuple[str, ...]:
    values = [raw] if isinstance(raw, str) else list(raw or ())
    for value in values:
        if value not in TIMES:
            raise InputError(
                f"times: {str(value)[:40]!r} is not one of the preferred times offered "
                f"({', '.join(TIMES.values())})"
            )
    return tuple(k for k in TIMES if k in values)


def clean_fields(fields: Mapping) -> Fields:
    """Check the form; raises InputError ("field: sentence") for the first problem."""
    name = _text(fields, "name")
    if not name:
        raise InputError("name: please tell us your name")
    name = optin.clean_name(name)
    email_raw, phone_raw = _text(fields, "email"), _text(fields, "phone")
    if not email_raw and not phone_raw:
        raise InputError(
            "email: please give an email address or a phone number, so the clinic can reach you"
        )
    email = optin.clean_email(email_raw) if email_raw else None
    phone = _clean_phone(phone_raw)
    method = _text(fields, "contact_method")
    if method not in METHODS:
        raise InputError(
            f"contact_method: {method[:40]!r} is not a contact method we offer; choose a phone "
            "call, a text message or email"
            if method
            else "contact_method: please choose how the clinic should contact you"
        )
    if method in ("phone", "text") and not phone:
        raise InputError(f"phone: you chose {METHODS[method]}; please give a phone number too")
    if method == "email" and not email:
        raise InputError("email: you chose email; please give an email address too")
    times = _clean_times(fields.get("times"))
    reason = _clean_reason(_text(fields, "reason"))
    if fields.get("consent") is not True:
        raise InputError(
            "consent: please tick the consent box so the clinic may contact you about this request"
        )
    return Fields(name, email, phone, method, times, reason, fields.get("newsletter") is True)


def _attribution(attribution: Mapping | None) -> dict:
    out = dict.fromkeys(ATTRIBUTION)
    for key, value in (attribution or {}).items():
        column = key if key.startswith("attr_") else f"attr_{key}"
        if column not in out:
            raise InputError(f"attribution: unknown key {key!r}; expected {', '.join(ATTRIBUTION)}")
        out[column] = value
    return out


# ================================================================= a request
@dataclass(frozen=True)
class Appointment:
    id: int
    status: str
    name: str
    email: str | None
    phone: str | None
    contact_method: str
    times: tuple[str, ...]
    reason: str
    newsletter: bool
    source: str
    created_at: datetime
    notes: tuple[dict, ...] = ()
    attribution: dict = field(default_factory=dict)
    booked_at: datetime | None = None

    @property
    def method_label(self) -> str:
        return METHODS[self.contact_method]

    @property
    def contact(self) -> str:
        """Where the reader asked to be reached: the phone for a call or text, else the email."""
        return (self.phone if self.contact_method in ("phone", "text") else self.email) or ""

    @property
    def times_label(self) -> str:
        return ", ".join(TIMES[t] for t in self.times) or "any time"


_COLUMNS = (
    "id, status, name, email, phone, contact_method, preferred_times, reason, newsletter, "
    "source, created_at, notes, booked_at, " + ", ".join(ATTRIBUTION)
)


def _from_row(row) -> Appointment:
    (rid, status, name, email, phone, method, times, reason, newsletter, source, created,
     notes, booked, *attr) = row  # fmt: skip
    return Appointment(
        rid, status, name, email, phone, method, tuple(json.loads(times)), reason,
        bool(newsletter), source, parse_iso(created), tuple(json.loads(notes)),
        {k: v for k, v in zip(ATTRIBUTION, attr, strict=True) if v is not None},
        parse_iso(booked),
    )  # fmt: skip


def get_request(db, appointment_id: int) -> Appointment:
    row = db.execute(
        f"SELECT {_COLUMNS} FROM appointments WHERE id = ?", (appointment_id,)
    ).fetchone()
    if row is None:
        raise NotFound(f"appointment {appointment_id} does not exist (see `funnel appointments list`)")
    return _from_row(row)


def list_requests(db, *, status: str | None = None, limit: int | None = None) -> list[Appointment]:
    """Requests, newest first (one status, or all)."""
    if status is not None and status not in APPOINTMENT_STATES:
        raise InputError(f"--status: {status!r} is not one of {', '.join(APPOINTMENT_STATES)}")
    sql = f"SELECT {_COLUMNS} FROM appointments"
    params: list = []
    if status:
        sql += " WHERE status = ?"
        params.append(status)
    sql += " ORDER BY created_at DESC, id DESC"
    if limit:
        sql += " LIMIT ?"
        params.append(limit)
    return [_from_row(r) for r in db.execute(sql, params).fetchall()]


def create_request(
    db,
    settings: Settings,
    fields: Mapping,
    attribution: Mapping | None,
    now: datetime,
    *,
    source: str = "web",
    ip: str | None = None,
    user_agent: str | None = None,
    click_cookie: str | None = None,
) -> Appointment:
    """Store a request and queue everything it sets off, in one transaction.

    ``fields``: name, email, phone, contact_method, times (list), reason,
    consent (bool), newsletter (bool).  ``attribution``: the ``attr_*``
    values of the click that brought the reader, or None; without it, the
    ``funnel_attr`` cookie the page received (``click_cookie``) names that
    click when it is at most 30 days old (campaigns/clicks.py).
    """
    f = clean_fields(fields)
    if attribution is None and click_cookie:
        attribution = clicks.attribution(db, settings, click_cookie, now)
    attr = _attribution(attribution)
    with transaction(db):
        rid = db.execute(
            "INSERT INTO appointments (name, email, phone, contact_method, preferred_times, reason, "
            "consent_text, newsletter, source, created_at, updated_at, "
            + ", ".join(ATTRIBUTION) + ") VALUES (" + ", ".join("?" * (11 + len(ATTRIBUTION))) + ")",
            (
                f.name, f.email, f.phone, f.contact_method, json.dumps(list(f.times)), f.reason,
                contact_consent(settings), int(f.newsletter), optin.clean_source(source),
                iso(now), iso(now), *attr.values(),
            ),
        ).lastrowid  # fmt: skip
        _queue_emails(db, settings, rid, f, now)
        if f.newsletter and f.email:
            optin.signup(
                db, settings, f.email, now, name=f.name, source="appointment", ip=ip,
                user_agent=user_agent,
            )  # fmt: skip
        if settings.appointment_webhook_url:
            db.execute(
                "INSERT INTO appointment_webhooks (appointment_id, next_attempt_at, deadline_at, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                (rid, iso(now), iso(now + WEBHOOK_WINDOW), iso(now), iso(now)),
            )
    return get_request(db, rid)


def _queue_emails(db, settings: Settings, rid: int, f: Fields, now: datetime) -> None:
    common = dict(
        subscriber_id=None, due_at=now, now=now, ref=f"appointment:{rid}",
        priority=outbox.PRIORITY_TRANSACTIONAL,
    )  # fmt: skip
    outbox.enqueue(
        db, settings, dedupe_key=f"appointment:{rid}:clinic", kind="appointment_clinic",
        to_addr=settings.clinic_email or settings.from_addr, **common,
    )  # fmt: skip
    # A suppressed address (bounced, complained, erased) is never mailed, not even this.
    if f.email and not lifecycle.is_suppressed(db, f.email):
        outbox.enqueue(
            db, settings, dedupe_key=f"appointment:{rid}:ack", kind="appointment_ack",
            to_addr=f.email, **common,
        )  # fmt: skip


def mark(db, appointment_id: int, status: str, now: datetime, note: str = "") -> Appointment:
    """Move a request on (new -> contacted -> booked | closed), keeping the note with its time."""
    return _mark(db, appointment_id, status, now, note, seen=None)[0]


def mark_seen(
    db, appointment_id: int, seen: str, status: str, now: datetime, note: str = ""
) -> tuple[Appointment, bool]:
    """:func:`mark` from a page that showed the request as ``seen``; (request, changed).

    A form sent twice (or by two people) does not apply twice: when the
    request already has ``status`` nothing changes and ``changed`` is False;
    when it moved on to another status since, TransitionError says so.
    """
    if seen not in APPOINTMENT_STATES:
        raise InputError(f"seen: {seen!r} is not one of {', '.join(APPOINTMENT_STATES)}; reload the page")
    return _mark(db, appointment_id, status, now, note, seen=seen)


def _mark(
    db, appointment_id: int, status: str, now: datetime, note: str, *, seen: str | None
) -> tuple[Appointment, bool]:
    if status not in APPOINTMENT_STATES:
        raise InputError(f"status: {status!r} is not one of {', '.join(APPOINTMENT_STATES)}")
    note = " ".join(note.split())
    if len(note) > MAX_REASON:
        raise InputError(f"--note: the note is longer than {MAX_REASON:,} characters")
    with transaction(db):
        a = get_request(db, appointment_id)
        if seen is not None and a.status != seen:
            if a.status == status:
                return a, False
            raise TransitionError(
                f"appointment {appointment_id} became {a.status} after this page showed it as "
                f"{seen}; nothing was changed (reload the page to see the latest)"
            )
        if status not in ALLOWED[a.status]:
            allowed = " or ".join(ALLOWED[a.status]) or "nothing else"
            raise TransitionError(
                f"appointment {appointment_id} is {a.status}: it cannot become {status} "
                f"(from {a.status} it can become {allowed})"
            )
        notes = [*a.notes, {"at": iso(now), "status": status, "note": note}]
        db.execute(
            f"UPDATE appointments SET status = ?, notes = ?, updated_at = ?, {status}_at = ? "
            "WHERE id = ?",
            (status, json.dumps(notes), iso(now), iso(now), appointment_id),
        )
    return get_request(db, appointment_id), True


# ================================================================= the admin console's inbox
#: Requests on one page of the inbox.
PAGE = 50


@dataclass(frozen=True)
class Inbox:
    """One page of requests, newest first, with where each came from and the status counts."""

    rows: list[Appointment]
    sources: dict[int, list[tuple[str, str]]]  # request id -> (label, value) of its attribution
    next_before: int | None  # pass as ``before`` for the next page; None = last page
    counts: dict[str, int]  # status -> requests in it (all time)


@dataclass(frozen=True)
class Detail:
    """One request for its page: the request, its attribution, the statuses it may move to."""

    appointment: Appointment
    sources: list[tuple[str, str]]
    next_statuses: tuple[str, ...]
    consent_text: str  # the contact-consent sentence the reader agreed to


def age(created_at: datetime, now: datetime) -> str:
    """How long ago a request came in, in the largest whole unit ("5 min", "3 h", "2 d")."""
    seconds = max(0, int((now - created_at).total_seconds()))
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"


def _names(db, rows: list[Appointment]) -> dict[tuple[str, object], str]:
    """Broadcast subjects and webinar titles for the attribution shown."""
    names: dict[tuple[str, object], str] = {}
    ids = sorted({a.attribution["attr_broadcast_id"] for a in rows if "attr_broadcast_id" in a.attribution})
    slugs = sorted({a.attribution["attr_webinar"] for a in rows if "attr_webinar" in a.attribution})
    if ids:
        marks = ", ".join("?" * len(ids))
        for cid, subject in db.execute(f"SELECT id, subject FROM campaigns WHERE id IN ({marks})", ids):
            names["broadcast", cid] = subject
    if slugs:
        marks = ", ".join("?" * len(slugs))
        for slug, title in db.execute(f"SELECT slug, title FROM webinars WHERE slug IN ({marks})", slugs):
            names["webinar", slug] = title
    return names


def sources(a: Appointment, names: Mapping[tuple[str, object], str]) -> list[tuple[str, str]]:
    """(label, value) for each part of the attribution: message kind, series and step, broadcast, webinar."""
    attr = a.attribution
    out = []
    if "attr_kind" in attr:
        out.append(("Message kind", str(attr["attr_kind"]).replace("_", " ")))
    if "attr_series" in attr:
        step = f", step {attr['attr_step']}" if "attr_step" in attr else ""
        out.append(("Series", f"{attr['attr_series']}{step}"))
    if "attr_broadcast_id" in attr:
        bid = attr["attr_broadcast_id"]
        subject = names.get(("broadcast", bid))
        out.append(("Broadcast", f"#{bid} {subject}" if subject else f"#{bid}"))
    if "attr_webinar" in attr:
        slug = attr["attr_webinar"]
        out.append(("Webinar", names.get(("webinar", slug)) or str(slug)))
    return out


def status_counts(db) -> dict[str, int]:
    counts = dict.fromkeys(APPOINTMENT_STATES, 0)
    for status, n in db.execute("SELECT status, COUNT(*) FROM appointments GROUP BY status"):
        counts[status] = n
    return counts


def inbox(db, *, status: str | None = None, before: int | None = None, limit: int = PAGE) -> Inbox:
    """A page of requests, newest first (by id), optionally of one status; ``before`` pages on."""
    if status is not None and status not in APPOINTMENT_STATES:
        raise InputError(f"status: {status!r} is not one of {', '.join(APPOINTMENT_STATES)}")
    clauses, params = ["1"], []
    if status:
        clauses.append("status = ?")
        params.append(status)
    if before is not None:
        clauses.append("id < ?")
        params.append(before)
    found = [_from_row(r) for r in db.execute(
        f"SELECT {_COLUMNS} FROM appointments WHERE {' AND '.join(clauses)} ORDER BY id DESC LIMIT ?",
        (*params, limit + 1),
    ).fetchall()]  # fmt: skip
    rows = found[:limit]
    names = _names(db, rows)
    return Inbox(rows, {a.id: sources(a, names) for a in rows},
                 rows[-1].id if len(found) > limit else None, status_counts(db))


def detail(db, appointment_id: int) -> Detail:
    a = get_request(db, appointment_id)
    consent = db.execute("SELECT consent_text FROM appointments WHERE id = ?", (a.id,)).fetchone()[0]
    return Detail(a, sources(a, _names(db, [a])), ALLOWED[a.status], consent)


def recent_counts(db, now: datetime, periods: tuple[int, ...]) -> tuple[dict[int, int], int]:
    """({days: requests made in the last ``days`` days}, requests still ``new``) for the dashboard."""
    made = {
        days: db.execute(
            "SELECT COUNT(*) FROM appointments WHERE created_at >= ? AND created_at <= ?",
            (iso(now - timedelta(days=days)), iso(now)),
        ).fetchone()[0]
        for days in periods
    }
    new = db.execute("SELECT COUNT(*) FROM appointments WHERE status = 'new'").fetchone()[0]
    return made, new


EXPORT_FIELDS = (
    "id", "created_at", "status", "name", "email", "phone", "contact_method", "preferred_times",
    "reason", "newsletter", "source", "notes", *ATTRIBUTION,
)  # fmt: skip


def export_csv(db, fh: IO[str], *, status: str | None = None) -> int:
    """Write the requests as CSV (cells a spreadsheet could run are neutralised)."""
    writer = SafeDictWriter(fh, fieldnames=EXPORT_FIELDS)
    writer.writeheader()
    rows = list_requests(db, status=status)
    for a in reversed(rows):  # oldest first, like the ledger
        writer.writerow({
            "id": a.id, "created_at": iso(a.created_at), "status": a.status, "name": a.name,
            "email": a.email or "", "phone": a.phone or "", "contact_method": a.contact_method,
            "preferred_times": "; ".join(a.times), "reason": a.reason,
            "newsletter": "yes" if a.newsletter else "no", "source": a.source,
            "notes": " | ".join(
                f"{n['at'][:16].replace('T', ' ')} {n['status']}" + (f": {n['note']}" if n["note"] else "")
                for n in a.notes
            ),
            **{k: a.attribution.get(k, "") for k in ATTRIBUTION},
        })  # fmt: skip
    return len(rows)


def request_ids(db, lo: str, hi: str) -> tuple[frozenset[int], frozenset[int]]:
    """(ids of requests made in [lo, hi), the ids of those booked) for the funnel report."""
    rows = db.execute(
        "SELECT id, booked_at IS NOT NULL FROM appointments WHERE created_at >= ? AND created_at < ?",
        (lo, hi),
    ).fetchall()
    return frozenset(i for i, _ in rows), frozenset(i for i, booked in rows if booked)


# ================================================================= the two emails
def _for_row(db, row: outbox.OutboxRow) -> Appointment:
    _, _, rid = (row.ref or "").partition(":")
    try:
        return get_request(db, int(rid))
    except (ValueError, NotFound):
        raise SkipMessage("cancelled", "the appointment request was erased or purged") from None


def _values(settings: Settings, a: Appointment) -> dict:
    contact = a.contact
    when = a.created_at.astimezone(settings.zone)
    return {
        "appt_id": str(a.id),
        "appt_name": a.name,
        "appt_email": a.email or "-",
        "appt_phone": a.phone or "-",
        "appt_method": a.method_label,
        "appt_contact": contact,
        "appt_times": a.times_label,
        "appt_reason": a.reason or "-",
        "appt_newsletter": "yes (double opt-in email sent)" if a.newsletter else "no",
        "appt_received": f"{when:%A %d %B %Y, %H:%M} ({settings.timezone})",
        "appt_promise": settings.appointment_reply_promise,
    }


def build_clinic(db, settings: Settings, row: outbox.OutboxRow, now: datetime) -> Direct:
    """The clinic's notification: every detail, Reply-To the requester's address."""
    a = _for_row(db, row)
    content = Content(
        kind="appointment_clinic",
        subject=f"Appointment request from {a.name} ({a.method_label})",
        bulk=False,
        extra={"greeting": False, "reason": render.footer_reason("appointment_clinic", settings.site_name)},
        recipient=_values(settings, a),
    )
    return Direct(content, to_name=settings.site_name, reply_to=a.email)


def build_ack(db, settings: Settings, row: outbox.OutboxRow, now: datetime) -> Direct:
    """The requester's acknowledgement: when and how the clinic will reply."""
    a = _for_row(db, row)
    content = Content(
        kind="appointment_ack",
        subject=f"We have your appointment request: {settings.site_name}",
        preheader=f"We will contact you {settings.appointment_reply_promise} by {a.method_label}.",
        bulk=False,
        extra={"reason": render.footer_reason("appointment_request", settings.site_name)},
        recipient={**_values(settings, a), "first_name": a.name.split()[0]},
    )
    return Direct(content, to_name=a.name, reply_to=settings.clinic_email or None)


# ================================================================= the webhook
@dataclass
class WebhookRun:
    delivered: int = 0
    retrying: int = 0
    failed: int = 0


def payload(settings: Settings, a: Appointment, delivery_id: int, now: datetime) -> bytes:
    """The JSON body of one delivery (signed as it is)."""
    body = {
        "event": "appointment.requested",
        "delivery": delivery_id,
        "timestamp": int(now.timestamp()),
        "site": settings.base_url,
        "appointment": {
            "id": a.id,
            "created_at": iso(a.created_at),
            "status": a.status,
            "name": a.name,
            "email": a.email,
            "phone": a.phone,
            "contact_method": a.contact_method,
            "preferred_times": list(a.times),
            "reason": a.reason,
            "newsletter": a.newsletter,
            "attribution": {k.removeprefix("attr_"): v for k, v in a.attribution.items()},
        },
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def webhook_secret(settings: Settings) -> str:
    """The secret a receiver verifies ``X-Funnel-Signature`` with."""
    return webhooks.signing_secret(settings)


def webhook_backoff(attempt: int) -> timedelta:
    return min(WEBHOOK_BACKOFF_BASE * (2 ** min(max(attempt - 1, 0), 20)), WEBHOOK_BACKOFF_CAP)


def _claim(db, now: datetime) -> tuple[int, int, int, str] | None:
    """The next due delivery, pushed a lease ahead so another worker leaves it alone."""
    with transaction(db):
        row = db.execute(
            "SELECT id, appointment_id, attempts, deadline_at FROM appointment_webhooks "
            "WHERE status = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT 1",
            (iso(now),),
        ).fetchone()
        if row is not None:
            db.execute(
                "UPDATE appointment_webhooks SET next_attempt_at = ?, updated_at = ? WHERE id = ?",
                (iso(now + WEBHOOK_LEASE), iso(now), row[0]),
            )
    return tuple(row) if row else None


def deliver_webhooks(
    db,
    settings: Settings,
    now: datetime,
    *,
    post: Callable[..., webhooks.PostResult] = webhooks.post,
) -> WebhookRun:
    """POST each due delivery once (up to WEBHOOK_BATCH); retry with backoff until its
    deadline, then mark it failed.  An endpoint that does not answer ends the run, so a
    dead receiver costs one timeout per tick, not one per waiting delivery."""
    run = WebhookRun()
    url = settings.appointment_webhook_url
    if not url:
        return run
    secret = webhooks.signing_secret(settings)
    for _ in range(WEBHOOK_BATCH):
        claimed = _claim(db, now)
        if claimed is None:
            break
        wid, rid, attempts, deadline = claimed
        try:
            a = get_request(db, rid)
        except NotFound:  # erased or purged meanwhile: its ledger row went with it
            continue
        body = payload(settings, a, wid, now)
        result = post(url, body, {
            "X-Funnel-Signature": webhooks.signature(secret, body),
            "X-Funnel-Timestamp": str(int(now.timestamp())),
            "X-Funnel-Delivery": str(wid),
            "X-Funnel-Event": "appointment.requested",
        })  # fmt: skip
        attempts += 1
        end = parse_iso(deadline)
        if result.ok:
            status, next_at, run.delivered = "delivered", now, run.delivered + 1
        elif now >= end:
            status, next_at, run.failed = "failed", now, run.failed + 1
        else:
            status, next_at = "pending", min(now + webhook_backoff(attempts), end)
            run.retrying += 1
        error = "" if result.ok else f"attempt {attempts}: {result.error}"
        with transaction(db):
            db.execute(
                "UPDATE appointment_webhooks SET status = ?, attempts = ?, next_attempt_at = ?, "
                "http_status = ?, last_error = ?, updated_at = ?, delivered_at = ? WHERE id = ?",
                (status, attempts, iso(next_at), result.status, error or None, iso(now),
                 iso(now) if result.ok else None, wid),
            )  # fmt: skip
        if result.status is None and not result.ok:
            break  # no answer at all: the others wait for the next tick
    return run


def failed_webhooks(db) -> list[tuple[int, int, str]]:
    """(delivery id, appointment id, last error) of every delivery given up."""
    return [
        tuple(r)
        for r in db.execute(
            "SELECT id, appointment_id, COALESCE(last_error, '') FROM appointment_webhooks "
            "WHERE status = 'failed' ORDER BY id"
        ).fetchall()
    ]


__all__ = [
    "ALLOWED",
    "Appointment",
    "Detail",
    "Inbox",
    "METHODS",
    "TIMES",
    "age",
    "build_ack",
    "build_clinic",
    "clean_fields",
    "create_request",
    "deliver_webhooks",
    "detail",
    "export_csv",
    "get_request",
    "inbox",
    "list_requests",
    "mark",
    "mark_seen",
    "recent_counts",
    "sources",
    "status_counts",
]
