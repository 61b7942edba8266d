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

A/B subjects (``ab_tests``, migration 0025): the campaign's subject is A and
``subject_b`` is B.  Queueing first sends each variant to an equal random
slice of ``test_share`` of the audience (selection sampling over the
streamed members, seeded by the campaign id, so a re-run picks the same
people); the row's data carries its variant.  At ``decide_at`` the worker
(:func:`decide_due`) counts the human clicks per variant
(campaigns/clicks.py) and queues the winner to everyone else; the UNIQUE
dedupe key skips those already tested.  A tie, or fewer than
``AB_MIN_CLICKS`` human clicks in all, falls back to A, and the decision's
reason says so.  A ``--local`` campaign's rest goes at the same wall-clock
time in each reader's zone, the first time it comes after the decision.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from funnel import outbox
from funnel.db import OUTBOX_UNFINISHED, iso, parse_iso, transaction, unchanged
from funnel.errors import InputError, NotFound, TransitionError
from funnel.localtime import local_to_utc
from funnel.settings import Settings
from funnel.validate import zone_name
from subscribers import lifecycle, optin, segments

from . import clicks, merge_tags, mime, render, schedule, webinars
from .content import Content, SkipMessage
from .frontmatter import split_front_matter, validate_ctas

TEMPLATES = ("broadcast",)
#: How errors name a broadcast's fields by default: the CLI's options.
CLI_NAMES = {"subject": "--subject", "preheader": "--preheader", "body": "--body",
             "subject_b": "--subject", "test_share": "--test-share",
             "decide_after": "--decide-after"}
