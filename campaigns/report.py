"""The funnel report: from signup to offer click, computed from the event log.

Each step counts the *distinct people* with that event in the window:

    signed up -> confirmed -> received part 1 ... part N (each series)
    -> clicked a link in an email -> invited -> registered -> attended
    -> clicked the offer
    -> started the 28-day programme -> day 7 -> day 14 -> day 28
    -> requested an appointment -> booked

Counting people, not events, keeps a resend or a second registration from
inflating a step.  Each step's percentage is taken of a stage that contains
it: the nearest step above whose people include everyone in this one (a
reader can be invited to the webinar without having had part 3, so
"invited" is a share of the last stage that holds all the invitees, never
300% of part 3).  The share of signups counts only those who signed up in
the window.  No percentage can exceed 100%.

Click figures (campaigns/clicks.py) are aggregates only: for each series
step, broadcast and webinar email, the messages sent in the window and how
many of them got a human click (the click rate); the clicks filtered as
link scanners'; the appointment requests made in the window whose
attribution (``appointments.attr_*``) names that email; and the links with
the most human clicks.  Series parts come from ``sent`` events whose ref is
``series:<slug>:<step key>``; the part number is looked up in
``series_deliveries`` (which records it when the step is queued), then in the
series content, then from a leading number in the key.  The appointment
stages count requests made in the window (a request by someone who is not a
subscriber counts too) and, of those, the ones marked booked.  The 28-day
course ends in "requested an appointment": the people who started the course
in the window and made a request in the window, matched on the request's
email address (a course reader who books from the clinic's own site counts
too; a request attributed to a course email by someone else's address does
not).

An all-time report reads its sets of readers from ``reader_bits`` (migration
0032: 64 readers a row per event kind, kept by triggers on ``events``) and
compares them as the bits of an int (:class:`Readers`); a report over a
window reads the events themselves (frozensets).  Both give the same report.

The HTML page is self-contained: inline CSS and an inline SVG bar chart; no
scripts, fonts or images are fetched.
"""

from __future__ import annotations

import html
import re
import sys
from array import array
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta

from funnel.db import iso
from funnel.errors import InputError
from funnel.localtime import local_to_utc
from funnel.settings import Settings

from . import appointments
from .series import list_series


@dataclass(frozen=True)
class Step:
    label: str
    count: int
    group: str  # "signup" | "series" | "clicks" | "webinar" | "course" | "appointment"
    short: str = ""  # the chart's label, when the full one is long
    #: who is at this step (subscriber ids), for the containment rule; None = not known
    people: frozenset | Readers | None = field(default=None, repr=False, compare=False)

    @property
    def chart_label(self) -> str:
        return self.short or self.label


@dataclass(frozen=True)
class ClickRate:
    """One email (series step, broadcast, webinar email): sent, clicked, filtered."""

    group: str  # "series" | "broadcast" | "webinar"
    label: str
    sent: int
    clicked: int  # messages with at least one human click
    filtered: int  # clicks counted as a link scanner's
    opened: int = 0  # messages whose image loaded (track_opens; unreliable)
    apple: int = 0  # ... of which only Apple's proxy loaded it
    requests: int = 0  # appointment requests in the window attributed to this email

    @property
    def rate(self) -> float | None:
        return 100.0 * self.clicked / self.sent if self.sent else None


@dataclass
class Report:
    steps: list[Step]
    since: date | None = None
    until: date | None = None
    generated_at: datetime | None = None
    notes: list[str] = field(default_factory=list)
    click_rates: list[ClickRate] = field(default_factory=list)
    top_links: list[tuple[str, int]] = field(default_factory=list)

    @property
    def signups(self) -> int:
        return self.steps[0].count if self.steps else 0

    def rows(self) -> list[tuple[Step, float | None, float | None]]:
        """(step, % of the stage that contains it, % of signups); None where there is no base.

        The containing stage is the nearest step above whose people include
        all of this step's; the share of signups counts this step's people
        who are among the signups.  Both are at most 100%.
        """
        out = []
        signups = self.steps[0].people if self.steps else None
        for i, step in enumerate(self.steps):
            of_stage = of_signups = None
            if i and step.people is not None:
                base = next((b for b in reversed(self.steps[:i])
                             if b.people is not None and step.people <= b.people), None)
                if base is not None and base.count:
                    of_stage = 100.0 * step.count / base.count
                if signups:
                    of_signups = 100.0 * len(step.people & signups) / len(signups)
            out.append((step, of_stage, of_signups))
        return out

    @property
    def period(self) -> str:
        if self.since and self.until:
            return f"{self.since} to {self.until}"
        if self.since:
            return f"since {self.since}"
        if self.until:
            return f"until {self.until}"
        return "all time"


