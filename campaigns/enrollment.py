"""Series enrollment, and the scheduler tick that turns due series steps into outbox rows.

Every scheduler pass (:func:`schedule_series`, run by ``funnel send`` and each
``funnel worker`` tick) first reconciles (:func:`reconcile`): any active reader
subscribed to a configured series (``settings.enroll_series``) without an
enrollment in it is enrolled, however they became active.  The same pass then
finds enrollments whose next step is due and queues one outbox row per step, so
part 1 leaves on the next tick after confirming (unless it is night where the
reader lives).

Which step comes next is decided from the ledger (``series_deliveries``, by
stable step key) and the series' CURRENT step list, never from a stored index,
so editing a live series can't re-send anything:

    Let R be the keys the reader has been sent, oldest first, and K the current
    step keys in order.  The anchor is the position in K of the most recently
    sent key that still exists in K (none: before the start).  The next step is
    the first key after the anchor that is not in R.

So a step inserted before where the reader is now is skipped by them (it is
for later readers), a step inserted ahead of them is sent, a removed step is
simply not there, and a reordering never sends a step twice.

Structural edits (steps added, removed or reordered) are held until an admin
runs ``funnel series apply`` after looking at ``funnel series diff``: the
scheduler compares the step keys with the snapshot in ``series_versions`` and
skips a series that no longer matches (the first snapshot is taken
automatically).  Text edits inside a step apply at once.

Timing (see :func:`campaigns.schedule.step_due`): part 1 right away, later
parts on the series' send day and hour in the reader's own zone, each timed
from the previous step's *scheduled* slot so a postponed step (frequency cap,
webinar) doesn't shift the weekly rhythm.  A step found more than half a
cadence late (the worker was down, a long pause) moves to the next regular
slot instead of arriving in a burst.

A daily course (``cadence = "daily"``, the 28-day programme) differs in two
ways: its next day counts from when a step really went, so a held day moves
the rest of the course back a day instead of sending two at once; and it
yields to the reader's slower series under the frequency cap
(:meth:`_Chunk.yields_to`).  :func:`start_course` is its start button.
"""

from __future__ import annotations

import difflib
import itertools
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo

from funnel import outbox
from funnel.db import iso, log_events, parse_iso, transaction
from funnel.errors import FunnelError, InputError, NotFound
from funnel.localtime import local_to_utc
from funnel.settings import Settings
from subscribers import lifecycle, segments, tokens

from . import holds, render, schedule, webinars
from .content import Content, SkipMessage
from .series import Series, check_gaps, find_series, load_cached, series_folder


# ----------------------------------------------------------------- loading
def load(settings: Settings, slug: str) -> Series:
    """The series ``slug`` from the content folder, re-read only when its files change."""
    folder = series_folder(settings.content_paths, slug)
    if folder is None:
        return find_series(settings.content_paths, slug)  # raises NotFound, naming the folders
    return load_cached(folder)


# ----------------------------------------------------------------- the rule
def next_step_index(keys: Sequence[str], received: Sequence[str]) -> int | None:
    """Index in ``keys`` of the reader's next step, or None when they are done.

    ``received`` are the keys already sent, oldest first (see the module doc).
    """
    position = {k: i for i, k in enumerate(keys)}
    got = set(received)
    anchor = -1
    for key in reversed(received):
        if key in position:
            anchor = position[key]
            break
    for i in range(anchor + 1, len(keys)):
        if keys[i] not in got:
            return i
    return None


def _nominal_due(
    settings: Settings, series: Series, index: int, previous: datetime, tz: ZoneInfo, first: bool
) -> datetime:
    """The regular slot of step ``index``: step 1 timed from enrollment, others from the previous."""
    qs, qe = settings.quiet_start_hour, settings.quiet_end_hour
    if first:
        return schedule.step_due(series, index, previous, tz, qs, qe)
    # A later step keeps "later step" timing even if an edit moved it to the front.
    step = series.steps[index]
    return schedule.step_due(replace(series, steps=[step, step]), 1, previous, tz, qs, qe)


def _late_after(series: Series) -> timedelta:
    return max(timedelta(days=series.cadence_days) / 2, timedelta(days=1))


# ----------------------------------------------------------------- versions
@dataclass(frozen=True)
class Version:
    number: int
    keys: list[str]
    applied_at: str


def applied_version(db, slug: str) -> Version | None:
    row = db.execute(
        "SELECT version, step_keys, applied_at FROM series_versions WHERE series = ? "
        "ORDER BY version DESC LIMIT 1",
        (slug,),
    ).fetchone()
    return Version(row[0], json.loads(row[1]), row[2]) if row else None


def apply_version(db, series: Series, now: datetime) -> tuple[int, bool]:
    """Record the series' current step list as the applied version.

    Returns ``(version, changed)``.  When it changed, every enrollment that
    is active or completed is re-timed by the next scheduler tick (completed
    readers get steps appended after their last one).
    """
    keys = [s.key for s in series.steps]
    with transaction(db):
        current = applied_version(db, series.slug)
        if current is not None and current.keys == keys:
            return current.number, False
        number = (current.number if current else 0) + 1
        db.execute(
            "INSERT INTO series_versions (series, version, step_keys, applied_at) VALUES (?, ?, ?, ?)",
            (series.slug, number, json.dumps(keys), iso(now)),
        )
        if current is not None:
            db.execute(
                "UPDATE enrollments SET status = 'active', next_due_at = ?, updated_at = ? "
                "WHERE series = ? AND status IN ('active', 'completed')",
                (iso(now), iso(now), series.slug),
            )
    return number, True