FRONT_MATTER_KEYS = {"subject", "preheader", "ctas", "title"}
#: The earliest zone on Earth: a --local campaign starts queueing when it gets there.
EARLIEST_ZONE = ZoneInfo("Pacific/Kiritimati")
#: Fewer human clicks than this on both variants together decide nothing: A goes.
AB_MIN_CLICKS = 5


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
    ab_subjects: tuple[str, ...] = (),
    test_share: str | None = None,
    decide_after: str | None = None,
) -> int:
    """Create a draft broadcast; returns its id.  Options beat the body's front matter.

    With a subject B in ``ab_subjects`` it is an A/B test (module docstring):
    ``test_share`` ("20%") of the audience is tested, and the winner goes to
    the rest ``decide_after`` ("4h") later.

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
    ab = _ab_options(subject, ab_subjects, test_share, decide_after, names)
    data = {"ctas": ctas, "where": list(where), **({"form_nonce": form_nonce} if form_nonce else {})}
    with transaction(db):
        cid = db.execute(
            "INSERT INTO campaigns (kind, template, subject, preheader, body_md, segment, stream, "
            "status, data, created_at, updated_at) VALUES ('broadcast', ?, ?, ?, ?, ?, ?, 'draft', ?, ?, ?)",
            (template, subject, preheader, body_md or "", segment, stream, json.dumps(data),
             iso(now), iso(now)),
        ).lastrowid
        if ab:
            db.execute(
                "INSERT INTO ab_tests (campaign_id, subject_b, test_share, decide_after_seconds) "
                "VALUES (?, ?, ?, ?)",
                (cid, *ab),
            )
    return cid


# ----------------------------------------------------------------- A/B subjects
_SHARE_RE = re.compile(r"(\d{1,2}(?:\.\d+)?)\s*%?")
_AFTER_RE = re.compile(r"(\d{1,4})\s*(m|min|minutes?|h|hours?|d|days?)")
_AFTER_UNITS = {"m": 60, "h": 3600, "d": 86400}


def _ab_options(subject: str, ab_subjects: tuple[str, ...], share: str | None,
                after: str | None, names: dict[str, str] | None = None
                ) -> tuple[str, float, int] | None:
    """(subject B, test share, seconds to wait) for an A/B campaign, None for a plain one.

    ``names``: how errors name the fields (the CLI's options by default).
    """
    n = {**CLI_NAMES, **(names or {})}
    if len(ab_subjects) > 1:
        raise InputError(f"{n['subject_b']}: give one subject, or two for an A/B test")
    if not ab_subjects:
        if share is not None or after is not None:
            key = "test_share" if share is not None else "decide_after"
            raise InputError(f"{n[key]}: only an A/B test has one; give a second subject "
                             f"({n['subject_b']})")
        return None
    subject_b = ab_subjects[0].strip()
    if not subject_b or subject_b == subject:
        raise InputError(f"{n['subject_b']}: an A/B test needs two different, non-empty subjects")
    mime.header_value(subject_b, n["subject_b"])
    merge_tags.check(subject_b, n["subject_b"])
    m = _SHARE_RE.fullmatch((share or "20%").strip())
    value = float(m.group(1)) if m else -1.0
    if not 2 <= value <= 90:
        raise InputError(
            f"{n['test_share']}: {share!r} is not a share of the audience between 2% and 90%, "
            "e.g. 20%"
        )
    m = _AFTER_RE.fullmatch((after or "4h").strip().lower())
    if not m or int(m.group(1)) == 0:
        raise InputError(f"{n['decide_after']}: {after!r} is not a wait like 4h, 90m or 1d")
    return subject_b, value / 100, int(m.group(1)) * _AFTER_UNITS[m.group(2)[0]]


@dataclass(frozen=True)
class ABTest:
    campaign_id: int
    subject_b: str
    test_share: float
    decide_after_seconds: int
    test_queued_at: str | None
    decide_at: str | None
    decided_at: str | None
    winner: str | None
    clicks_a: int | None
    clicks_b: int | None
    reason: str | None


@dataclass(frozen=True)
class ABSummary:
    """An A/B test in words: its plan and where its decision stands."""

    plan: str  # "20% of the audience, decided 240 min after it starts"
    decision: str  # "B goes to the rest; B had more human clicks (12 against 4)"
    decided: bool


def ab_summary(ab: ABTest) -> ABSummary:
    """What `funnel campaign status` and the console say about an A/B test."""
    plan = (f"{ab.test_share:.0%} of the audience, decided "
            f"{ab.decide_after_seconds // 60} min after it starts")
    if ab.decided_at:
        decision = f"{ab.winner} goes to the rest; {ab.reason}"
    elif ab.decide_at:
        decision = f"due {ab.decide_at[:16].replace('T', ' ')} UTC"
    else:
        decision = "after the test slices go out"
    return ABSummary(plan, decision, bool(ab.decided_at))


def ab_test(db, campaign_id: int) -> ABTest | None:
    row = db.execute(
        "SELECT campaign_id, subject_b, test_share, decide_after_seconds, test_queued_at, decide_at, "
        "decided_at, winner, clicks_a, clicks_b, reason FROM ab_tests WHERE campaign_id = ?",
        (campaign_id,),
    ).fetchone()
    return ABTest(*row) if row else None


def get_with_ab(db, campaign_id: int) -> tuple[Campaign, ABTest | None]:
    """A campaign and its A/B test, if it has one (the console's Edit form)."""
    return get(db, campaign_id), ab_test(db, campaign_id)


class _Slices:
    """Selection sampling: exactly ``each`` readers per variant out of ``total``, streamed."""

    def __init__(self, campaign_id: int, total: int, each: int):
        self.rng = random.Random(f"funnel.ab.{campaign_id}")
        self.left, self.a, self.b = total, each, each

    def pick(self) -> str | None:
        need = self.a + self.b
        chosen = self.left > 0 and self.rng.random() * self.left < need
        self.left -= 1
        if not chosen:
            return None
        if self.rng.random() * need < self.a:
            self.a -= 1
            return "A"
        self.b -= 1
        return "B"


def _next_local(wall: time, tz: ZoneInfo, now: datetime) -> datetime:
    """The first instant at or after ``now`` when it is ``wall`` o'clock in ``tz``."""
    day = now.astimezone(tz).date()
    due = local_to_utc(day, wall.hour, tz, wall.minute)
    return due if due >= now else local_to_utc(day + timedelta(days=1), wall.hour, tz, wall.minute)


def _decision(counts: dict[str, int]) -> tuple[str, str]:
    a, b = counts.get("A", 0), counts.get("B", 0)
    if a + b < AB_MIN_CLICKS:
        return "A", f"too few human clicks to decide ({a + b}, fewer than {AB_MIN_CLICKS}): A goes"
    if a == b:
        return "A", f"a tie ({a} human clicks each): A goes"
    winner = "A" if a > b else "B"
    return winner, f"{winner} had more human clicks ({max(a, b)} against {min(a, b)})"


def variant_clicks(db, campaign_id: int) -> dict[str, int]:
    """Human clicks per variant of an A/B campaign."""
    return dict(db.execute(
        "SELECT json_extract(o.data, '$.variant'), COUNT(*) FROM clicks k "
        "JOIN outbox o ON o.id = k.outbox_id WHERE o.campaign_id = ? AND k.verdict = 'human' "
        "GROUP BY 1",
        (campaign_id,),
    ).fetchall())


def decide_due(db, settings: Settings, now: datetime) -> int:
    """Decide every A/B test whose wait is over and queue its winner; returns how many."""
    due = [r[0] for r in db.execute(
        "SELECT a.campaign_id FROM ab_tests a JOIN campaigns c ON c.id = a.campaign_id "
        "WHERE a.decided_at IS NULL AND a.decide_at <= ? AND c.status = 'sending' "
        "ORDER BY a.decide_at",
        (iso(now),),
    ).fetchall()]
    for cid in due:
        with transaction(db):
            counts = variant_clicks(db, cid)
            winner, reason = _decision(counts)
            db.execute(
                "UPDATE ab_tests SET decided_at = ?, winner = ?, clicks_a = ?, clicks_b = ?, "
                "reason = ? WHERE campaign_id = ? AND decided_at IS NULL",
                (iso(now), winner, counts.get("A", 0), counts.get("B", 0), reason, cid),
            )
        queue(db, settings, cid, now)
    return len(due)


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
                 names: dict[str, str] | None = None, ab_subjects: tuple[str, ...] = (),
                 test_share: str | None = None, decide_after: str | None = None) -> Campaign:
    """Change a draft's words and audience (the console's Edit); only a draft can change.

    The A/B options are as for :func:`create`; none makes it a plain broadcast again.
    """
    subject, preheader = subject.strip(), preheader.strip()
    c = get(db, campaign_id)
    _check_content(settings, subject, preheader, body_md, c.ctas, segment, where, names)
    ab = _ab_options(subject, ab_subjects, test_share, decide_after, names)
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
        db.execute("DELETE FROM ab_tests WHERE campaign_id = ?", (campaign_id,))
        if ab:
            db.execute(
                "INSERT INTO ab_tests (campaign_id, subject_b, test_share, decide_after_seconds) "
                "VALUES (?, ?, ?, ?)",
                (campaign_id, *ab),
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
@dataclass
class _Plan:
    """Who of the members get a row now, with which variant and when (see :func:`queue`)."""

    c: Campaign
    settings: Settings
    now: datetime
    slices: _Slices | None = None  # A/B, first go: the test slices
    winner: str | None = None  # A/B, second go: everyone else gets this

    def __post_init__(self):
        c = self.c
        self.wall = (datetime.strptime(c.local_at, "%Y-%m-%d %H:%M")
                     if c.local_time and c.local_at else None)
        self.due_default = max(parse_iso(c.send_at) or self.now, self.now) if not self.wall else self.now
        self.expiry = timedelta(hours=self.settings.newsletter_expiry_hours)

    def due(self, tz_name: str | None) -> datetime:
        wall = self.wall
        if wall is None:
            return self.due_default
        tz = self.settings.zone_for(tz_name)
        if self.winner:
            return _next_local(wall.time(), tz, self.now)
        return local_to_utc(wall.date(), wall.hour, tz, wall.minute)

    def rows(self, members) -> list[dict]:
        out = []
        cid = self.c.id
        for sid, email, tz_name in members:
            variant = self.slices.pick() if self.slices else self.winner
            if self.slices and variant is None:
                continue  # not in the test slices: gets the winner later
            due = self.due(tz_name)
            row = {
                "dedupe_key": f"campaign:{cid}:{sid}",
                "kind": "broadcast",
                "subscriber_id": sid,
                "to_addr": email,
                "due_at": due,
                "stream": self.c.stream,
                "ref": f"campaign:{cid}",
                "campaign_id": cid,
                "priority": outbox.PRIORITY_BROADCAST,
                "expires_at": max(due, self.now) + self.expiry,
            }
            if variant:
                row["data"] = {"variant": variant, **({"rest": 1} if self.winner else {})}
            out.append(row)
        return out


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
    An A/B campaign is queued in two goes: the test slices now, everyone else
    once :func:`decide_due` has picked the winner.
    """
    c = get(db, campaign_id)
    if c.status not in ("scheduled", "sending", "paused"):
        raise TransitionError(f"campaign {campaign_id} is {c.status}; it can't be queued")
    if c.queued_at:
        return 0
    ab = ab_test(db, campaign_id)
    if ab is not None and ab.test_queued_at and not ab.decided_at:
        # The test slices are out; the rest waits for the decision (decide_due), which
        # looks at sending campaigns: one resumed after a pause is sending again.
        with transaction(db):
            db.execute(
                "UPDATE campaigns SET status = 'sending', updated_at = ? "
                "WHERE id = ? AND status = 'scheduled'",
                (iso(now), campaign_id),
            )
        return 0
    plan = _Plan(c, settings, now, winner=ab.winner if ab is not None and ab.decided_at else None)
    if ab is not None and not ab.test_queued_at:
        total = segments.count(db, settings, c.segment, where=c.where, now=now, stream=c.stream)
        plan.slices = _Slices(campaign_id, total, round(total * ab.test_share / 2))
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
        batch_rows = plan.rows(rows)
        with transaction(db):
            if get(db, campaign_id).status == "cancelled":
                return created
            created += outbox.enqueue_many(db, settings, batch_rows, now)
        if progress:
            progress(len(rows))
    with transaction(db):
        if plan.slices is not None:
            _tested(db, ab, now)
        else:
            db.execute(
                "UPDATE campaigns SET queued_at = ?, updated_at = ?, "
                "status = CASE WHEN status = 'scheduled' THEN 'sending' ELSE status END "
                "WHERE id = ? AND status != 'cancelled'",
                (iso(now), iso(now), campaign_id),
            )
    return created


def _tested(db, ab: ABTest, now: datetime) -> None:
    """The test slices are queued: the campaign is sending, the decision is due later."""
    db.execute(
        "UPDATE ab_tests SET test_queued_at = ?, decide_at = ? WHERE campaign_id = ?",
        (iso(now), iso(now + timedelta(seconds=ab.decide_after_seconds)), ab.campaign_id),
    )
    db.execute(
        "UPDATE campaigns SET updated_at = ?, "
        "status = CASE WHEN status = 'scheduled' THEN 'sending' ELSE status END "
        "WHERE id = ? AND status != 'cancelled'",
        (iso(now), ab.campaign_id),
    )


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
    #: an A/B campaign's test and decision
    ab: ABTest | None = None
    #: per variant: {"subject", "sent", "human_clicks", "clicked", "rate"}
    variants: dict[str, dict] = field(default_factory=dict)
    #: the campaign's clicks: human and scanner, and human clicks per link
    clicks: clicks.CampaignClicks | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def ab_summary(self) -> ABSummary | None:
        return ab_summary(self.ab) if self.ab else None


def status(db, settings: Settings, campaign_id: int, now: datetime) -> Status:
    c = get(db, campaign_id)
    counts = outbox.counts(db, "campaign_id = ?", (campaign_id,))
    unfinished = sum(counts.get(s, 0) for s in OUTBOX_UNFINISHED)
    audience = None
    if not c.queued_at and c.status in ("draft", "scheduled", "paused"):
        audience = segments.count(db, settings, c.segment, where=c.where, now=now, stream=c.stream)
    held = outbox.held_reasons(db, "campaign_id = ?", (campaign_id,))
    ab = ab_test(db, campaign_id)
    variants = _variant_figures(db, c, ab) if ab else {}
    return Status(c, counts, bool(c.queued_at) and unfinished == 0, audience, held, ab, variants,
                  clicks.campaign_clicks(db, campaign_id))


def _variant_figures(db, c: Campaign, ab: ABTest) -> dict[str, dict]:
    """Sent, human clicks, messages clicked and the click rate of each variant's test slice."""
    rows = db.execute(
        "SELECT json_extract(o.data, '$.variant'), COUNT(*), "
        "SUM((SELECT COUNT(*) FROM clicks k WHERE k.outbox_id = o.id AND k.verdict = 'human')), "
        "SUM(EXISTS (SELECT 1 FROM clicks k WHERE k.outbox_id = o.id AND k.verdict = 'human')) "
        "FROM outbox o WHERE o.campaign_id = ? AND o.status = 'sent' "
        "AND json_extract(o.data, '$.rest') IS NULL GROUP BY 1",
        (c.id,),
    ).fetchall()
    found = {v: (sent, human or 0, clicked or 0) for v, sent, human, clicked in rows}
    out = {}
    for variant, subject in (("A", c.subject), ("B", ab.subject_b)):
        sent, human, clicked = found.get(variant, (0, 0, 0))
        out[variant] = {"subject": subject, "sent": sent, "human_clicks": human,
                        "clicked": clicked, "rate": 100.0 * clicked / sent if sent else None}
    return out


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
    # Read once per batch, not per message: the row is the same until something is written.
    c = unchanged(db, ("campaign", row.campaign_id), lambda: get(db, row.campaign_id))
    if c.status == "cancelled":
        raise SkipMessage("cancelled", f"campaign {c.id} was cancelled")
    if sub.status != "active":
        raise SkipMessage("cancelled", f"the subscriber is {sub.status}")
    stream = lifecycle.subscription(db, sub.id, c.stream)
    if stream is None or stream[0] == "unsubscribed":
        raise SkipMessage("cancelled", f"not subscribed to {c.stream}")
    if stream[0] == "paused" and (stream[1] is None or parse_iso(stream[1]) > now):
        raise SkipMessage("cancelled", f"{c.stream} is paused for this subscriber")
    if (row.data or {}).get("variant") == "B":
        ab = ab_test(db, c.id)
        if ab is not None:
            c = replace(c, subject=ab.subject_b)
    return webinars.authored_content(
        db, settings, c, sub, now, kind="broadcast",
        extra={"reason": render.footer_reason("newsletter", settings.site_name)},
    )