def _day(value: str | date | None, option: str) -> date | None:
    if value is None or isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value.strip())
    except ValueError as exc:
        raise InputError(f"{option}: {value!r} is not a date like 2026-11-01") from exc


#: The upper bound of an open window ("until" not given).
_OPEN_END = "9999"


def _window(column: str, lo: str, hi: str) -> tuple[str, tuple]:
    """The SQL condition (and its parameters) keeping *column* in [lo, hi).

    All time gives no condition at all: every stored time is within it, and
    left alone the planner reads events_kind_ref_reader in its own order
    instead of a range of (kind, at) that then needs sorting.
    """
    if lo == "" and hi == _OPEN_END:
        return "", ()
    return f" AND {column} >= ? AND {column} < ?", (lo, hi)


def _ids(text: str | None) -> frozenset:
    """A set of subscriber ids from SQLite's ``group_concat`` of them.

    Fast path (issue 15): one string per set instead of one Python row per
    reader, and the ids kept as the decimal text SQLite wrote (the sets only
    ever meet each other: see :meth:`EventLog.ids`); parsing them to int was a
    sixth of a windowed report.  tests/test_report_scale.py checks the sets
    against a row-by-row reading.
    """
    return frozenset(text.split(",")) if text else frozenset()


@dataclass(frozen=True)
class Readers:
    """A set of ids as the bits of one int: bit *i* set = id *i* is in it.

    Fast path (issue 15): an all-time report reads its sets from reader_bits
    (migration 0032), 64 readers a row, and compares them as ints: ``&``,
    ``& ~`` and ``bit_count`` over 1M readers take microseconds, where a
    frozenset of 1M readers takes 0.1 s to build.  It answers what
    :meth:`Report.rows` asks of a frozenset (``<=``, ``&``, ``len``); *space*
    keeps appointment requests apart from subscribers, as the tuples
    ("request", id) do in a frozenset: sets of different spaces share nothing.
    tests/test_report_scale.py checks it against frozenset on random sets.
    """

    bits: int = 0
    space: str = "subscriber"

    def __len__(self) -> int:
        return self.bits.bit_count()

    def __le__(self, other: Readers) -> bool:
        if other.space != self.space:
            return not self.bits
        return not self.bits & ~other.bits

    def __and__(self, other: Readers) -> Readers:
        return Readers(self.bits & other.bits if other.space == self.space else 0, self.space)

    def __or__(self, other: Readers) -> Readers:
        return Readers(self.bits | other.bits, self.space)

    @classmethod
    def of(cls, ids, space: str = "subscriber") -> Readers:
        """From ids read row by row (clickers, requesters, requests: far fewer than the readers)."""
        ids = sorted(set(ids))
        if ids and ids[0] < 0:
            raise ValueError("a negative id has no bit")
        words = array("Q", bytes(8 * (ids[-1] // 64 + 1))) if ids else array("Q")
        for i in ids:
            words[i >> 6] |= 1 << (i & 63)
        return cls(_from_words(words), space)


def _from_words(words: array) -> int:
    """The int whose 64-bit words, least significant first, are *words*."""
    if sys.byteorder != "little":
        words.byteswap()
    return int.from_bytes(words.tobytes(), "little")


class ReaderBits:
    """The sets of an all-time report, read from reader_bits (a few ms each at 1M readers)."""

    empty = Readers()

    def __init__(self, db):
        self.db = db

    @staticmethod
    def usable(db) -> bool:
        """False if a reader id is negative (never assigned by SQLite, but storable):
        its bits would not fit in a Readers, so the report reads the events instead."""
        (low,) = db.execute("SELECT MIN(word) FROM reader_bits").fetchone()
        return low is None or low >= 0

    def _read(self, kind: str, ref: str) -> Readers:
        rows = self.db.execute(
            "SELECT word, bits FROM reader_bits WHERE kind = ? AND ref = ? ORDER BY word", (kind, ref)
        ).fetchall()
        if not rows:
            return self.empty
        words = array("q", bytes(8 * (rows[-1][0] + 1)))  # signed: SQLite's integers
        for word, bits in rows:
            words[word] = bits
        return Readers(_from_words(words))

    def people(self, kind: str) -> Readers:
        return self._read(kind, "")

    def readers(self, kind: str, ref: str) -> Readers:
        return self._read(kind, ref)

    def refs(self, kind: str) -> list[str]:
        """The refs kept for *kind* (series refs of sent and enrolled): a loose scan of the key."""
        return _distinct_refs(self.db, "reader_bits", kind)

    def ids(self, ids) -> Readers:
        return Readers.of(ids)

    def requests(self, ids) -> Readers:
        return Readers.of(ids, "request")


def _distinct_refs(db, table: str, kind: str) -> list[str]:
    """The distinct refs of *kind* in *table* (events or reader_bits, both indexed on
    (kind, ref, ...)): a loose index scan, one seek per ref."""
    return [ref for (ref,) in db.execute(
        f"WITH RECURSIVE r(ref) AS (SELECT MIN(ref) FROM {table} WHERE kind = ? UNION ALL "
        f"SELECT (SELECT MIN(ref) FROM {table} WHERE kind = ? AND ref > r.ref) FROM r "
        "WHERE r.ref IS NOT NULL) SELECT ref FROM r WHERE ref IS NOT NULL",
        (kind, kind),
    )]


class EventLog:
    """The sets of a report over a window, read from the events (frozensets of id text)."""

    empty: frozenset = frozenset()

    def __init__(self, db, lo: str, hi: str):
        self.db, self.lo, self.hi = db, lo, hi

    def people(self, kind: str) -> frozenset:
        """Who has an event of *kind* in the window.  DISTINCT over (ref, reader) follows
        events_kind_ref_reader's order, so no temporary b-tree; the set merges the refs."""
        where, params = _window("at", self.lo, self.hi)
        (text,) = self.db.execute(
            "SELECT group_concat(subscriber_id) FROM (SELECT DISTINCT ref, subscriber_id FROM events "
            f"WHERE kind = ? AND subscriber_id IS NOT NULL{where})",
            (kind, *params),
        ).fetchone()
        return _ids(text)

    def readers(self, kind: str, ref: str) -> frozenset:
        """Who has an event of *kind* about *ref* in the window."""
        where, params = _window("at", self.lo, self.hi)
        (text,) = self.db.execute(READERS_SQL.format(where=where), (kind, ref, *params)).fetchone()
        return _ids(text)

    def refs(self, kind: str) -> list[str]:
        """The distinct refs of *kind*'s events, one index seek each (a loose index scan:
        there are a few per series step or campaign, among millions of events)."""
        return _distinct_refs(self.db, "events", kind)

    def ids(self, ids) -> frozenset:
        """Subscriber ids read row by row, as :func:`_ids` holds them (decimal text)."""
        return frozenset(str(i) for i in ids)

    def requests(self, ids) -> frozenset:
        return frozenset(("request", i) for i in ids)


READERS_SQL = (
    "SELECT group_concat(subscriber_id) FROM (SELECT DISTINCT subscriber_id FROM events "
    "WHERE kind = ? AND ref = ? AND subscriber_id IS NOT NULL{where})"
)


def _sets(db, lo: str, hi: str) -> ReaderBits | EventLog:
    """Where the report's sets come from: reader_bits for all time, the events for a window."""
    if lo == "" and hi == _OPEN_END and ReaderBits.usable(db):
        return ReaderBits(db)
    return EventLog(db, lo, hi)


def _step(label: str, people, group: str, short: str = "") -> Step:
    if not isinstance(people, Readers):
        people = frozenset(people)
    return Step(label, len(people), group, short, people)


def _clickers(db, lo: str, hi: str) -> list[int]:
    """People with a human click, on a message sent in the window."""
    return [sid for (sid,) in db.execute(
        "SELECT DISTINCT o.subscriber_id FROM clicks c JOIN outbox o ON o.id = c.outbox_id "
        "WHERE c.verdict = 'human' AND o.sent_at >= ? AND o.sent_at < ? "
        "AND o.subscriber_id IS NOT NULL",
        (lo, hi),
    )]


def _series_info(settings: Settings) -> dict[str, tuple[str, dict[str, int]]]:
    """slug -> (title, {step key: part}) from the content folder (best effort)."""
    try:
        return {
            s.slug: (s.title, {st.key: st.part for st in s.steps})
            for s in list_series(settings.content_paths)
        }
    except Exception:  # noqa: BLE001 - a broken content folder must not break the report
        return {}


_LEADING_NUMBER = re.compile(r"^(\d+)")


def compute(
    db,
    settings: Settings,
    *,
    since: str | date | None = None,
    until: str | date | None = None,
    now: datetime | None = None,
) -> Report:
    """Count each funnel step in [since, until] (whole days in the clinic's zone)."""
    first, last = _day(since, "--since"), _day(until, "--until")
    if first and last and first > last:
        raise InputError(f"--since: {first} is after --until {last}")
    tz = settings.zone
    lo = iso(local_to_utc(first, 0, tz)) if first else ""
    hi = iso(local_to_utc(last + timedelta(days=1), 0, tz)) if last else _OPEN_END
    sets = _sets(db, lo, hi)
    steps = [
        _step("Signed up", sets.people("subscribed"), "signup"),
        _step("Confirmed", sets.people("confirmed"), "signup"),
    ]

    # Series parts: distinct people per (series, part).
    known_parts = {
        (series, key): part
        for series, key, part in db.execute(
            "SELECT DISTINCT series, step_key, part FROM series_deliveries WHERE part IS NOT NULL"
        ).fetchall()
    }
    content = _series_info(settings)
    people: dict[tuple[str, int], Readers | frozenset] = {}
    notes: list[str] = []
    for ref in sets.refs("sent"):
        if ref[:7].lower() != "series:":  # what LIKE 'series:%' matches (ASCII case folded)
            continue
        readers = sets.readers("sent", ref)
        if not readers:
            continue
        _, slug, key = (ref.split(":", 2) + ["", ""])[:3]
        part = known_parts.get((slug, key)) or content.get(slug, ("", {}))[1].get(key)
        if part is None and (m := _LEADING_NUMBER.match(key)):
            part = int(m.group(1))
        if part is None:
            notes.append(f"could not tell which part {ref!r} is")
            continue
        known = people.get((slug, part))
        people[(slug, part)] = readers if known is None else known | readers
    course = settings.programme_series  # shown as a course below, not part by part
    for slug in sorted({s for s, _ in people} - {course}):
        title = content.get(slug, (slug, {}))[0] or slug
        top = max(p for s, p in people if s == slug)
        for part in range(1, top + 1):
            steps.append(
                _step(
                    f"{title}: part {part}",
                    people.get((slug, part), sets.empty),
                    "series",
                    short=f"{slug} \u00b7 part {part}" if len(title) > 24 else "",
                )
            )

    steps += [
        _step("Clicked a link in an email", sets.ids(_clickers(db, lo, hi)), "clicks"),
        _step("Invited to a webinar", sets.people("invited"), "webinar"),
        _step("Registered", sets.people("registered"), "webinar"),
        _step("Attended", sets.people("attended"), "webinar"),
        _step("Clicked the offer", sets.people("clicked_offer"), "webinar"),
    ]
    steps += _course_steps(db, sets, course, content, people, lo, hi)
    # Requests need not come from a subscriber: they are counted by request, so the
    # containment rule finds booked inside requested and requested inside nothing above.
    requested, booked = appointments.request_ids(db, lo, hi)
    steps += [
        _step("Requested an appointment", sets.requests(requested), "appointment"),
        _step("Booked", sets.requests(booked), "appointment"),
    ]
    notes += ab_notes(db, lo, hi)
    parts = {(slug, key): part for (slug, key), part in known_parts.items()}
    for slug, (_title, keys) in content.items():
        for key, part in keys.items():
            parts.setdefault((slug, key), part)
    rates = with_requests(click_rates(db, lo, hi, parts), requests_by_email(db, lo, hi, parts))
    return Report(steps, first, last, now, sorted(set(notes)), rates, top_links(db, lo, hi))


_TRACKED = ("series", "broadcast", "webinar_invite", "webinar_reminder", "webinar_followup")


def _email_label(kind: str, ref: str, subject: str | None,
                 parts: dict[tuple[str, str], int]) -> tuple[str, str]:
    bits = (ref or "").split(":")
    if kind == "series" and len(bits) >= 3:
        part = parts.get((bits[1], ":".join(bits[2:])))
        return "series", f"{bits[1]} \u00b7 " + (f"part {part}" if part else ":".join(bits[2:]))
    if kind == "broadcast":
        return "broadcast", f"broadcast {bits[-1]}: {subject or ''}".rstrip(": ")
    return "webinar", f"{bits[1] if len(bits) > 1 else ref} \u00b7 {kind.removeprefix('webinar_')}"


#: The messages sent of one kind and ref (a range of outbox_sent_kind_ref), and the
#: campaign of one of them (a broadcast's label shows its subject).
SENT_SQL = "SELECT COUNT(*), MAX(o.campaign_id) FROM outbox o WHERE {scope} AND o.kind = ? AND o.ref IS ?"


def click_rates(db, lo: str, hi: str, parts: dict[tuple[str, str], int]) -> list[ClickRate]:
    """Per series step, broadcast and webinar email sent in the window: sent, clicked, filtered.

    The messages sent are counted per (kind, ref) in outbox_sent_kind_ref, one
    range each (a GROUP BY over all of them costs 3x as much per row); the
    clicks and opens, far fewer, are each read once and joined to their
    message (not looked up once per message sent).  In a window, the unary ``+``
    keeps sent_at from choosing the plan: after ANALYZE the planner skip-scanned
    every (kind, ref) of the index for the sent_at range, 10x the range read.
    """
    where, params = _window("+o.sent_at", lo, hi)
    scope = f"o.status = 'sent' AND o.sent_at IS NOT NULL{where}"
    found: dict[tuple[str, str], list[int]] = {}
    campaign: dict[tuple[str, str], int] = {}
    for kind in _TRACKED:
        for ref in (None, *_sent_refs(db, kind)):
            sent, cid = db.execute(SENT_SQL.format(scope=scope), (*params, kind, ref)).fetchone()
            if sent:
                found[(kind, ref)] = [sent, 0, 0, 0, 0]
                campaign[(kind, ref)] = cid
    tracked = ",".join("?" * len(_TRACKED))
    scope += f" AND o.kind IN ({tracked})"
    for kind, ref, clicked, filtered in db.execute(  # CROSS JOIN: read clicks first
        "SELECT o.kind, o.ref, COUNT(DISTINCT CASE WHEN k.verdict = 'human' THEN k.outbox_id END), "
        "SUM(k.verdict = 'scanner') FROM clicks k CROSS JOIN outbox o ON o.id = k.outbox_id "
        f"WHERE {scope} GROUP BY o.kind, o.ref",
        (*params, *_TRACKED),
    ):
        found[(kind, ref)][1:3] = clicked, filtered
    for kind, ref, opened, apple in db.execute(  # apple: every open of it was Apple's proxy
        "SELECT o.kind, o.ref, COUNT(*), SUM(p.apple_only) FROM (SELECT outbox_id, "
        "SUM(CASE WHEN apple = 0 THEN 1 ELSE 0 END) = 0 AS apple_only FROM opens GROUP BY outbox_id) p "
        f"CROSS JOIN outbox o ON o.id = p.outbox_id WHERE {scope} GROUP BY o.kind, o.ref",
        (*params, *_TRACKED),
    ):
        found[(kind, ref)][3:5] = opened, apple
    return _in_order([
        ClickRate(*_email_label(kind, ref, _subject(db, kind, campaign[(kind, ref)]), parts), *counts)
        for (kind, ref), counts in sorted(found.items(), key=_by_kind_ref)
    ])


def _sent_refs(db, kind: str) -> list[str]:
    """The refs of *kind*'s sent messages: a loose index scan, one seek per ref."""
    refs, ref = [], db.execute(
        "SELECT MIN(ref) FROM outbox WHERE status = 'sent' AND sent_at IS NOT NULL AND kind = ?", (kind,)
    ).fetchone()[0]
    while ref is not None:
        refs.append(ref)
        (ref,) = db.execute(
            "SELECT MIN(ref) FROM outbox WHERE status = 'sent' AND sent_at IS NOT NULL AND kind = ? "
            "AND ref > ?", (kind, ref),
        ).fetchone()
    return refs


def _by_kind_ref(item) -> tuple:
    (kind, ref), _ = item
    return kind, ref is not None, ref or ""  # ORDER BY kind, ref: NULL first


def _subject(db, kind: str, campaign_id: int | None) -> str | None:
    """A broadcast's subject, for its label (the other emails are labelled by their ref)."""
    if kind != "broadcast" or campaign_id is None:
        return None
    row = db.execute("SELECT subject FROM campaigns WHERE id = ?", (campaign_id,)).fetchone()
    return row[0] if row else None


def _in_order(rates: list[ClickRate]) -> list[ClickRate]:
    """Series steps, then broadcasts, then webinar emails, each by label."""
    order = {"series": 0, "broadcast": 1, "webinar": 2}
    return sorted(rates, key=lambda r: (order[r.group], r.label))


def requests_by_email(db, lo: str, hi: str,
                      parts: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    """(group, label) of the email -> appointment requests made in the window attributed to it.

    The labels are the click-rate table's (:func:`_email_label`), built from the
    request's own ``attr_*`` columns, so a request stays attributed after its
    click row is purged.
    """
    out: dict[tuple[str, str], int] = {}
    for kind, series, step, broadcast_id, webinar, subject, n in db.execute(
        "SELECT a.attr_kind, a.attr_series, a.attr_step, a.attr_broadcast_id, a.attr_webinar, "
        "c.subject, COUNT(*) FROM appointments a "
        "LEFT JOIN campaigns c ON c.id = a.attr_broadcast_id "
        "WHERE a.attr_kind IN ({}) AND a.created_at >= ? AND a.created_at < ? "
        "GROUP BY 1, 2, 3, 4, 5".format(",".join("?" * len(_TRACKED))),
        (*_TRACKED, lo, hi),
    ):
        ref = {"series": f"series:{series}:{step}",
               "broadcast": f"campaign:{broadcast_id}"}.get(kind, f"webinar:{webinar}")
        key = _email_label(kind, ref, subject, parts)
        out[key] = out.get(key, 0) + n
    return out


def with_requests(rates: list[ClickRate], requests: dict[tuple[str, str], int]) -> list[ClickRate]:
    """The click rates with each email's requests; an email sent before the window that
    earned requests in it gets a row of its own (nothing sent in the window)."""
    left = dict(requests)
    out = [replace(r, requests=left.pop((r.group, r.label), 0)) for r in rates]
    return _in_order(out + [ClickRate(group, label, 0, 0, 0, requests=n)
                            for (group, label), n in left.items()])


def ab_notes(db, lo: str, hi: str) -> list[str]:
    """One line per A/B broadcast tested in the window: its decision and why."""
    out = []
    for cid, winner, reason, decide_at in db.execute(
        "SELECT campaign_id, winner, reason, decide_at FROM ab_tests "
        "WHERE test_queued_at >= ? AND test_queued_at < ? ORDER BY campaign_id",
        (lo, hi),
    ):
        if winner:
            out.append(f"broadcast {cid} A/B subjects: {winner} went to the rest; {reason}")
        else:
            out.append(f"broadcast {cid} A/B subjects: undecided until {decide_at[:16]} UTC")
    return out


def top_links(db, lo: str, hi: str, limit: int = 10) -> list[tuple[str, int]]:
    """The links with the most human clicks on messages sent in the window."""
    return [(link, n) for link, n in db.execute(
        "SELECT c.link, COUNT(*) AS n FROM clicks c JOIN outbox o ON o.id = c.outbox_id "
        "WHERE c.verdict = 'human' AND o.sent_at >= ? AND o.sent_at < ? "
        "GROUP BY c.link ORDER BY n DESC, c.link LIMIT ?",
        (lo, hi, limit),
    )]


#: The course's days shown in the report, besides its last day.
COURSE_MILESTONES = (7, 14)


def _course_steps(db, sets: ReaderBits | EventLog, slug: str, content: dict, people: dict,
                  lo: str, hi: str) -> list[Step]:
    """The daily course: started -> day 7 -> day 14 -> last day (28) -> requested an
    appointment, distinct people.

    "Started" counts ``enrolled`` events for the course (button or admin
    enrol); a day counts the people who were sent it; "requested" counts those
    who started it and whose address made an appointment request (module
    docstring).  Left out until somebody has started it, like a series part
    nobody was sent.
    """
    title, parts = content.get(slug, ("", {}))
    last = max(parts.values(), default=0) or max((p for s, p in people if s == slug), default=0)
    started = sets.readers("enrolled", f"series:{slug}")
    if not last or not (started or any(s == slug for s, _ in people)):
        return []
    title = title or slug
    steps = [_step(f"Started: {title}", started, "course", short="Started the course")]
    for day in (*(d for d in COURSE_MILESTONES if d < last), last):
        steps.append(
            _step(f"{title}: day {day}", people.get((slug, day), sets.empty), "course",
                  short=f"Course \u00b7 day {day}")  # fmt: skip
        )
    steps.append(_step(f"{title}: requested an appointment", started & sets.ids(_requesters(db, lo, hi)),
                       "course", short="Course \u00b7 requested"))
    return steps


def _requesters(db, lo: str, hi: str) -> list[int]:
    """Subscribers whose address made an appointment request in the window."""
    return [sid for (sid,) in db.execute(
        "SELECT DISTINCT s.id FROM appointments a "
        "JOIN subscribers s ON s.email = a.email COLLATE NOCASE "
        "WHERE a.created_at >= ? AND a.created_at < ?",
        (lo, hi),
    )]


# ----------------------------------------------------------------- output
def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def render_text(report: Report) -> str:
    """A terminal table: step, people, % of previous step, % of signups."""
    header = ("STEP", "PEOPLE", "OF STAGE", "OF SIGNUPS")
    rows = [header] + [
        (step.label, str(step.count), _pct(prev), _pct(total))
        for step, prev, total in report.rows()
    ]
    w0 = max(len(r[0]) for r in rows)
    widths = [max(len(r[i]) for r in rows) for i in range(1, 4)]
    lines = [f"Funnel report ({report.period})"]
    for r in rows:
        lines.append(
            r[0].ljust(w0)
            + "  "
            + "  ".join(c.rjust(w) for c, w in zip(r[1:], widths, strict=True))
        )
    lines.append("(OF STAGE: of the nearest step above that contains everyone in this one)")
    if report.click_rates:
        lines += ["", "Click rate per email (messages with a human click; scanner clicks apart)"]
        w = max(len(r.label) for r in report.click_rates)
        lines.append(f"{'EMAIL'.ljust(w)}  {'SENT':>6}  {'CLICKED':>7}  {'RATE':>6}  {'FILTERED':>8}  "
                     f"{'REQUESTS':>8}")
        for r in report.click_rates:
            lines.append(f"{r.label.ljust(w)}  {r.sent:>6}  {r.clicked:>7}  {_pct(r.rate):>6}  "
                         f"{r.filtered:>8}  {r.requests:>8}")
        lines.append("(REQUESTS: appointment requests in the period attributed to a click on that email)")
    if any(r.opened for r in report.click_rates):
        lines += ["", "Opens (unreliable: images load unread, or are blocked when read)"]
        for r in report.click_rates:
            lines.append(f"{r.label}  opened {r.opened} of {r.sent}; "
                         f"{r.apple} only by Apple's proxy (Mail Privacy Protection, a heuristic)")
    if report.top_links:
        lines += ["", "Top links (human clicks)"]
        lines += [f"{n:>6}  {link}" for link, n in report.top_links]
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


_COLORS = {
    "signup": "#1d6f6b", "series": "#3b8f88", "clicks": "#5a6fb0", "webinar": "#c2673a",
    "course": "#5a6fa8", "appointment": "#7a4f9a",
}


def chart_svg(report: Report) -> str:
    """The funnel as an inline SVG bar chart (the report page and the admin dashboard)."""
    bar_h, gap, label_w, chart_w = 26, 10, 300, 500
    rows = report.rows()
    height = len(rows) * (bar_h + gap) + gap
    top = max((s.count for s in report.steps), default=0) or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="100%" '
        f'viewBox="0 0 {label_w + chart_w + 100} {height}" '
        'aria-label="Funnel chart: people at each step">'
    ]
    for i, (step, prev, _total) in enumerate(rows):
        y = gap + i * (bar_h + gap)
        width = max(round(chart_w * step.count / top), 2 if step.count else 0)
        label = html.escape(step.label)
        parts.append(
            f'<text x="{label_w - 10}" y="{y + bar_h * 0.68:.0f}" text-anchor="end" '
            f'font-size="14" fill="#17323a">{html.escape(step.chart_label)}</text>'
            f'<rect x="{label_w}" y="{y}" width="{width}" height="{bar_h}" rx="3" '
            f'fill="{_COLORS[step.group]}"><title>{label}: {step.count}</title></rect>'
            f'<text x="{label_w + width + 8}" y="{y + bar_h * 0.68:.0f}" font-size="13" '
            f'fill="#33434d">{step.count}{"" if prev is None else f" ({prev:.0f}%)"}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def render_html(report: Report, site_name: str = "funnel") -> str:
    """A self-contained page: the chart and the table, nothing fetched."""
    title = f"Funnel report: {html.escape(site_name)}"
    table_rows = "".join(
        f"<tr><td>{html.escape(step.label)}</td><td>{step.count}</td><td>{_pct(prev)}</td>"
        f"<td>{_pct(total)}</td></tr>"
        for step, prev, total in report.rows()
    )
    generated = (
        f" Generated {report.generated_at:%Y-%m-%d %H:%M} UTC." if report.generated_at else ""
    )
    notes = "".join(f"<p class=note>{html.escape(n)}</p>" for n in report.notes)
    clicks = _clicks_html(report)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: #17323a; background: #f6f9f8; margin: 0; padding: 24px; }}
main {{ max-width: 960px; margin: 0 auto; background: #fff; padding: 24px 28px;
        border-radius: 8px; box-shadow: 0 1px 3px rgba(0,0,0,.08); }}
h1 {{ font-size: 24px; margin: 0 0 4px; }}
.period {{ color: #46545e; margin: 0 0 20px; }}
table {{ border-collapse: collapse; width: 100%; margin-top: 20px; font-size: 15px; }}
th, td {{ border-bottom: 1px solid #dde7e5; padding: 6px 8px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
th {{ background: #eef3f2; }}
.legend span {{ display: inline-block; margin-right: 16px; font-size: 13px; }}
.legend i {{ display: inline-block; width: 12px; height: 12px; margin-right: 4px;
             vertical-align: -1px; border-radius: 2px; }}
.note {{ color: #8a4b2a; font-size: 13px; }}
h2 {{ font-size: 18px; margin: 28px 0 0; }}
.bar {{ display: inline-block; height: 10px; background: {_COLORS["clicks"]}; vertical-align: 0; }}
</style>
</head>
<body>
<main>
<h1>{title}</h1>
<p class="period">People at each step, {html.escape(report.period)}.{generated}</p>
<p class="legend"><span><i style="background:{_COLORS["signup"]}"></i>Signup</span>
<span><i style="background:{_COLORS["series"]}"></i>Email series</span>
<span><i style="background:{_COLORS["clicks"]}"></i>Clicks</span>
<span><i style="background:{_COLORS["webinar"]}"></i>Webinar</span>
<span><i style="background:{_COLORS["course"]}"></i>28-day programme</span>
<span><i style="background:{_COLORS["appointment"]}"></i>Appointment</span></p>
{chart_svg(report)}
<table>
<thead><tr><th>Step</th><th>People</th><th>Of stage</th><th>Of signups</th></tr></thead>
<tbody>{table_rows}</tbody>
</table>
<p class="period">"Of stage": of the nearest step above that contains everyone in this one.</p>
{clicks}
{notes}
</main>
</body>
</html>
"""


def _clicks_html(report: Report) -> str:
    """The click-rate table (with a bar per email) and the top links; text only, no anchors."""
    if not report.click_rates and not report.top_links:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(r.label)}</td><td>{r.sent}</td><td>{r.clicked}</td>"
        f"<td><span class=bar style=\"width:{round(r.rate or 0)}px\"></span> {_pct(r.rate)}</td>"
        f"<td>{r.filtered}</td><td>{r.requests}</td></tr>"
        for r in report.click_rates
    )
    links = "".join(
        f"<tr><td>{html.escape(link)}</td><td>{n}</td></tr>" for link, n in report.top_links
    )
    opens = "".join(
        f"<tr><td>{html.escape(r.label)}</td><td>{r.opened}</td><td>{r.apple}</td></tr>"
        for r in report.click_rates if r.opened
    )
    return (
        "<h2>Click rate per email</h2>"
        "<table><thead><tr><th>Email</th><th>Sent</th><th>Clicked</th><th>Rate</th>"
        f"<th>Scanner clicks</th><th>Appointment requests</th></tr></thead><tbody>{rows}</tbody></table>"
        + (f"<h2>Top links</h2><table><thead><tr><th>Link</th><th>Human clicks</th></tr></thead>"
           f"<tbody>{links}</tbody></table>" if links else "")
        + ("<h2>Opens (unreliable)</h2><table><thead><tr><th>Email</th><th>Opened</th>"
           f"<th>Only Apple's proxy (heuristic)</th></tr></thead><tbody>{opens}</tbody></table>"
           if opens else "")
    )


__all__ = ["ClickRate", "Report", "Step", "chart_svg", "click_rates", "compute", "render_html", "render_text",
           "requests_by_email", "top_links", "with_requests"]