def is_applied(db, series: Series, now: datetime) -> bool:
    """Whether the scheduler may use the series as it is now (first use applies it)."""
    current = applied_version(db, series.slug)
    if current is None:
        apply_version(db, series, now)
        return True
    return current.keys == [s.key for s in series.steps]


# ----------------------------------------------------------------- enrolling
def enroll(
    db,
    settings: Settings,
    subscriber_id: int,
    slug: str,
    now: datetime,
    *,
    series: Series | None = None,
    materialise: bool = True,
) -> str:
    """Enrol one subscriber; returns ``enrolled``, ``resumed``, ``already`` or ``skipped``.

    Idempotent.  Only active subscribers who haven't unsubscribed from the
    series' stream are enrolled (their stream subscription is created if
    missing).  A stopped enrollment (they had unsubscribed) resumes where it
    stopped: steps already sent are never sent again.  With ``materialise``,
    a step that is due now (part 1, outside quiet hours) is queued at once.
    """
    times = _Times(settings, now)
    with transaction(db):
        (outcome,) = _enrol_many(db, slug, series, [subscriber_id], times)
        if (
            outcome in ("enrolled", "resumed")
            and materialise
            and series is not None
            and is_applied(db, series, now)
        ):
            _advance(db, settings, [(subscriber_id, series)], times)
    return outcome


def _enrol_many(db, slug: str, series: Series | None, sids: Sequence[int],
                times: _Times) -> list[str]:
    """Enrol these subscribers (inside the caller's transaction): :func:`enroll`'s rules
    for a batch, read in one query and written with one executemany per table.
    Returns the outcome per subscriber, in order."""
    stream = series.stream if series is not None else f"series:{slug}"
    now, stamp = times.now, times.iso(times.now)
    outcomes: list[str] = []
    streams_on, added, resumed, events = [], [], [], []
    turned_on = json.dumps({"status": "subscribed"})  # as lifecycle.set_subscription logs it
    for sid, status, zone, stream_status, state in db.execute(
        "SELECT j.value, s.status, s.timezone, ss.status, e.status FROM json_each(?) j "
        "LEFT JOIN subscribers s ON s.id = j.value "
        "LEFT JOIN subscriptions ss ON ss.subscriber_id = j.value AND ss.stream = ? "
        "LEFT JOIN enrollments e ON e.subscriber_id = j.value AND e.series = ? ORDER BY j.key",
        (json.dumps(list(sids)), stream, slug),
    ):
        if status != "active" or stream_status == "unsubscribed":
            outcomes.append("skipped")
            continue
        if stream_status is None:
            streams_on.append((sid, stream, "subscribed", None, stamp))
            events.append((stamp, "preferences", sid, stream, turned_on))
        due = now if series is None else times.nominal(series, 0, now, times.settings.zone_for(zone), True)
        if state is None:
            added.append((sid, slug, stamp, times.iso(due), stamp))
            outcomes.append("enrolled")
        elif state == "stopped":
            resumed.append((stamp, stamp, sid, slug))
            outcomes.append("resumed")
        else:
            outcomes.append("already")
            continue
        events.append((stamp, "enrolled", sid, f"series:{slug}", None))
    lifecycle.write_streams(db, streams_on)
    db.conn.executemany(
        "INSERT INTO enrollments (subscriber_id, series, status, enrolled_at, next_step, "
        "next_due_at, updated_at) VALUES (?, ?, 'active', ?, 0, ?, ?)",
        added,
    )
    db.conn.executemany(
        "UPDATE enrollments SET status = 'active', next_due_at = ?, updated_at = ? "
        "WHERE subscriber_id = ? AND series = ?",
        resumed,
    )
    log_events(db, events)
    return outcomes


def start_course(db, settings: Settings, token: str, now: datetime) -> str:
    """The reader pressed "Start the 28-day programme": enrol them in ``programme_series``.

    ``token`` is their signed programme token (TokenError when tampered
    with).  Pressing the button is the reader's own choice, so it turns the
    course's stream on (also after they had stopped or paused it) and day 1
    is queued at once (outside quiet hours).  Idempotent: returns
    ``enrolled``, ``resumed`` (a stopped course continues after the last day
    sent), ``already`` (on it, or finished) or ``skipped`` (the reader is not
    active: unsubscribed, bounced...); NotFound for an erased reader.
    """
    from subscribers import lifecycle

    sid = tokens.read_programme_token(settings, token, now)
    series = load(settings, settings.programme_series)
    with transaction(db):
        sub = lifecycle.get(db, sid)
        if sub.status == "erased":
            raise NotFound(f"subscriber {sid} was erased")
        if sub.status != "active":
            return "skipped"
        state = lifecycle.subscriptions(db, sid).get(series.stream, {}).get("status")
        if state != "subscribed":
            lifecycle.set_subscription(db, sid, series.stream, "subscribed", now, source="web")
        return enroll(db, settings, sid, series.slug, now, series=series)


# ----------------------------------------------------------------- reconciling
class Reconciled(NamedTuple):
    enrolled: int = 0
    resumed: int = 0


