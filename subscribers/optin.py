"""Signup, pending, confirm: double opt-in with a consent ledger.

``signup`` never sends mail itself: it queues the confirmation in the outbox
(DESIGN.md rule 4), so the web form answers in the same time whatever the
address's state, and a slow SMTP server never slows a reader down.

What a repeat signup does depends on where the address stands:

=============  ===========================================================
new            pending record, consent row, confirmation queued
pending        a fresh confirmation, at most one per address per 24 h
active         nothing (the form still says "check your inbox")
unsubscribed   a confirmation (same 24 h limit); they stay unsubscribed
               until the owner confirms (then pending -> active at once)
suppressed     nothing (bounced, complained or erased addresses)
=============  ===========================================================

An anonymous form never changes a known person's name, time zone or state:
anyone can type anyone's address.  Only the owner's confirmation changes the
state, and details change on the preferences page (its link is in every
email).  So a repeat signup keeps the stored details, whatever it brings.
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

from email_validator import EmailNotValidError, validate_email

from funnel import outbox
from funnel.db import iso, log_event, parse_iso, transaction
from funnel.errors import InputError, TokenError
from funnel.settings import Settings

from . import lifecycle, tokens
from .lifecycle import MAX_NAME, clean_name, clean_timezone  # noqa: F401 (callers use optin.*)

MAX_SOURCE = 100


@dataclass(frozen=True)
class SignupResult:
    subscriber_id: int | None
    action: str  # created | resent | throttled | already_active | restarted | suppressed
    outbox_id: int | None = None


# ----------------------------------------------------------------- validation
# RFC 5322 dot-atom local part, ASCII only.  See clean_email for why.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_LOCAL = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*\Z")


@lru_cache(maxsize=4096)
def _normalized_domain(domain: str) -> str | None:
    """email-validator's verdict on a domain, cached: lists repeat domains a lot."""
    try:
        return validate_email(f"a@{domain}", check_deliverability=False).domain
    except EmailNotValidError:
        return None


