"""One-off campaigns to a segment: create, schedule, queue, pause, resume, cancel.

A campaign's life::

    draft --schedule--> scheduled --queue (send_at reached)--> sending --> finished
                            |  ^                                 |  ^
                            v  |            pause / resume       v  |
                           paused <----------------------------- paused
    any unfinished state --cancel--> cancelled

Queueing materialises one outbox row per member (dedupe key
``campaign:<id>:<subscriber>``), streaming members in batches with one
transaction per batch.  Because the key is UNIQUE, queueing again after a
crash, or two workers queueing at once, never makes a second row for anyone;
``queued_at`` is set only when the whole segment has been walked.

Pausing only flips the campaign row: the sender's claim filter
(:func:`campaigns.holds.claim_filter`) skips rows of paused campaigns.
Nothing is rewritten row by row, so a crash mid-pause leaves nothing to
repair, and pausing and resuming any number of times sends exactly what an
uninterrupted run would.

``--local`` campaigns go out at the same wall-clock time in each reader's own
zone: queueing starts when the earliest zone on Earth (UTC+14) reaches that
time, and each row is due at the reader's local instant.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from funnel import outbox
from funnel.db import OUTBOX_UNFINISHED, iso, parse_iso, transaction
from funnel.errors import InputError, NotFound, TransitionError
from funnel.localtime import local_to_utc
from funnel.settings import Settings
from funnel.validate import zone_name
from subscribers import optin, segments

from . import merge_tags, render, schedule, webinars
from .content import Content, SkipMessage
from .frontmatter import split_front_matter, validate_ctas

TEMPLATES = ("broadcast",)
#: How errors name a broadcast's fields by default: the CLI's options.
CLI_NAMES = {"subject": "--subject", "preheader": "--preheader", "body": "--body"}
FRONT_MATTER_KEYS = {"subject", "preheader", "ctas", "title"}
#: The earliest zone on Earth: a --local campaign starts queueing when it gets there.
EARLIEST_ZONE = ZoneInfo("Pacific/Kiritimati")


@dataclass(frozen=True)
class Campaign:
    id: int
    kind: str
    template: str
    subject: str
    preheader: str
    body_md: str
    segment: str
    stream: str
    status: str
    send_at: str | None
    local_time: int
    data: dict
    created_at: str
    updated_at: str
    queued_at: str | None

    @property
    def ctas(self) -> list[dict]:
        return list(self.data.get("ctas", []))

    @property
    def where(self) -> list[str]:
        return list(self.data.get("where", []))

    @property
    def local_at(self) -> str | None:
        return self.data.get("local_at")


_COLUMNS = (
    "id, kind, template, subject, preheader, body_md, segment, stream, status, send_at, "
    "local_time, data, created_at, updated_at, queued_at"
)


def get(db, campaign_id: int) -> Campaign:
    row = db.execute(f"SELECT {_COLUMNS} FROM campaigns WHERE id = ?", (campaign_id,)).fetchone()
    if row is None:
        raise NotFound(f"campaign {campaign_id} does not exist (see `funnel campaign list`)")
    *head, data, created, updated, queued = row
    return Campaign(*head, json.loads(data) if data else {}, created, updated, queued)


# ----------------------------------------------------------------- create
def read_body(path: Path) -> tuple[dict, str]:
    """A Markdown body, optionally with front matter (subject, preheader, ctas)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise InputError(f"--body: {path} does not exist") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"--body: {path} is not UTF-8 text") from exc
    if not text.lstrip("\ufeff").startswith("---"):
        return {}, text
    data, lines, body = split_front_matter(text, Path(path))
    for key in data:
        if key not in FRONT_MATTER_KEYS:
            line = lines.get(key)
            raise InputError(
                f"{path}{':' + str(line) if line else ''}: front matter {key!r} is not a known "
                f"key; use {', '.join(sorted(FRONT_MATTER_KEYS))}"
            )
    for key in ("subject", "preheader", "title"):
        if key in data and not isinstance(data[key], str):
            raise InputError(f"{path}:{lines.get(key, 1)}: front matter {key!r} must be a string")
    if "ctas" in data:
        data["ctas"] = validate_ctas(data["ctas"], f"{path}:{lines.get('ctas', 1)}")
    return data, body