def reconcile(db, settings: Settings, now: datetime, *, batch: int = 1000) -> Reconciled:
    """Enrol every active reader whose ``series:<slug>`` stream is on but who has no
    enrollment in it, for each series in ``settings.enroll_series``, and resume the
    stopped enrollments of readers who turned a series back on.

    This is how readers start a series, whatever made them active: confirming on
    the web or with ``funnel subscribers confirm``, a CSV import with or without
    ``--pre-confirmed``, the webinar form's newsletter box, a resubscribe.  It runs
    at the start of every scheduler pass (:func:`schedule_series`, so ``funnel
    send`` and each worker tick), and the same pass then queues part 1, so a
    reader who confirms gets part 1 on the next tick.

    The rules:

    - Only a reader with no enrollment row is enrolled.  An existing enrollment
      is never replaced.  A stopped one (they had unsubscribed) resumes after
      the last step they were sent once they are active with the stream on
      again (resubscribing, or the preferences page); a finished reader is not
      started again.
    - A stream that is ``unsubscribed`` is never enrolled; ``paused`` is (the
      scheduler holds it until the pause ends), as confirming always did.
    - Part 1 is due at once, or at the end of the reader's quiet hours.
    - A series with missing parts is skipped (scheduling one needs
      ``--allow-gaps``; the worker's tick reports the missing parts).  A series
      that can't be loaded still gets the enrollment, due now: the scheduler
      reports the problem and sends once the content is fixed.

    Only readers noted in ``enrollment_queue`` (filled by triggers whenever a
    series stream is turned on or a reader becomes active; see migration 0013)
    are looked at, so a pass with nothing new reads one empty table.  The queue
    is drained in batches of ``batch`` readers, one transaction each.
    """
    targets: list[tuple[str, Series | None]] | None = None
    enrolled = resumed = 0
    while True:
        with transaction(db):
            last = db.execute(
                "SELECT MAX(subscriber_id) FROM (SELECT subscriber_id FROM enrollment_queue "
                "ORDER BY subscriber_id LIMIT ?)",
                (batch,),
            ).fetchone()[0]
            if last is None:
                return Reconciled(enrolled, resumed)
            if targets is None:
                targets = _reconcile_targets(settings)
            resumed += _resume_queued(db, last, now)
            for slug, series in targets:
                enrolled += _enrol_queued(db, settings, slug, series, last, now)
            db.execute("DELETE FROM enrollment_queue WHERE subscriber_id <= ?", (last,))


def _resume_queued(db, last: int, now: datetime) -> int:
    """Reactivate the stopped enrollments of queued readers (ids up to ``last``) who are
    active with the series' stream on again.  The scheduler then continues after the
    last step they were sent (or moves a long-overdue step to the next regular slot)."""
    return db.execute(
        "UPDATE enrollments SET status = 'active', next_due_at = ?, updated_at = ? "
        "WHERE status = 'stopped' AND subscriber_id IN (SELECT q.subscriber_id "
        "FROM enrollment_queue q CROSS JOIN subscribers s ON s.id = q.subscriber_id "
        "AND s.status = 'active' WHERE q.subscriber_id <= ?) "
        "AND EXISTS (SELECT 1 FROM subscriptions ss WHERE ss.subscriber_id = "
        "enrollments.subscriber_id AND ss.stream = 'series:' || enrollments.series "
        "AND ss.status != 'unsubscribed')",
        (iso(now), iso(now), last),
    ).rowcount


def _reconcile_targets(settings: Settings) -> list[tuple[str, Series | None]]:
    """The configured series to enrol in: (slug, series or None when it can't be loaded)."""
    out: list[tuple[str, Series | None]] = []
    for slug in settings.enroll_series:
        try:
            series = load(settings, slug)
        except FunnelError:
            series = None
        if series is not None and series.gaps:
            continue
        out.append((slug, series))
    return out


def _enrol_queued(
    db, settings: Settings, slug: str, series: Series | None, last: int, now: datetime
) -> int:
    """Enrol the queued readers (ids up to ``last``) who qualify for ``slug``.

    CROSS JOIN (here and in :func:`_resume_queued`) makes SQLite walk the small
    queue and look each reader up, instead of walking every active subscriber
    or every subscription of the stream, which would make a large import's
    first pass quadratic.
    """
    rows = db.execute(
        "SELECT s.id, s.timezone FROM enrollment_queue q "
        "CROSS JOIN subscribers s ON s.id = q.subscriber_id AND s.status = 'active' "
        "CROSS JOIN subscriptions ss ON ss.subscriber_id = s.id AND ss.stream = ? "
        "AND ss.status != 'unsubscribed' "
        "WHERE q.subscriber_id <= ? AND NOT EXISTS (SELECT 1 FROM enrollments e "
        "WHERE e.subscriber_id = s.id AND e.series = ?)",
        (f"series:{slug}", last, slug),
    ).fetchall()
    stamp = iso(now)
    due_in: dict[str | None, str] = {}  # part 1's slot depends only on the zone
    enrolments = []
    for sid, zone in rows:
        if zone not in due_in:
            due = now
            if series is not None:
                due = _nominal_due(settings, series, 0, now, settings.zone_for(zone), first=True)
            due_in[zone] = iso(due)
        enrolments.append((sid, slug, stamp, due_in[zone], stamp))
    db.conn.executemany(
        "INSERT INTO enrollments (subscriber_id, series, status, enrolled_at, next_step, "
        "next_due_at, updated_at) VALUES (?, ?, 'active', ?, 0, ?, ?)",
        enrolments,
    )
    log_events(db, [(stamp, "enrolled", sid, f"series:{slug}") for sid, _zone in rows])
    return len(rows)


