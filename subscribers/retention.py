"""Data minimisation: never-confirmed signups are not kept for ever.

A signup that is still ``pending`` (never confirmed) ``pending_retention_days``
(default 30) after its last confirmation request is deleted by
:func:`purge_pending`, which the scheduler tick runs (so both ``funnel worker``
and ``funnel send`` do it):

* the subscriber row, its stream subscriptions and enrollments, and its
  consent ledger entries (the only place the signup's
  IP address and user agent are kept);
* its outbox rows (the unanswered confirmation emails, which carry the
  address) and any bounce records about them; in dev mode, its dev inbox mail.

What stays: the anonymous event log entries (their subscriber becomes NULL,
so the funnel report still counts the signup), and a suppression hash if the
address was already on the suppression list.  No new suppression is added: a
person who never confirmed has asked for nothing, and may sign up again.

Not purged: a reader who was confirmed once (an unsubscribed reader who
signed up again and did not confirm the second time), whose earlier consent
and withdrawal are the record of what they agreed to; and a webinar contact
(``pending`` with a webinar registration, see ``optin.webinar_contact``),
whose registration is their consent to that webinar's mail.

Appointment requests (campaigns/appointments.py) are deleted
``appointment_retention_days`` (default 365) after they were made, by
:func:`purge_appointments` in the same tick, and by erase (subscribers/io.py),
both through :func:`forget_appointments`: the request, its webhook ledger row,
and the address and data of its two outbox rows (unsent ones are cancelled).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from funnel.db import iso, transaction
from funnel.settings import Settings


def purge_pending(db, settings: Settings, now: datetime) -> int:
    """Delete never-confirmed signups older than ``pending_retention_days``; returns how many."""
    cutoff = iso(now - timedelta(days=settings.pending_retention_days))
    with transaction(db):
        ids = [
            r[0]
            for r in db.execute(
                "SELECT id FROM subscribers s WHERE status = 'pending' AND confirmed_at IS NULL "
                "AND created_at < ? AND COALESCE(confirm_sent_at, created_at) < ? "
                "AND NOT EXISTS (SELECT 1 FROM consent c WHERE c.subscriber_id = s.id "
                "AND c.action IN ('confirmed', 'imported', 'withdrawn')) "
                "AND NOT EXISTS (SELECT 1 FROM registrations r WHERE r.subscriber_id = s.id)",
                (cutoff, cutoff),
            ).fetchall()
        ]
        for sid in ids:
            email = db.execute("SELECT email FROM subscribers WHERE id = ?", (sid,)).fetchone()[0]
            db.execute(
                "DELETE FROM bounces WHERE subscriber_id = ? OR outbox_id IN "
                "(SELECT id FROM outbox WHERE subscriber_id = ?)",
                (sid, sid),
            )
            db.execute("DELETE FROM outbox WHERE subscriber_id = ?", (sid,))
            if email:
                db.execute(
                    "DELETE FROM devmail WHERE EXISTS (SELECT 1 FROM json_each(devmail.rcpt_tos) "
                    "WHERE lower(json_each.value) = lower(?))",
                    (email,),
                )
            # consent, subscriptions, enrollments, registrations: ON DELETE CASCADE;
            # events: ON DELETE SET NULL (anonymous counts stay).
            db.execute("DELETE FROM subscribers WHERE id = ?", (sid,))
    return len(ids)


def forget_appointments(db, where: str, params: tuple) -> int:
    """Delete the appointment requests matching ``where`` (SQL on ``appointments``, bound
    ``params``) and blank their emails in the outbox; call inside a transaction."""
    ids = [r[0] for r in db.execute(f"SELECT id FROM appointments WHERE {where}", params).fetchall()]
    for rid in ids:
        db.execute(
            "UPDATE outbox SET to_addr = NULL, data = NULL, last_error = NULL, "
            "status = CASE WHEN status IN ('queued', 'retry') THEN 'cancelled' ELSE status END "
            "WHERE ref = ? AND kind LIKE 'appointment%'",
            (f"appointment:{rid}",),
        )
        db.execute("DELETE FROM appointments WHERE id = ?", (rid,))  # webhook rows: CASCADE
    return len(ids)


def purge_appointments(db, settings: Settings, now: datetime) -> int:
    """Delete appointment requests older than ``appointment_retention_days``; returns how many."""
    cutoff = iso(now - timedelta(days=settings.appointment_retention_days))
    with transaction(db):
        return forget_appointments(db, "created_at < ?", (cutoff,))