def create(
    db,
    settings: Settings,
    now: datetime,
    *,
    subject: str | None = None,
    segment: str = "all",
    where: tuple[str, ...] = (),
    preheader: str | None = None,
    body_md: str | None = None,
    body_path: Path | None = None,
    ctas: list[dict] | None = None,
    template: str = "broadcast",
    stream: str = "broadcasts",
    form_nonce: str | None = None,
    names: dict[str, str] | None = None,
) -> int:
    """Create a draft broadcast; returns its id.  Options beat the body's front matter.

    ``form_nonce`` (the console's compose form) makes a double submit harmless:
    a second create with the same nonce returns the first draft's id.  ``names``: how
    errors name the fields (see :func:`_check_content`).
    """
    if form_nonce:
        found = db.execute(
            "SELECT id FROM campaigns WHERE json_extract(data, '$.form_nonce') = ?", (form_nonce,)
        ).fetchone()
        if found:
            return found[0]
    if template not in TEMPLATES:
        raise InputError(f"--template: unknown template {template!r}; use {', '.join(TEMPLATES)}")
    front: dict = {}
    if body_path is not None:
        front, body_md = read_body(body_path)
    subject = (subject if subject is not None else front.get("subject", "")).strip()
    preheader = (preheader if preheader is not None else front.get("preheader", "")).strip()
    ctas = ctas if ctas is not None else front.get("ctas", [])
    _check_content(settings, subject, preheader, body_md or "", ctas, segment, where, names)
    data = {"ctas": ctas, "where": list(where), **({"form_nonce": form_nonce} if form_nonce else {})}
    cur = db.execute(
        "INSERT INTO campaigns (kind, template, subject, preheader, body_md, segment, stream, "
        "status, data, created_at, updated_at) VALUES ('broadcast', ?, ?, ?, ?, ?, ?, 'draft', ?, ?, ?)",
        (
            template,
            subject,
            preheader,
            body_md or "",
            segment,
            stream,
            json.dumps(data),
            iso(now),
            iso(now),
        ),
    )
    return cur.lastrowid


def _check_content(settings: Settings, subject: str, preheader: str, body_md: str, ctas: list,
                   segment: str, where: tuple[str, ...], names: dict[str, str] | None = None) -> None:
    """Everything a draft must pass before it is stored (create and update).

    ``names`` says how errors name the subject, preheader and body (the CLI's
    options by default; the console passes its form labels).
    """
    from . import mime, render

    n = {**CLI_NAMES, **(names or {})}
    if not subject:
        raise InputError(
            f"{n['subject']}: a subject is required (or put 'subject:' in the body's front matter)"
            if not names else f"{n['subject']}: a subject is required"
        )
    if not body_md.strip():
        raise InputError(f"{n['body']}: the campaign needs a body"
                         + (" (a Markdown file)" if not names else ""))
    mime.header_value(subject, n["subject"])  # CR/LF/NUL never reach a header
    mime.header_value(preheader, n["preheader"])
    merge_tags.check(subject, n["subject"])
    merge_tags.check(preheader, n["preheader"])
    merge_tags.check(body_md, n["body"])
    segments.compile_segment(settings, segment, where=where)  # unknown segment/key fails now
    # Compile once now so a bad CTA or an oversize body fails here, not mid-send.
    render.compile_email(settings, "broadcast", subject=subject, preheader=preheader,
                         body_md=body_md, ctas=ctas)


def update_draft(db, settings: Settings, campaign_id: int, now: datetime, *, subject: str,
                 preheader: str, body_md: str, segment: str, where: tuple[str, ...] = (),
                 names: dict[str, str] | None = None) -> Campaign:
    """Change a draft's words and audience (the console's Edit); only a draft can change."""
    subject, preheader = subject.strip(), preheader.strip()
    c = get(db, campaign_id)
    _check_content(settings, subject, preheader, body_md, c.ctas, segment, where, names)
    with transaction(db):
        c = get(db, campaign_id)
        if c.status != "draft":
            raise TransitionError(f"campaign {campaign_id} is {c.status}; only a draft can be edited")
        db.execute(
            "UPDATE campaigns SET subject = ?, preheader = ?, body_md = ?, segment = ?, data = ?, "
            "updated_at = ? WHERE id = ?",
            (subject, preheader, body_md, segment, json.dumps({**c.data, "where": list(where)}),
             iso(now), campaign_id),
        )
    return get(db, campaign_id)


# ----------------------------------------------------------------- schedule
def _zone(name: str | None, settings: Settings) -> ZoneInfo:
    if not name:
        return settings.zone
    return ZoneInfo(zone_name(name, "--tz"))