@dataclass
class EnrollReport:
    enrolled: int = 0
    resumed: int = 0
    already: int = 0
    skipped: int = 0

    def line(self) -> str:
        return (
            f"{self.enrolled} enrolled, {self.resumed} resumed, {self.already} already enrolled, "
            f"{self.skipped} skipped (not active or unsubscribed from the series)"
        )


def enroll_segment(
    db,
    settings: Settings,
    slug: str,
    now: datetime,
    *,
    segment: str | None = None,
    where: Sequence[str] = (),
    allow_gaps: bool = False,
    batch: int = 5000,
    progress: Callable[[int], None] | None = None,
) -> EnrollReport:
    """``funnel series enroll``: enrol existing subscribers (idempotent).

    Refuses a series with missing parts unless ``allow_gaps``.  Steps are not
    queued here: the next scheduler tick does it, with the frequency cap.
    Members are enrolled ``batch`` at a time, one transaction each.
    """
    series = load(settings, slug)
    check_gaps(series, allow_gaps)
    if segment is None and not where:
        raise InputError("--segment: give a segment name or at least one --where expression")
    is_applied(db, series, now)
    report = EnrollReport()
    times = _Times(settings, now)
    for rows in segments.iter_members(db, settings, segment, batch, where=where, now=now):
        with transaction(db):
            outcomes = _enrol_many(db, slug, series, [sid for sid, _email in rows], times)
        for outcome in outcomes:
            setattr(report, outcome, getattr(report, outcome) + 1)
        if progress:
            progress(len(rows))
    return report


# ----------------------------------------------------------------- the tick
# The scheduler advances a chunk of due enrollments at a time, set-based: per
# series one query for the gates (enrollment, subscriber, stream) and one for
# the parts received, one pair of queries for the holds of the whole chunk,
# then one executemany per table.  Readers are still decided one by one, in
# the chunk's order, by the rules of the module docstring; what an earlier
# reader of the chunk changes that a later one reads (a step queued for the
# same reader counts towards their cap, a re-timed enrollment of theirs
# changes what a daily course yields to) is carried in memory.
# tests/test_series_bulk.py checks the whole against a reader-by-reader
# reference on random populations.


class _Times:
    """A pass's memo of the time math and formatting.

    Readers share zones, anchors and slots, and computing a slot or formatting
    a time is most of the Python cost of a row, so each is done once per pass.
    """

    def __init__(self, settings: Settings, now: datetime):
        self.settings, self.now = settings, now
        self._iso: dict[datetime, str] = {}
        self._due: dict[tuple, datetime] = {}
        self._next: dict[tuple, int | None] = {}

    def iso(self, dt: datetime) -> str:
        text = self._iso.get(dt)
        if text is None:
            text = self._iso[dt] = iso(dt)
        return text

    def nominal(self, series: Series, index: int, previous: datetime, tz: ZoneInfo,
                first: bool) -> datetime:
        key = (series.slug, index, previous, tz, first)
        due = self._due.get(key)
        if due is None:
            due = self._due[key] = _nominal_due(self.settings, series, index, previous, tz, first)
        return due

    def step_due(self, series: Series, index: int, previous: str, tz: ZoneInfo,
                 first: bool) -> datetime:
        """When step ``index`` is due: its nominal slot, or the next slot if that is long past."""
        key = ("due", series.slug, index, previous, tz, first)
        due = self._due.get(key)
        if due is None:
            due = self.nominal(series, index, parse_iso(previous), tz, first)
            if self.now - due > _late_after(series):
                # The next regular slot at or after now.
                due = schedule.next_slot(
                    self.now - timedelta(microseconds=1), tz, series.send_day, series.send_hour
                )
            self._due[key] = due
        return due

    def next_index(self, series: Series, received: tuple[str, ...]) -> int | None:
        key = (series.slug, received)
        if key not in self._next:
            self._next[key] = next_step_index([s.key for s in series.steps], received)
        return self._next[key]


class _Step(NamedTuple):
    """One due enrollment after its gates: either decided (``outcome`` and the
    enrollment ``fields`` to write) or waiting for the holds (``outcome`` None)."""

    sid: int
    series: Series
    outcome: str | None
    fields: dict | None = None
    index: int = 0
    received: tuple[str, ...] = ()
    due: datetime | None = None
    tz: ZoneInfo | None = None
    email: str = ""


def _gates(db, series: Series, sids: list[int]) -> dict[int, tuple]:
    """Per enrollment: (enrolled_at, last_due_at, subscriber status, email, zone,
    stream status, paused_until); a reader without an enrollment row is absent."""
    return {
        row[0]: row[1:]
        for row in db.execute(
            "SELECT e.subscriber_id, e.enrolled_at, e.last_due_at, s.status, s.email, "
            "s.timezone, ss.status, ss.paused_until FROM json_each(?) j "
            "CROSS JOIN enrollments e ON e.subscriber_id = j.value AND e.series = ? "
            "LEFT JOIN subscribers s ON s.id = e.subscriber_id "
            "LEFT JOIN subscriptions ss ON ss.subscriber_id = e.subscriber_id AND ss.stream = ?",
            (json.dumps(sids), series.slug, series.stream),
        )
    }


