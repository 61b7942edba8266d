"""View in browser: every sent email can be shown again, as it was sent.

When a row is sent, the sender stores what the builder decided for it (the
content, the per-recipient values with their signed links, the first name)
and the moment it was built (``store``).  ``show`` renders that again with the
build moment as "now", so the unsubscribe, preferences and view links are
signed at the same second and come out byte for byte as in the email.  No
token shown here outlives the emailed one: the confirm, registration and
offer links are the stored strings, never minted afresh.

This works for every kind, before and after the reader acts (confirms,
registers, unsubscribes...), because nothing is rebuilt from today's state.
Content shared by many readers is stored once (``view_contents``, keyed by
digest); a row costs one small ``views`` row.  A tracked email's list of links
(campaigns/links.py) is stored once too (``click_links``); its view names it
(``links_id``), which is how ``/c/TOKEN.N`` finds link N of that message.

A confirmation viewed after its link expired (``confirm_max_age_days`` after
it was built) is not shown as a live email: the page says so and offers a new
link (``resend_confirmation``), which goes through ``optin.signup``'s normal
path and its once-a-day throttle.

Rows sent before migration 0017 have no stored view; they are rebuilt with
their ``sent_at`` as "now" (so any token is no younger than the email's), and
answer "no longer available" when the builder refuses (the reader acted).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from funnel.db import iso, parse_iso, transaction
from funnel.errors import NotFound
from funnel.outbox import _ROW_COLUMNS, _row
from funnel.settings import Settings
from subscribers import lifecycle, optin

from . import kinds, messages, render
from .content import Content, SkipMessage

_CONTENT_FIELDS = ("kind", "subject", "preheader", "body_md", "ctas", "extra", "bulk", "list_id")


@dataclass(frozen=True)
class View:
    kind: str
    rendered: render.Rendered
    built_at: datetime
    #: set for a confirmation whose link has expired: when it did
    expired_at: datetime | None = None
    #: the subscriber can still use a fresh confirmation (they are pending)
    can_resend: bool = False


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def store(db, sent: Iterable[messages.Outgoing]) -> int:
    """Keep the view of each sent message (inside the caller's transaction)."""
    ids: dict[str, int] = {}
    link_ids: dict[tuple, int | None] = {(): None}
    rows = []
    for out in sent:
        if out.view is None or out.built_at is None:
            continue
        c = out.view
        content = _canonical({
            "kind": c.kind, "subject": c.subject, "preheader": c.preheader, "body_md": c.body_md,
            "ctas": [dict(x) for x in c.ctas], "extra": c.extra, "bulk": c.bulk, "list_id": c.list_id,
        })  # fmt: skip
        digest = hashlib.sha256(content.encode("utf-8")).hexdigest()
        content_id = ids.get(digest)
        if content_id is None:
            db.execute(
                "INSERT OR IGNORE INTO view_contents (digest, content) VALUES (?, ?)", (digest, content)
            )
            content_id = db.execute(
                "SELECT id FROM view_contents WHERE digest = ?", (digest,)
            ).fetchone()[0]
            ids[digest] = content_id
        links_id = link_ids.get(out.links, -1)
        if links_id == -1:
            links_id = link_ids[out.links] = _links_id(db, out.links)
        rows.append((out.row_id, content_id, iso(out.built_at), _canonical(c.recipient), links_id))
    # A row resent after a crash replaces its view with the message sent last.
    db.conn.executemany(
        "INSERT OR REPLACE INTO views (outbox_id, content_id, built_at, recipient, links_id) "
        "VALUES (?, ?, ?, ?, ?)",
        rows,
    )
    return len(rows)


def _links_id(db, links: tuple) -> int:
    """The id of this list of tracked links (campaigns/links.py), stored once."""
    text = _canonical([list(x) for x in links])
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    db.execute("INSERT OR IGNORE INTO click_links (digest, links) VALUES (?, ?)", (digest, text))
    return db.execute("SELECT id FROM click_links WHERE digest = ?", (digest,)).fetchone()[0]


def _stored(db, row_id: int) -> tuple[Content, datetime] | None:
    found = db.execute(
        "SELECT c.content, v.recipient, v.built_at FROM views v "
        "JOIN view_contents c ON c.id = v.content_id WHERE v.outbox_id = ?",
        (row_id,),
    ).fetchone()
    if found is None:
        return None
    data = json.loads(found[0])
    content = Content(
        **{k: data[k] for k in _CONTENT_FIELDS if k in data},
        recipient=json.loads(found[1]),
    )
    content.ctas = tuple(content.ctas)
    return content, parse_iso(found[2])


def show(db, settings: Settings, subscriber_id: int, row_id: int, now: datetime) -> View:
    """The email of outbox row ``row_id`` as its reader received it (reads only).

    Raises NotFound when the row is not this subscriber's, was never sent, or
    can no longer be shown (the subscriber was erased).
    """
    # A test send goes to an address with no subscriber row; its link names the
    # stand-in reader (id 0) it was built for, and only such a row is shown for it.
    stand_in = subscriber_id == 0
    found = db.execute(
        f"SELECT {_ROW_COLUMNS}, status, sent_at FROM outbox WHERE id = ? AND "
        + ("subscriber_id IS NULL" if stand_in else "subscriber_id = ?"),
        (row_id,) if stand_in else (row_id, subscriber_id),
    ).fetchone()
    if found is None or (stand_in and found[2] not in kinds.WITHOUT_SUBSCRIBER):
        raise NotFound(f"view: message {row_id} does not exist for this reader")
    *columns, status, sent_at = found
    row = _row(tuple(columns))
    sub = messages.reader(db, row)
    if sub is None or sub.status == "erased":
        raise NotFound("view: this message is no longer available")
    stored = _stored(db, row.id)
    if stored is not None:
        content, built_at = stored
    else:
        content, built_at = _rebuilt(db, settings, row, sub, status, parse_iso(sent_at))
    rendered = messages.render_for(settings, content, sub, row, built_at)
    expired_at = None
    if content.kind == "confirm":
        expires = built_at + timedelta(days=settings.confirm_max_age_days)
        if now > expires:
            expired_at = expires
    return View(
        row.kind, rendered, built_at, expired_at,
        can_resend=expired_at is not None and sub.status == "pending",
    )  # fmt: skip


def _rebuilt(db, settings: Settings, row, sub, status: str, sent_at: datetime | None):
    """A row sent before views were stored: rebuild it as of the moment it was sent."""
    if status != "sent" or sent_at is None:
        raise NotFound("view: this message was never sent")
    built_at = sent_at  # a moment after the build: tokens as old as the email's, to the second
    make = kinds.BUILDERS.get(row.kind)
    if make is None:
        raise NotFound(f"view: messages of kind {row.kind!r} cannot be shown in the browser")
    try:
        return make(db, settings, row, sub, built_at), built_at
    except SkipMessage as skip:
        raise NotFound(f"view: this message is no longer available ({skip.reason})") from skip


def resend_confirmation(
    db, settings: Settings, subscriber_id: int, row_id: int, now: datetime, *,
    ip: str | None = None, user_agent: str | None = None,
) -> optin.SignupResult:
    """Queue a fresh confirmation from an expired one's view page.

    Only for a confirmation row of this subscriber while they are still
    pending; it is a repeat signup (``optin.signup``: consent request recorded,
    at most one confirmation a day, the usual outbox path).  Otherwise nothing
    changes and the result says why (``not_pending``).
    """
    with transaction(db):
        kind = db.execute(
            "SELECT kind FROM outbox WHERE id = ? AND subscriber_id = ?", (row_id, subscriber_id)
        ).fetchone()
        if kind is None or kind[0] != "confirm":
            raise NotFound(f"view: message {row_id} is not a confirmation for this reader")
        sub = lifecycle.get(db, subscriber_id)
        if sub.status != "pending" or not sub.email:
            return optin.SignupResult(subscriber_id, "not_pending")
        return optin.signup(
            db, settings, sub.email, now, source="view-in-browser", ip=ip, user_agent=user_agent
        )