def schedule_campaign(
    db,
    settings: Settings,
    campaign_id: int,
    now: datetime,
    *,
    at: str | None = None,
    tz: str | None = None,
    local: bool = False,
    send_now: bool = False,
    in_: str | None = None,
    from_draft: bool = False,
) -> Campaign:
    """Set when a draft (or re-schedule a not yet queued) campaign goes out.

    With ``from_draft`` only a draft is accepted, so a form submitted twice
    schedules once and the second answer says it is already scheduled.

    ``at`` is a time in ``tz`` (default: the clinic's zone) in any form
    :func:`campaigns.schedule.parse_when` accepts ("2026-12-01 09:00",
    "tomorrow 09:00", "in 3 days 09:00"...), stored in UTC; with ``local``
    it is the wall-clock time in each reader's zone.  ``in_`` is a delay from
    now ("2h", "90m", "3d").
    """
    if sum((send_now, at is not None, in_ is not None)) != 1:
        raise InputError("--at: give one of --at TIME, --in DELAY or --now")
    if local and tz:
        raise InputError("--tz: --local sends at the time in each reader's own zone; drop --tz")
    if local and in_ is not None:
        raise InputError("--in: --local needs a wall-clock time; use --at instead")
    zone = _zone(tz, settings)
    data_update: dict = {}
    if send_now:
        send_at, local_flag = now, 0
    else:
        field = "--at" if at is not None else "--in"
        text = at if at is not None else schedule.offset_text(in_, "--in")
        when = schedule.parse_when(text, zone, now, field)
        if when < now:
            raise InputError(
                f"{field} {' '.join(text.split())} is in the past "
                f"({when.astimezone(zone):%Y-%m-%d %H:%M} {zone.key}); use --now to send at once"
            )
        if local:
            wall = when.astimezone(zone).replace(tzinfo=None)
            data_update["local_at"] = wall.strftime("%Y-%m-%d %H:%M")
            earliest = local_to_utc(wall.date(), wall.hour, EARLIEST_ZONE, wall.minute)
            send_at, local_flag = max(earliest, now), 1
        else:
            send_at, local_flag = when, 0
    with transaction(db):
        c = get(db, campaign_id)
        if from_draft and c.status != "draft":
            raise TransitionError(
                f"campaign {campaign_id} is already {c.status}; nothing was changed"
            )
        if c.status not in ("draft", "scheduled") or c.queued_at:
            raise TransitionError(
                f"campaign {campaign_id} is {c.status}; only a draft or a scheduled campaign that "
                "has not started can be (re)scheduled"
            )
        data = {**c.data, **data_update}
        if not local:
            data.pop("local_at", None)
        db.execute(
            "UPDATE campaigns SET status = 'scheduled', send_at = ?, local_time = ?, data = ?, "
            "updated_at = ? WHERE id = ?",
            (iso(send_at), local_flag, json.dumps(data), iso(now), campaign_id),
        )
    return get(db, campaign_id)