def _received(db, slug: str, sids: list[int]) -> dict[int, list[tuple[str, str]]]:
    """Per reader: the (step key, at) of the parts sent, oldest first."""
    out: dict[int, list[tuple[str, str]]] = {}
    for sid, key, at in db.execute(
        "SELECT d.subscriber_id, d.step_key, d.at FROM json_each(?) j "
        "CROSS JOIN series_deliveries d ON d.subscriber_id = j.value AND d.series = ? "
        "ORDER BY d.subscriber_id, d.at, d.rowid",
        (json.dumps(sids), slug),
    ):
        out.setdefault(sid, []).append((key, at))
    return out


def _decide(times: _Times, series: Series, sid: int, gate: tuple | None,
            received_rows: list[tuple[str, str]]) -> _Step:
    """The gates and the due time of one enrollment (nothing here depends on the
    rest of the chunk).  ``stopped`` without fields: the row vanished."""
    now = times.now
    if gate is None or gate[2] is None:
        return _Step(sid, series, "stopped")
    enrolled_at, last_due_at, status, email, zone, stream, paused_until = gate
    if status != "active" or not email or stream is None or stream == "unsubscribed":
        return _Step(sid, series, "stopped", {"status": "stopped", "next_due_at": None})
    tz = times.settings.zone_for(zone)
    if stream == "paused":
        until = parse_iso(paused_until)
        if until is None or until > now:
            # An open-ended pause is looked at again daily; a dated one at its end.
            resume = (
                now + timedelta(days=1)
                if until is None
                else schedule.next_slot(until, tz, series.send_day, series.send_hour)
            )
            return _Step(sid, series, "paused", {"next_due_at": times.iso(resume)})
    received = tuple(key for key, _at in received_rows)
    index = times.next_index(series, received)
    if index is None:
        return _Step(sid, series, "completed", {"status": "completed", "next_due_at": None})
    if received_rows:
        previous = last_due_at if last_due_at is not None else received_rows[-1][1]
    else:
        previous = enrolled_at
    due = times.step_due(series, index, previous, tz, first=not received_rows)
    if due > now:
        return _Step(sid, series, "waiting", {"next_due_at": times.iso(due), "next_step": index})
    return _Step(sid, series, None, None, index, received, due, tz, email)


def _other_enrollments(db, sids: list[int]) -> dict[int, list[tuple]]:
    """Per reader: (series, status, next_due_at, stream) of each enrollment whose
    stream is on, for a daily course's yielding (:func:`_Chunk.yields_to`)."""
    out: dict[int, list[tuple]] = {}
    for sid, *rest in db.execute(
        "SELECT e.subscriber_id, e.series, e.status, e.next_due_at, ss.stream "
        "FROM json_each(?) j CROSS JOIN enrollments e ON e.subscriber_id = j.value "
        "JOIN subscriptions ss ON ss.subscriber_id = e.subscriber_id "
        "AND ss.stream = 'series:' || e.series AND ss.status = 'subscribed'",
        (json.dumps(sids),),
    ):
        out.setdefault(sid, []).append(tuple(rest))
    return out