def clean_email(raw: str, field: str = "email") -> str:
    """Validate the syntax (no DNS) and return the normalised address.

    Speed: email-validator costs ~35 us an address, almost all of it in
    checking the domain (IDNA/UTS-46), which repeats across a list.  For the
    common case, a plain ASCII dot-atom local part, we check the local part
    with the RFC 5322 grammar and take the cached email-validator verdict on
    the domain; everything else goes through email-validator whole.
    ``tests/test_emails.py`` checks the fast path against email-validator.
    """
    raw = (raw or "").strip()
    if not raw:
        raise InputError(f"{field}: an email address is required")
    if len(raw) > 254:
        raise InputError(f"{field}: the address is longer than 254 characters")
    local, at, domain = raw.rpartition("@")
    if at and raw.isascii() and len(local) <= 64 and _SIMPLE_LOCAL.match(local):
        normalized = _normalized_domain(domain)
        if normalized is not None:
            return f"{local}@{normalized}"
    try:
        return validate_email(raw, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise InputError(f"{field}: {raw!r} is not a valid email address ({exc})") from exc


def clean_source(raw: str | None, field: str = "source") -> str:
    source = (raw or "").strip()
    if len(source) > MAX_SOURCE or any(unicodedata.category(c) == "Cc" for c in source):
        raise InputError(f"{field}: must be at most {MAX_SOURCE} printable characters")
    return source


# ----------------------------------------------------------------- signup
def signup(
    db,
    settings: Settings,
    email: str,
    now: datetime,
    *,
    name: str = "",
    timezone: str | None = None,
    source: str = "",
    ip: str | None = None,
    user_agent: str | None = None,
    consent_version: str | None = None,
) -> SignupResult:
    """Record a signup and queue the confirmation email (one transaction)."""
    email = clean_email(email)
    name = clean_name(name)
    timezone = clean_timezone(timezone)
    source = clean_source(source)
    user_agent = (user_agent or "")[:300] or None
    version = consent_version or settings.consent_version
    with transaction(db):
        if lifecycle.is_suppressed(db, email):
            return SignupResult(None, "suppressed")
        sub = lifecycle.find(db, email)
        if sub is None:
            nonce = secrets.token_urlsafe(12)
            cur = db.execute(
                "INSERT INTO subscribers (email, email_hash, name, timezone, source, status, "
                "confirm_nonce, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
                (email, lifecycle.email_hash(email), name, timezone, source, nonce, iso(now), iso(now)),
            )
            sid = cur.lastrowid
            action = "created"
            log_event(db, "subscribed", now, sid, source or None)
        elif sub.status == "active":
            return SignupResult(sub.id, "already_active")
        elif sub.status in ("pending", "unsubscribed"):
            # Details stay as stored (see the module doc); only a confirmation goes out.
            sid = sub.id
            last = parse_iso(sub.confirm_sent_at)
            if (
                sub.confirm_nonce
                and last is not None
                and now - last < timedelta(hours=settings.confirm_resend_hours)
            ):
                return SignupResult(sid, "throttled")
            action = "resent" if sub.status == "pending" else "restarted"
            if not sub.confirm_nonce:  # a webinar-only contact, or someone who left, opting in
                db.execute(
                    "UPDATE subscribers SET confirm_nonce = ? WHERE id = ?", (secrets.token_urlsafe(12), sid)
                )
        else:  # bounced / complained / erased are suppressed above; be safe anyway
            return SignupResult(sub.id, "suppressed")
        lifecycle.record_consent(db, [lifecycle.Consent(
            sid, "requested", now, source=source, ip=ip, user_agent=user_agent, version=version,
        )])
        outbox_id = queue_confirmation(db, settings, sid, email, now)
    return SignupResult(sid, action, outbox_id)


@dataclass(frozen=True)
class WebinarContact:
    subscriber_id: int
    #: False: the address is unsubscribed, bounced, complained or erased, so
    #: only its owner can register it (a verification email, see
    #: ``campaigns.webinars``); nothing was recorded.
    verified: bool


def webinar_contact(
    db,
    settings: Settings,
    email: str,
    now: datetime,
    *,
    purpose: str,
    action: str = "requested",
    name: str = "",
    timezone: str | None = None,
    source: str = "",
    ip: str | None = None,
    user_agent: str | None = None,
    note: str | None = None,
) -> WebinarContact:
    """Someone asked for one webinar's mail only: a contact, NOT a newsletter subscriber.

    Registering for a webinar is consent to that webinar's mail (confirmation,
    reminders, updates, follow-up) and nothing else.  So a new address gets a
    ``pending`` row *without* a confirm nonce: no newsletter confirmation is
    queued, no stream is turned on and no series starts.  If they later opt in
    to the newsletter, :func:`signup` mints the nonce and sends the usual
    confirmation.  Consent is recorded for ``purpose`` (e.g.
    ``webinar:spine-health``) only.

    A known pending or active person is registered as they are: the name and
    zone typed on the form are ignored (anyone can type anyone's address).
    An address that unsubscribed or is suppressed (bounced, complained,
    erased) is returned with ``verified=False`` and nothing recorded: the
    caller sends a verification email instead.  A suppressed hash with no
    record at all (erased before records were kept) gets a record holding the
    hash only, so the verification has someone to belong to.
    """
    email = clean_email(email)
    name = clean_name(name)
    timezone = clean_timezone(timezone)
    source = clean_source(source)
    with transaction(db):
        sub = lifecycle.find(db, email)
        if sub is None and lifecycle.is_suppressed(db, email):
            sid = db.execute(
                "INSERT INTO subscribers (email, email_hash, status, created_at, updated_at) "
                "VALUES (NULL, ?, 'erased', ?, ?)",
                (lifecycle.email_hash(email), iso(now), iso(now)),
            ).lastrowid
            return WebinarContact(sid, False)
        if sub is None:
            sid = db.execute(
                "INSERT INTO subscribers (email, email_hash, name, timezone, source, status, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
                (email, lifecycle.email_hash(email), name, timezone, source, iso(now), iso(now)),
            ).lastrowid
        elif sub.status in ("pending", "active") and not lifecycle.is_suppressed(db, email):
            sid = sub.id
        else:
            return WebinarContact(sub.id, False)
        lifecycle.record_consent(db, [lifecycle.Consent(
            sid, action, now, purpose=purpose, source=source, ip=ip,
            user_agent=(user_agent or "")[:300] or None, version=settings.consent_version, note=note,
        )])
    return WebinarContact(sid, True)


def confirmation_rows(settings: Settings, recipients: Iterable[tuple[int, str]],
                      now: datetime) -> Iterator[dict]:
    """The opt-in email's outbox rows (enqueue()'s keywords), one per
    (subscriber id, address): the one spec for signup and bulk import alike."""
    stamp = iso(now)
    expires = now + timedelta(days=settings.confirm_max_age_days)
    for subscriber_id, email in recipients:
        yield {
            "dedupe_key": f"confirm:{subscriber_id}:{stamp}",
            "kind": "confirm",
            "subscriber_id": subscriber_id,
            "to_addr": email,
            "due_at": now,
            "priority": outbox.PRIORITY_TRANSACTIONAL,  # before everything else
            "expires_at": expires,
        }


def queue_confirmation(db, settings: Settings, subscriber_id: int, email: str, now: datetime) -> int | None:
    """Queue the opt-in email; the token is signed when the message is built."""
    with transaction(db):
        outbox_id = outbox.enqueue(db, settings, **next(confirmation_rows(settings, [(subscriber_id, email)], now)),
                                   now=now)
        db.execute(
            "UPDATE subscribers SET confirm_sent_at = ? WHERE id = ?", (iso(now), subscriber_id)
        )
        log_event(db, "confirmation_queued", now, subscriber_id)
    return outbox_id


# ----------------------------------------------------------------- confirm
def confirm(
    db,
    settings: Settings,
    token: str,
    now: datetime,
    *,
    ip: str | None = None,
    user_agent: str | None = None,
    source: str = "link",
) -> lifecycle.Subscriber:
    """Confirm a subscription from a confirm token.  Works once.

    Raises TokenError (expired, tampered, wrong purpose, already used).
    """
    subscriber_id, nonce = tokens.read_confirm_token(settings, token, now)
    with transaction(db):
        try:
            sub = lifecycle.get(db, subscriber_id)
        except Exception as exc:
            raise TokenError("This link is not valid.") from exc
        if (
            sub.status not in ("pending", "unsubscribed")
            or not sub.confirm_nonce
            or not secrets.compare_digest(sub.confirm_nonce, nonce)
        ):
            raise TokenError("This confirmation link has already been used or replaced by a newer one.")
        if sub.status == "unsubscribed":  # they signed up again: the fresh opt-in, now confirmed
            lifecycle.transition(db, subscriber_id, "pending", now)
        sub = lifecycle.transition(db, subscriber_id, "active", now)
        lifecycle.record_consent(db, [lifecycle.Consent(
            subscriber_id, "confirmed", now, source=source, ip=ip,
            user_agent=(user_agent or "")[:300] or None, version=settings.consent_version,
        )])
        for stream in default_streams(settings):
            lifecycle.set_subscription(db, subscriber_id, stream, "subscribed", now)
    return sub


def default_streams(settings: Settings) -> list[str]:
    return ["broadcasts", "webinars", *(f"series:{slug}" for slug in settings.enroll_series)]


def activate_imported(db, settings: Settings, subscriber_id: int, now: datetime, note: str) -> None:
    """Pre-confirmed import: active at once, with the admin's consent note on record."""
    with transaction(db):
        lifecycle.transition(db, subscriber_id, "active", now)
        lifecycle.record_consent(db, [lifecycle.Consent(
            subscriber_id, "imported", now, source="import", version=settings.consent_version, note=note,
        )])
        for stream in default_streams(settings):
            lifecycle.set_subscription(db, subscriber_id, stream, "subscribed", now)