# ----------------------------------------------------------------- queue
def queue(
    db,
    settings: Settings,
    campaign_id: int,
    now: datetime,
    *,
    batch: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Materialise one outbox row per member; returns rows created now (0 if all existed).

    Safe to repeat and to run in two processes at once (UNIQUE dedupe key).
    """
    c = get(db, campaign_id)
    if c.status not in ("scheduled", "sending", "paused"):
        raise TransitionError(f"campaign {campaign_id} is {c.status}; it can't be queued")
    if c.queued_at:
        return 0
    wall = datetime.strptime(c.local_at, "%Y-%m-%d %H:%M") if c.local_time and c.local_at else None
    due_default = max(parse_iso(c.send_at) or now, now) if not wall else now
    expiry = timedelta(hours=settings.newsletter_expiry_hours)
    created = 0
    for rows in segments.iter_rows(
        db,
        settings,
        c.segment,
        columns=("id", "email", "timezone"),
        batch=batch,
        where=c.where,
        now=now,
        stream=c.stream,
    ):
        batch_rows = []
        for sid, email, tz_name in rows:
            if wall is not None:
                tz = settings.zone_for(tz_name)
                due = local_to_utc(wall.date(), wall.hour, tz, wall.minute)
            else:
                due = due_default
            batch_rows.append(
                {
                    "dedupe_key": f"campaign:{campaign_id}:{sid}",
                    "kind": "broadcast",
                    "subscriber_id": sid,
                    "to_addr": email,
                    "due_at": due,
                    "stream": c.stream,
                    "ref": f"campaign:{campaign_id}",
                    "campaign_id": campaign_id,
                    "priority": outbox.PRIORITY_BROADCAST,
                    "expires_at": max(due, now) + expiry,
                }
            )
        with transaction(db):
            if get(db, campaign_id).status == "cancelled":
                return created
            created += outbox.enqueue_many(db, settings, batch_rows, now)
        if progress:
            progress(len(rows))
    with transaction(db):
        db.execute(
            "UPDATE campaigns SET queued_at = ?, updated_at = ?, "
            "status = CASE WHEN status = 'scheduled' THEN 'sending' ELSE status END "
            "WHERE id = ? AND status != 'cancelled'",
            (iso(now), iso(now), campaign_id),
        )
    return created


def queue_due(
    db, settings: Settings, now: datetime, *, progress: Callable[[int], None] | None = None
) -> tuple[int, int]:
    """Queue every scheduled campaign whose time has come; returns (campaigns, rows)."""
    ids = [
        r[0]
        for r in db.execute(
            "SELECT id FROM campaigns WHERE status = 'scheduled' AND send_at <= ? ORDER BY send_at, id",
            (iso(now),),
        ).fetchall()
    ]
    rows = 0
    for cid in ids:
        rows += queue(db, settings, cid, now, progress=progress)
    return len(ids), rows


def finish_done(db, now: datetime) -> int:
    """Mark sending campaigns with no unfinished rows left as finished."""
    marks = ", ".join("?" * len(OUTBOX_UNFINISHED))
    return db.execute(
        "UPDATE campaigns SET status = 'finished', updated_at = ? WHERE status = 'sending' "
        "AND queued_at IS NOT NULL AND NOT EXISTS (SELECT 1 FROM outbox WHERE campaign_id = "
        f"campaigns.id AND status IN ({marks}))",
        (iso(now), *OUTBOX_UNFINISHED),
    ).rowcount


# ----------------------------------------------------------------- control
def pause(db, campaign_id: int, now: datetime) -> Campaign:
    """Stop further sends of this campaign; rows already handed to SMTP finish."""
    with transaction(db):
        c = get(db, campaign_id)
        if c.status == "paused":
            return c
        if c.status not in ("scheduled", "sending"):
            raise TransitionError(
                f"campaign {campaign_id} is {c.status}; only a scheduled or sending campaign can be paused"
            )
        db.execute(
            "UPDATE campaigns SET status = 'paused', updated_at = ? WHERE id = ?",
            (iso(now), campaign_id),
        )
    return get(db, campaign_id)


def resume(db, campaign_id: int, now: datetime) -> Campaign:
    with transaction(db):
        c = get(db, campaign_id)
        if c.status != "paused":
            raise TransitionError(f"campaign {campaign_id} is {c.status}, not paused")
        db.execute(
            "UPDATE campaigns SET status = ?, updated_at = ? WHERE id = ?",
            ("sending" if c.queued_at else "scheduled", iso(now), campaign_id),
        )
    return get(db, campaign_id)


def cancel(db, campaign_id: int, now: datetime) -> tuple[Campaign, int]:
    """Cancel the campaign and its unsent rows; returns (campaign, rows cancelled)."""
    with transaction(db):
        c = get(db, campaign_id)
        if c.status in ("finished", "cancelled"):
            raise TransitionError(f"campaign {campaign_id} is already {c.status}")
        n = db.execute(
            "UPDATE outbox SET status = 'cancelled', lease_token = NULL, updated_at = ?, "
            "last_error = 'campaign cancelled' WHERE campaign_id = ? AND status IN ('queued', 'retry')",
            (iso(now), campaign_id),
        ).rowcount
        db.execute(
            "UPDATE campaigns SET status = 'cancelled', updated_at = ? WHERE id = ?",
            (iso(now), campaign_id),
        )
    return get(db, campaign_id), n


@dataclass(frozen=True)
class Status:
    campaign: Campaign
    counts: dict[str, int]
    finished: bool
    audience: int | None  # members now, before queueing
    #: (reason, rows) queued rows held by a configuration error (a CTA without a URL...)
    held: list[tuple[str, int]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def status(db, settings: Settings, campaign_id: int, now: datetime) -> Status:
    c = get(db, campaign_id)
    counts = outbox.counts(db, "campaign_id = ?", (campaign_id,))
    unfinished = sum(counts.get(s, 0) for s in OUTBOX_UNFINISHED)
    audience = None
    if not c.queued_at and c.status in ("draft", "scheduled", "paused"):
        audience = segments.count(db, settings, c.segment, where=c.where, now=now, stream=c.stream)
    held = outbox.held_reasons(db, "campaign_id = ?", (campaign_id,))
    return Status(c, counts, bool(c.queued_at) and unfinished == 0, audience, held)


def listing(db, *, limit: int = 50) -> list[dict]:
    rows = db.execute(
        "SELECT c.id, c.status, c.subject, c.segment, c.send_at, c.local_time, c.data, "
        "(SELECT COUNT(*) FROM outbox o WHERE o.campaign_id = c.id AND o.status = 'sent'), "
        "(SELECT COUNT(*) FROM outbox o WHERE o.campaign_id = c.id) "
        "FROM campaigns c WHERE c.kind = 'broadcast' ORDER BY c.id DESC LIMIT ?",
        (limit,),
    ).fetchall()
    out = []
    for cid, st, subject, segment, send_at, local, data, sent, total in rows:
        when = "-"
        if local:
            when = (json.loads(data) if data else {}).get("local_at", "-") + " local"
        elif send_at:
            when = parse_iso(send_at).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
        out.append(
            {
                "id": cid,
                "status": st,
                "subject": subject,
                "segment": segment,
                "when": when,
                "sent": sent,
                "rows": total,
            }
        )
    return out


# ----------------------------------------------------------------- test sends
#: The outbox kind of a test send: the campaign's real message to one address,
#: with no subscriber and no campaign_id, so it never counts as the campaign's progress.
TEST_KIND = "broadcast_test"
TEST_PREFIX = "[Test] "


def test_send(db, settings: Settings, campaign_id: int, to_addr: str, now: datetime, *,
              name: str = "") -> int:
    """Queue the campaign's message, subject marked "[Test]", to ``to_addr``; returns the row id.

    It goes through the outbox like every message (the worker or `funnel send`
    delivers it).  Two requests in the same second queue one message.
    """
    to = optin.clean_email(to_addr, "--to")
    c = get(db, campaign_id)
    if c.status == "cancelled":
        raise TransitionError(f"campaign {campaign_id} is cancelled; there is nothing to test")
    with transaction(db):
        row = outbox.enqueue(
            db, settings, dedupe_key=f"campaign-test:{campaign_id}:{to}:{iso(now)}", kind=TEST_KIND,
            subscriber_id=None, to_addr=to, due_at=now, now=now, stream=c.stream,
            ref=f"campaign:{campaign_id}:test", priority=outbox.PRIORITY_TRANSACTIONAL,
            data={"campaign_id": campaign_id, "name": name},
        )  # fmt: skip
    if row is None:
        row = db.execute(
            "SELECT id FROM outbox WHERE dedupe_key = ?",
            (f"campaign-test:{campaign_id}:{to}:{iso(now)}",),
        ).fetchone()[0]
    return row


def build_test(db, settings: Settings, row, sub, now: datetime) -> Content:
    """A test send: the campaign as a reader would get it, subject marked "[Test]"."""
    c = get(db, int(row.data["campaign_id"]))
    content = webinars.authored_content(
        db, settings, c, sub, now, kind="broadcast",
        extra={"reason": render.footer_reason("newsletter", settings.site_name)},
    )
    return replace(content, subject=TEST_PREFIX + content.subject)


# ----------------------------------------------------------------- builder
def build_broadcast(db, settings: Settings, row, sub, now: datetime) -> Content:
    c = get(db, row.campaign_id)
    if c.status == "cancelled":
        raise SkipMessage("cancelled", f"campaign {c.id} was cancelled")
    if sub.status != "active":
        raise SkipMessage("cancelled", f"the subscriber is {sub.status}")
    stream = db.execute(
        "SELECT status, paused_until FROM subscriptions WHERE subscriber_id = ? AND stream = ?",
        (sub.id, c.stream),
    ).fetchone()
    if stream is None or stream[0] == "unsubscribed":
        raise SkipMessage("cancelled", f"not subscribed to {c.stream}")
    if stream[0] == "paused" and (stream[1] is None or parse_iso(stream[1]) > now):
        raise SkipMessage("cancelled", f"{c.stream} is paused for this subscriber")
    return webinars.authored_content(
        db, settings, c, sub, now, kind="broadcast",
        extra={"reason": render.footer_reason("newsletter", settings.site_name)},
    )