class _Chunk:
    """The holds and the writes of one chunk, decided in the chunk's order."""

    def __init__(self, db, settings: Settings, times: _Times, steps: list[_Step]):
        self.settings, self.times, self.now = settings, times, times.now
        self.stamp = times.iso(times.now)
        self.expires = times.now + timedelta(hours=settings.newsletter_expiry_hours)
        # Whether a row queued now counts towards the cap (it does unless already expired).
        self.counts = times.iso(self.expires) > self.stamp
        held = [s for s in steps if s.outcome is None]
        sids = list(dict.fromkeys(s.sid for s in held))
        self.facts = holds.hold_facts(db, settings, sids, self.now) if sids else {}
        daily = [s.sid for s in held if s.series.cadence_days == 1]
        capped = settings.frequency_cap > 0
        self.others = _other_enrollments(db, daily) if capped and daily else {}
        self.done: dict[tuple[int, str], tuple[str, str | None]] = {}  # (status, next_due_at)
        self.existing = self._existing_rows(db, held) if capped else set()
        self.rows: list[dict] = []
        self.deliveries: list[tuple] = []
        self.updates: dict[tuple[str, ...], list[tuple]] = {}
        self.events: list[tuple] = []

    def _existing_rows(self, db, held: list[_Step]) -> set[str]:
        """Dedupe keys already in the outbox among the steps of readers with several
        steps in the chunk: queueing one of those adds no row to their cap count."""
        repeated = {sid for sid, n in Counter(s.sid for s in held).items() if n > 1}
        keys = [_dedupe(s) for s in held if s.sid in repeated]
        if not keys:
            return set()
        return {
            r[0]
            for r in db.execute(
                "SELECT dedupe_key FROM outbox WHERE dedupe_key IN (SELECT value FROM json_each(?))",
                (json.dumps(keys),),
            )
        }

    def update(self, sid: int, slug: str, fields: dict) -> None:
        self.updates.setdefault(tuple(fields), []).append(
            (*fields.values(), self.stamp, sid, slug)
        )
        self.done[(sid, slug)] = (fields.get("status", "active"), fields["next_due_at"])

    def yields_to(self, step: _Step) -> int:
        """How many of the reader's other series steps a daily course step makes room for.

        A daily course (``cadence = "daily"``) shares the frequency cap with the
        weekly series and yields to them: a step of another, slower series that
        is due later the same local day keeps its place under the cap, so on a
        day when the cap can't take both, the course's step slides to the next
        day.  Other series never yield (0).
        """
        series, tz = step.series, step.tz
        if series.cadence_days != 1 or self.settings.frequency_cap <= 0:
            return 0
        end_of_day = self.times.iso(
            local_to_utc(self.now.astimezone(tz).date() + timedelta(days=1), 0, tz)
        )
        count = 0
        for slug, status, next_due, stream in self.others.get(step.sid, ()):
            status, next_due = self.done.get((step.sid, slug), (status, next_due))
            if slug == series.slug or status != "active" or next_due is None:
                continue
            if not next_due < end_of_day:
                continue
            try:
                other = load(self.settings, slug)
            except FunnelError:
                continue
            if other.cadence_days > 1 and other.stream == stream:
                count += 1
        return count

    def hold_or_queue(self, step: _Step) -> str:
        facts = self.facts[step.sid]
        hold = holds.decide_hold(
            self.settings.frequency_cap, self.now, facts.webinars, facts.sent, facts.ahead,
            self.yields_to(step),
        )
        if hold is None:
            self.queue(step)
            return "queued"
        later = schedule.postponed_due(
            hold[0],
            hold[1],
            self.now,
            step.tz,
            step.series.send_hour,
            self.settings.quiet_start_hour,
            self.settings.quiet_end_hour,
        )
        self.update(step.sid, step.series.slug,
                    {"next_due_at": self.times.iso(later), "next_step": step.index})
        return "postponed"

    def queue(self, step: _Step) -> None:
        """Queue step ``index``, record its delivery, and time the step after it."""
        series, sid, times = step.series, step.sid, self.times
        slug, item = series.slug, series.steps[step.index]
        ref, dedupe = f"series:{slug}:{item.key}", _dedupe(step)
        self.rows.append({
            "dedupe_key": dedupe, "kind": "series", "subscriber_id": sid,
            "to_addr": step.email, "due_at": self.now, "stream": series.stream, "ref": ref,
            "priority": outbox.PRIORITY_SERIES, "expires_at": self.expires,
            "data": {"series": slug, "step": item.key, "part": item.part},
        })  # fmt: skip
        self.deliveries.append((sid, slug, item.key, item.part, dedupe, self.stamp))
        if self.counts and dedupe not in self.existing:
            self.facts[sid].ahead += 1  # the new row is capped mail due now
        following = times.next_index(series, (*step.received, item.key))
        # A daily course counts its next day from the day this step really went, so
        # a day held back (cap, webinar) moves the rest back instead of doubling up.
        anchor = max(step.due, self.now) if series.cadence_days == 1 else step.due
        last = {"last_due_at": times.iso(anchor), "last_step_key": item.key}
        if following is None:
            self.update(sid, slug, {"status": "completed", "next_due_at": None,
                                    "next_step": len(series.steps), **last})
            self.events.append((self.stamp, "completed", sid, f"series:{slug}"))
        else:
            next_due = times.nominal(series, following, anchor, step.tz, False)
            self.update(sid, slug, {"next_due_at": times.iso(next_due), "next_step": following,
                                    **last})

    def write(self, db) -> None:
        """The chunk's rows: outbox, deliveries (with their outbox ids), enrollments, events."""
        if self.rows:
            # Under the write lock new rows take ids above the current maximum, so
            # this reads back exactly the rows just inserted (a duplicate gets none).
            before = db.execute("SELECT COALESCE(MAX(id), 0) FROM outbox").fetchone()[0]
            outbox.enqueue_many(db, self.settings, self.rows, self.now)
            ids = dict(db.execute("SELECT dedupe_key, id FROM outbox WHERE id > ?", (before,)))
            db.conn.executemany(
                "INSERT OR IGNORE INTO series_deliveries (subscriber_id, series, step_key, part, "
                "outbox_id, at) VALUES (?, ?, ?, ?, ?, ?)",
                [(sid, slug, key, part, ids.get(dedupe), at)
                 for sid, slug, key, part, dedupe, at in self.deliveries],
            )  # fmt: skip
        for names, params in self.updates.items():
            sets = "".join(f"{name} = ?, " for name in names)
            db.conn.executemany(
                f"UPDATE enrollments SET {sets}updated_at = ? WHERE subscriber_id = ? AND series = ?",
                params,
            )
        log_events(db, self.events)


def _dedupe(step: _Step) -> str:
    return f"series:{step.series.slug}:{step.series.steps[step.index].key}:{step.sid}"


def _advance(db, settings: Settings, due: list[tuple[int, Series]], times: _Times) -> Counter:
    """Advance these enrollments (inside the caller's transaction), in order; counts
    per outcome: ``queued`` | ``waiting`` (re-timed, not due yet) | ``postponed``
    (cap or webinar) | ``paused`` | ``stopped`` | ``completed``."""
    by_series: dict[str, tuple[Series, list[int]]] = {}
    for sid, series in due:
        by_series.setdefault(series.slug, (series, []))[1].append(sid)
    gates: dict[str, dict] = {}
    received: dict[str, dict] = {}
    for slug, (series, sids) in by_series.items():
        gates[slug] = _gates(db, series, sids)
        received[slug] = _received(db, slug, sids)
    steps = [
        _decide(times, series, sid, gates[series.slug].get(sid),
                received[series.slug].get(sid, []))
        for sid, series in due
    ]  # fmt: skip
    chunk = _Chunk(db, settings, times, steps)
    counts: Counter = Counter()
    for step in steps:
        if step.outcome is None:
            counts[chunk.hold_or_queue(step)] += 1
            continue
        if step.fields is not None:
            chunk.update(step.sid, step.series.slug, step.fields)
        counts[step.outcome] += 1
    chunk.write(db)
    return counts


@dataclass
class TickReport:
    enrolled: int = 0
    resumed: int = 0
    queued: int = 0
    postponed: int = 0
    stopped: int = 0
    completed: int = 0
    held_series: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def schedule_series(
    db, settings: Settings, now: datetime, *, batch: int = 5000, report: TickReport | None = None
) -> int:
    """Queue every series step that is due; returns how many rows were queued.

    Streams enrollments in chunks of ``batch`` (keyset order), one write
    transaction per chunk; the selection is made inside the transaction so two
    schedulers running at once see each other's progress.
    """
    report = report if report is not None else TickReport()
    done = reconcile(db, settings, now)
    report.enrolled += done.enrolled
    report.resumed += done.resumed
    usable: dict[str, Series | None] = {}
    times = _Times(settings, now)
    cursor: tuple = ("", 0, "")
    while True:
        with transaction(db):
            rows = db.execute(
                "SELECT next_due_at, subscriber_id, series FROM enrollments "
                "WHERE status = 'active' AND next_due_at <= ? "
                "AND (next_due_at, subscriber_id, series) > (?, ?, ?) "
                "ORDER BY next_due_at, subscriber_id, series LIMIT ?",
                (iso(now), *cursor, batch),
            ).fetchall()
            due = []
            for _due, sid, slug in rows:
                if slug not in usable:
                    usable[slug] = _usable(db, settings, slug, now, report)
                if usable[slug] is not None:
                    due.append((sid, usable[slug]))
            counts = _advance(db, settings, due, times) if due else Counter()
        report.queued += counts["queued"]
        report.postponed += counts["postponed"]
        report.stopped += counts["stopped"]
        report.completed += counts["completed"]
        if len(rows) < batch:
            return report.queued
        cursor = tuple(rows[-1])


def _usable(db, settings: Settings, slug: str, now: datetime, report: TickReport) -> Series | None:
    try:
        series = load(settings, slug)
    except FunnelError as exc:
        report.problems.append(f"series {slug}: {exc}")
        return None
    if not is_applied(db, series, now):
        report.held_series.append(slug)
        report.problems.append(
            f"series {slug}: steps were added, removed or reordered; nothing is sent from it "
            f"until you check `funnel series diff {slug}` and run `funnel series apply {slug}`"
        )
        return None
    return series


def defer_held(db, settings: Settings, now: datetime, *, limit: int = 1000) -> int:
    """Move queued series steps that must wait (cap, webinar) to their new slot.

    The sender's claim filter already keeps them back; this gives them a
    proper due time (the next day's send hour, never in quiet hours) and a
    fresh expiry, so a postponed step is never dropped and isn't re-examined
    on every claim.
    """
    held, params = holds.held_sql(settings.frequency_cap, now, row="o")
    moved = 0
    with transaction(db):
        rows = db.execute(
            # INDEXED BY: the partial index of unsent rows, sought per priority
            # in use for the due range.  Left to itself the planner walked all of
            # the outbox in id order for the ORDER BY (a full scan of 5M rows on
            # every tick at 1M readers).
            "SELECT o.id, o.subscriber_id, o.priority, o.data, s.timezone "
            "FROM outbox o INDEXED BY outbox_claim "
            "JOIN subscribers s ON s.id = o.subscriber_id "
            f"WHERE o.status IN ('queued', 'retry') AND o.priority IN {outbox.DUE_PRIORITIES} "
            f"AND o.due_at <= ? AND {held} "
            "ORDER BY o.id LIMIT ?",
            (iso(now), *params, limit),
        ).fetchall()
        for row_id, sid, priority, data, tz_name in rows:
            hold = holds.hold_until(db, settings, sid, now, row_id=row_id, priority=priority)
            if hold is None:
                continue
            send_hour = settings.quiet_end_hour
            slug = json.loads(data).get("series") if data else None
            if slug:
                try:
                    send_hour = load(settings, slug).send_hour
                except FunnelError:
                    pass
            tz = settings.zone_for(tz_name)
            due = schedule.postponed_due(
                hold[0],
                hold[1],
                now,
                tz,
                send_hour,
                settings.quiet_start_hour,
                settings.quiet_end_hour,
            )
            expires = due + timedelta(hours=settings.newsletter_expiry_hours)
            moved += db.execute(
                "UPDATE outbox SET due_at = ?, expires_at = ?, updated_at = ?, "
                "last_error = ? WHERE id = ? AND status IN ('queued', 'retry')",
                (iso(due), iso(expires), iso(now), f"postponed: {hold[0]}", row_id),
            ).rowcount
    return moved


def held_steps(db, slug: str) -> list[tuple[str, int]]:
    """(reason, rows) for this series' steps held by a configuration error."""
    return outbox.held_reasons(db, "kind = 'series' AND ref LIKE ?", (f"series:{slug}:%",))


# ----------------------------------------------------------------- diff
@dataclass(frozen=True)
class StepChange:
    key: str
    change: str  # unchanged | moved | new | removed
    old_position: int | None  # 1-based
    new_position: int | None


@dataclass
class SeriesDiff:
    slug: str
    applied: Version | None
    current_keys: list[str]
    changes: list[StepChange]
    next_before: Counter
    next_after: Counter
    readers: int

    @property
    def changed(self) -> bool:
        return self.applied is None or self.applied.keys != self.current_keys


DONE = "(finished)"


def step_changes(old: Sequence[str], new: Sequence[str]) -> list[StepChange]:
    """Per key: new, removed, moved (relative order changed) or unchanged."""
    old_pos = {k: i + 1 for i, k in enumerate(old)}
    new_pos = {k: i + 1 for i, k in enumerate(new)}
    common_old = [k for k in old if k in new_pos]
    common_new = [k for k in new if k in old_pos]
    matcher = difflib.SequenceMatcher(a=common_old, b=common_new, autojunk=False)
    stay = {
        common_new[j]
        for block in matcher.get_matching_blocks()
        for j in range(block.b, block.b + block.size)
    }
    out = []
    for k in new:
        if k not in old_pos:
            out.append(StepChange(k, "new", None, new_pos[k]))
        else:
            out.append(StepChange(k, "unchanged" if k in stay else "moved", old_pos[k], new_pos[k]))
    out += [StepChange(k, "removed", old_pos[k], None) for k in old if k not in new_pos]
    return out


def diff(db, settings: Settings, slug: str) -> SeriesDiff:
    """Compare the series' content with the applied version and with what readers got.

    ``next_before``/``next_after`` count, over enrolled readers (active or
    completed), which step key each would be sent next under the applied
    version and under the current content (``DONE`` when none).
    """
    series = load(settings, slug)
    applied = applied_version(db, slug)
    current = [s.key for s in series.steps]
    old = applied.keys if applied else []
    before: Counter = Counter()
    after: Counter = Counter()
    readers = 0
    cur = db.execute(
        "SELECT e.subscriber_id, d.step_key FROM enrollments e "
        "LEFT JOIN series_deliveries d ON d.subscriber_id = e.subscriber_id AND d.series = e.series "
        "WHERE e.series = ? AND e.status IN ('active', 'completed') "
        "ORDER BY e.subscriber_id, d.at, d.rowid",
        (slug,),
    )
    for _sid, group in itertools.groupby(cur, key=lambda r: r[0]):
        received = [r[1] for r in group if r[1] is not None]
        readers += 1
        b = next_step_index(old, received) if applied else None
        a = next_step_index(current, received)
        before[old[b] if b is not None else DONE] += 1
        after[current[a] if a is not None else DONE] += 1
    return SeriesDiff(slug, applied, current, step_changes(old, current), before, after, readers)


# ----------------------------------------------------------------- builder
def build_series_step(db, settings: Settings, row, sub, now: datetime) -> Content:
    """Render the step named by the row (``data`` or ``ref``) from the current content."""
    slug = row.data.get("series")
    key = row.data.get("step")
    if not (slug and key) and row.ref and row.ref.count(":") >= 2:
        _, slug, key = row.ref.split(":", 2)
    if sub.status != "active":
        raise SkipMessage("cancelled", f"the subscriber is {sub.status}")
    try:
        series = load(settings, slug)
    except NotFound as exc:
        raise SkipMessage("cancelled", f"series {slug} no longer exists") from exc
    step = next((s for s in series.steps if s.key == key), None)
    if step is None:
        raise SkipMessage(
            "cancelled", f"step {key} was removed from series {slug} after it was queued"
        )
    return webinars.authored_content(
        db, settings, step, sub, now, kind="series",
        extra={
            "part": step.part,
            "series_title": series.title,
            "reason": render.footer_reason("series", settings.site_name, series.title),
        },
    )


# ----------------------------------------------------------------- console
@dataclass(frozen=True)
class Overview:
    """A series as the console shows it: steps, a new reader's timeline in one zone, the diff."""

    series: Series
    zone: str
    anchor: datetime
    due: list[datetime]  # per step, when a reader confirming at ``anchor`` in ``zone`` gets it
    diff: SeriesDiff
    held: list[tuple[str, int]]

    @property
    def anchor_local(self) -> datetime:
        return self.anchor.astimezone(ZoneInfo(self.zone))

    @property
    def arrivals(self) -> list[tuple[object, datetime]]:
        """(step, when it arrives in the reader's zone), in send order."""
        zone = ZoneInfo(self.zone)
        return [(step, when.astimezone(zone)) for step, when in zip(self.series.steps, self.due,
                                                                    strict=True)]


def overview(db, settings: Settings, slug: str, now: datetime, *, tz: str | None = None,
             start: str | None = None) -> Overview:
    """``series show --timeline`` and ``series diff`` in one: what the series screen shows."""
    from funnel.validate import zone_name

    series = load(settings, slug)
    zone = zone_name(tz, "tz") if tz else settings.timezone
    anchor = schedule.parse_when(start, ZoneInfo(zone), now, "start") if start else now
    due = schedule.step_due_times(series, anchor, ZoneInfo(zone), settings.quiet_start_hour,
                                  settings.quiet_end_hour)
    return Overview(series, zone, anchor, due, diff(db, settings, slug), held_steps(db, slug))
