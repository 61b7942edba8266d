"""The send loop: claim due rows, build them, hand them to SMTP, mark the ledger.

``send_due`` is what ``funnel send`` (cron) and ``funnel worker`` (a loop)
run.  It owns no state between calls: everything it knows is in the outbox
table, so it can be killed at any moment and started again.

The hot path, per claimed batch (``settings.batch_size`` rows):

1. one ``BEGIN IMMEDIATE`` claims the batch (lease token + owner);
2. each row is built (template compiled once per content, Jinja per
   recipient, MIME by hand, DKIM prepared, and for a large batch its
   signature asked of the signer's child process) and handed to one "wire"
   thread that writes it to a kept-open SMTP connection, while the next
   rows are built (two messages with the wire thread at most, see
   ``_send_batch``);
3. one transaction marks every outcome and records SMTP-time bounces.

A kill between 1 and 3 leaves the batch in ``sending``; the next run finds it
(the owner's pid is dead, or the lease ran out), counts it as uncertain and
resends it with the same Message-ID, one row per claim, so that a message that
crashes the sender crashes alone and is parked after ``crash_limit`` times.
So the duplicates a kill can cause are bounded by the batch in flight (in
practice the two messages the wire thread held).
"""

from __future__ import annotations

import queue
import random
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from funnel import health, outbox
from funnel.db import one_state, parse_iso, transaction
from funnel.errors import ConfigurationError, FunnelError
from funnel.settings import Settings
from subscribers import lifecycle

from . import holds, messages, views
from .content import SkipMessage
from .smtp import PoolResult, Relay, RelayPool, SendResult

#: Retry backoff: base * 2**(attempt-1), capped, plus up to 20% jitter.  With
#: the default 4-day expiry that is about 30 attempts (Postfix's queue
#: lifetime policy, in spirit).
BACKOFF_BASE = timedelta(minutes=5)
BACKOFF_CAP = timedelta(hours=4)


def backoff(attempt: int, rng: random.Random | None = None) -> timedelta:
    rng = rng or random
    delay = min(BACKOFF_BASE * (2 ** min(max(attempt - 1, 0), 20)), BACKOFF_CAP)
    return delay * (1 + rng.random() * 0.2)


@dataclass
class Summary:
    claimed: int = 0
    sent: int = 0
    retry: int = 0
    failed: int = 0
    expired: int = 0
    skipped: int = 0
    held: int = 0  # stay queued: a configuration error (see config_fingerprint)
    recovered: int = 0
    parked: int = 0
    bounced: int = 0
    lost_leases: int = 0
    released: int = 0
    blocked: str | None = None  # why sending stopped early (relays down or at their limit)
    errors: list[str] = field(default_factory=list)

    def add(self, status: str) -> None:
        if status == "sent":
            self.sent += 1
        elif status == "retry":
            self.retry += 1
        elif status == "failed":
            self.failed += 1
        elif status == "expired":
            self.expired += 1
        elif status == "queued":
            self.held += 1
        else:
            self.skipped += 1

    def line(self) -> str:
        parts = [f"{self.sent} sent", f"{self.retry} to retry", f"{self.failed} failed"]
        if self.expired:
            parts.append(f"{self.expired} expired")
        if self.skipped:
            parts.append(f"{self.skipped} skipped")
        if self.held:
            parts.append(f"{self.held} held by a configuration error (see `funnel check`)")
        if self.recovered or self.parked:
            parts.append(f"{self.recovered} uncertain after a crash (resent), {self.parked} parked")
        if self.lost_leases:
            parts.append(f"{self.lost_leases} taken over by another worker")
        return ", ".join(parts)


def _deadline(row: outbox.OutboxRow, settings: Settings) -> datetime | None:
    if row.expires_at:
        return parse_iso(row.expires_at)
    if row.created_at:
        return parse_iso(row.created_at) + timedelta(hours=settings.newsletter_expiry_hours)
    return None


def outcome_for(
    row: outbox.OutboxRow, result: SendResult, now: datetime, settings: Settings, relay_label: str
) -> outbox.Outcome:
    """The ledger outcome of one SMTP answer (reply-code policy in campaigns/smtp.py)."""
    verdict = result.verdict
    detail = f"{result.stage}: {result.code or ''} {result.message}".replace("  ", " ")[:500]
    if verdict == "sent":
        return outbox.Outcome(row.id, "sent", result.code, None, relay=relay_label)
    if verdict == "failed":
        return outbox.Outcome(row.id, "failed", result.code, detail, relay=relay_label)
    # retry / slowdown / relay: temporary, until the message expires.
    retry_at = now + backoff(row.attempts)
    deadline = _deadline(row, settings)
    if deadline is not None and retry_at >= deadline:
        return outbox.Outcome(
            row.id, "expired", result.code,
            f"expired after {row.attempts} attempt(s), still failing: {detail}"[:500],
            relay=relay_label,
        )  # fmt: skip
    if row.attempts >= settings.max_attempts:
        return outbox.Outcome(
            row.id, "failed", result.code,
            f"gave up after {row.attempts} attempts: {detail}"[:500], relay=relay_label,
        )  # fmt: skip
    return outbox.Outcome(
        row.id, "retry", result.code, detail, retry_at=retry_at, relay=relay_label
    )


def signer_for(settings: Settings):
    """The DKIM signer for these settings (None without a key); made once per run."""
    if not settings.dkim_key_file:
        return None
    from .dkim import DkimSigner

    return DkimSigner(
        settings.dkim_selector, settings.dkim_domain, settings.dkim_key_file,
        settings.dkim_ed25519_key_file,
    )  # fmt: skip


def config_fingerprint(settings: Settings) -> str:
    """A digest of everything a build depends on besides the row: the settings
    and the content and template files (names, sizes, modification times).

    A row held for a configuration error is skipped while this stays the same,
    so a worker does not rebuild it every tick; any change to a setting, a
    series file or a template lets the next run try it again.
    """
    import hashlib

    from . import render

    h = hashlib.sha256(repr(settings).encode())
    folders = [*settings.content_paths, render.TEMPLATE_DIR]
    for folder in folders:
        try:
            files = sorted(p for p in folder.rglob("*") if p.is_file())
        except OSError:
            continue
        for p in files:
            try:
                st = p.stat()
            except OSError:
                continue
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


#: How often a long :func:`send_due` stamps the worker heartbeat (/healthz
#: wants one within ``healthz_worker_seconds``); rarely, so it adds no write
#: between most batches.
HEARTBEAT_EVERY = timedelta(seconds=15)


#: From how many rows in a batch DKIM signatures are made in a child process
#: (campaigns/dkim.py, DkimSigner.offload): below it, the child's start (about
#: 0.1 s) costs more than it saves.
OFFLOAD_AT = 50


def _pool_for(settings: Settings, relay: Relay | RelayPool | None) -> tuple[RelayPool, bool]:
    """The pool to send through, and whether this run opened it (and must close it)."""
    if isinstance(relay, RelayPool):
        return relay, False
    if isinstance(relay, Relay):
        return RelayPool([relay]), False
    return RelayPool.from_configs(settings.relays), True


def _claim_next(db, settings: Settings, now: datetime, isolate: list[int], n: int, lease,
                fingerprint: str, owner: str):
    """Claim the next rows: a recovered row alone while any remain, else up to ``n``.

    Rows held for the current configuration (``fingerprint``) and rows the
    holds keep back are left alone.  Returns ``(token, rows)``.
    """
    where, params = holds.claim_filter(settings, now)
    where, params = where + " AND (held_config IS NULL OR held_config != ?)", (
        *params, fingerprint,
    )
    if isolate:
        rid = isolate.pop(0)
        return outbox.claim(
            db, now, 1, lease=lease, where=" AND id = ?" + where, params=(rid, *params),
            owner=owner,
        )  # fmt: skip
    return outbox.claim(db, now, n, lease=lease, where=where, params=params, owner=owner)


def send_due(
    db,
    settings: Settings,
    clock: Callable[[], datetime],
    *,
    relay: Relay | RelayPool | None = None,
    limit: int | None = None,
    signer=None,
    progress: Callable[[int], None] | None = None,
    owner: str | None = None,
) -> Summary:
    """Send everything due now (up to ``limit`` rows); returns a summary.

    ``relay`` may be a :class:`Relay`, a :class:`RelayPool` (a worker keeps
    one for its lifetime, so relay health and rate state carry over), or None
    for a pool of ``settings.relays`` opened and closed here.
    """
    summary = Summary()
    pool, own_pool = _pool_for(settings, relay)
    own_signer = signer is None
    if own_signer:
        signer = signer_for(settings)
    owner = owner or outbox.this_owner()
    lease = outbox.DEFAULT_LEASE
    batch_size = settings.batch_size
    if pool.per_second():  # a batch must finish well inside its lease
        batch_size = max(1, min(batch_size, int(pool.per_second() * lease.total_seconds() / 2)))

    def counter(label: str, since: datetime) -> int:
        return outbox.sent_via(db, label, since)

    fingerprint = config_fingerprint(settings)
    # One thread talks SMTP while this one builds (see _send_batch);
    # it starts with the first message and is joined before the pool closes.
    wire = _Wire()

    try:
        recovered = outbox.recover(db, settings, clock())
        summary.recovered, summary.parked = len(recovered.requeued), len(recovered.parked)
        isolate = list(recovered.requeued)  # resend these one per claim (see module doc)
        beat_at: datetime | None = None
        while limit is None or summary.claimed < limit:
            now = clock()
            if beat_at is None or now - beat_at >= HEARTBEAT_EVERY:
                health.beat(db, "worker", now)  # a long send keeps /healthz green
                beat_at = now
            pool.refresh(now, counter)
            blocked = pool.blocked(now)
            if blocked:
                summary.blocked = blocked
                break
            n = batch_size if limit is None else min(batch_size, limit - summary.claimed)
            isolated = bool(isolate)
            token, rows = _claim_next(db, settings, now, isolate, n, lease, fingerprint, owner)
            if not rows:
                if isolated:
                    continue  # that recovered row is no longer claimable; try the next one
                break
            summary.claimed += len(rows)
            apart = None
            if signer is not None and len(rows) >= OFFLOAD_AT:
                signer.offload()  # a signing child process, kept until the signer closes
                # This thread and the wire thread on one CPU, the child on the others,
                # for one batch: the scheduler places the next one afresh.
                apart = signer.keep_apart(wire.native_ids())
            try:
                stop = _send_batch(
                    db, settings, clock, pool, signer, token, rows, summary, fingerprint, wire
                )
            finally:
                if apart is not None:
                    apart()
            if stop:
                break
            if progress:
                progress(len(rows))
    finally:
        wire.shutdown()  # an interrupted send finishes before its socket closes
        if own_signer and signer is not None:
            signer.close()
        if own_pool:
            pool.close()
    if summary.blocked:
        waiting = summary.released
        summary.errors.append(
            f"sending stopped: {summary.blocked}"
            + (f"; {waiting} message(s) stay queued" if waiting else "")
        )
    return summary


#: How many messages the builder may hand to the wire thread before it takes
#: the oldest one's answer.  Two: while message N is on the wire, N+1 waits
#: for its DKIM signature (made in a child process, campaigns/dkim.py) and
#: the builder makes N+2.  Three measured no faster.
PIPELINE_DEPTH = 2


@dataclass
class _Flight:
    """A row handed to the wire thread whose answer has not been taken yet."""

    row: outbox.OutboxRow
    msg: messages.Outgoing
    now: datetime


class _Wire:
    """The one thread that talks SMTP (and signs, without a signing child) for
    :func:`_send_batch`.

    Jobs go in and answers come out in order through two C ``SimpleQueue``s,
    not a ``ThreadPoolExecutor`` with a ``Future`` per message: the handoff
    happens twice a message, and each Python-level lock it takes is another
    point where the wire thread and the builder trade the GIL.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._answers: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    #: The GIL switch interval while a wire thread runs.  Each time a reply
    #: arrives the wire thread needs the GIL back, and the builder only lets go
    #: of it at a blocking call or when the interval (5 ms by default) is up;
    #: at 1 ms the next command goes out sooner.  Measured with
    #: ``bench/send.py``'s worker pass, 6 alternating pairs of 20,000 messages:
    #: 1,488 against 1,413 msg/s on average, faster in 4 pairs of 6.
    SWITCH_INTERVAL = 0.001

    def submit(self, fn, *args) -> None:
        if self._thread is None:
            _switching(+1, self.SWITCH_INTERVAL)
            self._thread = threading.Thread(target=self._run, name="funnel-wire", daemon=True)
            self._thread.start()
        self._jobs.put((fn, args))

    def native_ids(self) -> list[int]:
        """The wire thread's native id, once it has started (for DkimSigner.keep_apart)."""
        return [self._thread.native_id] if self._thread is not None else []

    def take(self):
        """The oldest job's return value (its exception re-raised here)."""
        ok, value = self._answers.get()
        if not ok:
            raise value
        return value

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args = job
            try:
                self._answers.put((True, fn(*args)))
            except BaseException as exc:  # handed to the builder, which raises it
                self._answers.put((False, exc))

    def shutdown(self) -> None:
        """Wait for the jobs handed over (two at most) to finish, then end the thread."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None
            _switching(-1, self.SWITCH_INTERVAL)


_SWITCH = {"wires": 0, "before": 0.0}
_SWITCH_LOCK = threading.Lock()


def _switching(delta: int, interval: float) -> None:
    """The first wire thread of the process sets the switch interval, the last one
    to stop puts the one before back (senders may run in several threads)."""
    with _SWITCH_LOCK:
        if delta > 0 and _SWITCH["wires"] == 0:
            _SWITCH["before"] = sys.getswitchinterval()
            sys.setswitchinterval(min(_SWITCH["before"], interval))
        _SWITCH["wires"] += delta
        if delta < 0 and _SWITCH["wires"] == 0:
            sys.setswitchinterval(_SWITCH["before"])


def _transmit(pool: RelayPool, msg: messages.Outgoing, now: datetime):
    """On the wire thread: SMTP, with the message's bytes (and so its DKIM signature,
    made in a child process or here) taken once the envelope is accepted."""
    return pool.send(msg.envelope_from, msg.recipient, msg.wire, now)


def _send_batch(
    db,
    settings: Settings,
    clock,
    pool: RelayPool,
    signer,
    token: str,
    rows: list[outbox.OutboxRow],
    summary: Summary,
    fingerprint: str,
    wire: _Wire,
) -> bool:
    """Send one claimed batch and mark it; returns True when sending must stop.

    A pipeline :data:`PIPELINE_DEPTH` (two) deep: while row N is on the wire
    (the ``wire`` thread; socket waits release the GIL) and row N+1 waits
    behind it for its DKIM signature, this thread builds row N+2, then takes
    N's answer before handing N+2 over.  So outcomes are taken in row order,
    only the wire thread sends through the pool while a batch runs (this one
    only asks whether it is blocked, which at worst reads a count one message
    old: the pool itself refuses a message past a limit), and the ledger
    rules are those of a plain loop: a row handed over whose answer was not
    taken (an interrupt, a crash) stays in 'sending' and is recovered as
    uncertain; a row only built goes back untouched; when N's answer
    stops the batch (no relay could take it, the pool is blocked), the
    already built N+2 goes back untouched too, and N+1, already with the
    wire thread, is refused by the pool (which checks every relay's rest and
    limits before each message) and goes back untouched as well.

    Measured (``bench/send.py --runs 5 --n 50000``): with one message in
    flight the worker reached 1,309-1,650 msg/s, 47-54% of the relay
    session's ceiling; with two, 1,823-1,869 msg/s, 56-60%.  The builder
    no longer waits for the wire thread after every message.
    """
    outcomes: list[outbox.Outcome] = []
    bounced: dict[int, tuple[outbox.OutboxRow, SendResult, str]] = {}
    sent: dict[int, messages.Outgoing] = {}  # their views are stored with the outcomes
    stop = False
    flights: deque[_Flight] = deque()  # handed to the wire thread, answers not taken yet
    # The batch's readers and their subscriptions in two queries, not two per message;
    # each message is then built against one check that nothing changed since.
    lifecycle.read_ahead(db, [(r.subscriber_id, r.stream) for r in rows if r.subscriber_id])
    try:
        for row in rows:
            now = clock()
            with one_state(db):
                msg = _build(db, settings, signer, row, now, summary, fingerprint)
            while len(flights) >= PIPELINE_DEPTH and not stop:
                stop = _land(settings, pool, wire, flights[0], outcomes, summary, bounced, sent)
                flights.popleft()  # only once its answer is taken (see finally)
            if stop:
                break
            if isinstance(msg, outbox.Outcome):
                outcomes.append(msg)
                summary.add(msg.status)
            else:
                flights.append(_Flight(row, msg, now))  # uncertain if interrupted from here
                wire.submit(_transmit, pool, msg, now)
        while flights:  # after a stop too: what the wire thread still holds is answered
            stop = _land(settings, pool, wire, flights[0], outcomes, summary, bounced, sent,
                         stopped=stop) or stop  # fmt: skip
            flights.popleft()
    finally:
        # Even when interrupted (Ctrl-C), record what is known.  A row whose
        # fate is unknown (handed to the wire thread, answer not taken) stays
        # in 'sending' and is recovered as uncertain by the next run.
        handled = {o.row_id for o in outcomes}
        in_flight = {f.row.id for f in flights}
        untouched = [r.id for r in rows if r.id not in handled and r.id not in in_flight]
        _record(db, settings, clock, token, outcomes, bounced, untouched, summary, sent)
    return stop


def _land(
    settings: Settings,
    pool: RelayPool,
    wire: _Wire,
    flight: _Flight,
    outcomes: list[outbox.Outcome],
    summary: Summary,
    bounced: dict,
    sent: dict[int, messages.Outgoing],
    stopped: bool = False,
) -> bool:
    """Take a row's SMTP answer into the batch's outcomes; True when sending must stop.

    *stopped*: an earlier answer stopped the batch; this row was already on
    the wire thread's queue.  The pool then finds no relay for it (the pool
    checks every relay's rest and limits before each message) and it goes
    back untouched; if a relay came back meanwhile, it went out and is
    recorded like any other.
    """
    answer = wire.take()
    if stopped and answer.result is None:
        return True  # not attempted: it goes back untouched
    outcome = _outcome(settings, flight.row, answer, flight.now, summary, bounced)
    if outcome is None:  # no relay could take it: it goes back unsent
        return True
    if outcome.status == "sent":
        sent[flight.row.id] = flight.msg
    outcomes.append(outcome)
    summary.add(outcome.status)
    blocked = pool.blocked(flight.now)
    if blocked:
        summary.blocked = blocked
        return True
    return False


def _record(
    db,
    settings: Settings,
    clock,
    token: str,
    outcomes: list[outbox.Outcome],
    bounced: dict,
    untouched: list[int],
    summary: Summary,
    sent: dict[int, messages.Outgoing] | None = None,
) -> None:
    """One transaction for the batch's outcomes, bounces and views; unsent rows go back."""
    with transaction(db):
        lost = set(outbox.mark_owned(db, token, outcomes, clock()))
        if sent:
            views.store(db, (m for rid, m in sent.items() if rid not in lost))
        for rid, (row, result, label) in bounced.items():
            if rid not in lost:
                summary.bounced += _record_bounce(db, settings, row, result, label, clock())
    summary.lost_leases += len(lost)
    if untouched:
        outbox.release(db, token, untouched, clock())
        summary.released += len(untouched)


def _build(
    db, settings: Settings, signer, row: outbox.OutboxRow, now: datetime, summary: Summary,
    fingerprint: str = "",
) -> messages.Outgoing | outbox.Outcome:
    """The wire bytes for a row, or the outcome that replaces sending it.

    A configuration error (a CTA without a URL, a template problem) is not the
    recipient's: the row stays queued, held under this configuration's
    fingerprint with the reason, and goes out once the configuration changes.
    """
    try:
        return messages.build(db, settings, row, now, signer=signer)
    except SkipMessage as skip:
        return outbox.Outcome(row.id, skip.status, None, skip.reason)
    except ConfigurationError as exc:
        reason = str(exc)[:500]
        if f"held: {reason}" not in summary.errors:
            summary.errors.append(f"held: {reason}")
        return outbox.Outcome(row.id, "queued", None, reason, held_config=fingerprint or "held")
    except FunnelError as exc:
        summary.errors.append(f"row {row.id}: {exc}")
        return outbox.Outcome(row.id, "failed", None, f"build: {exc}"[:500])
    except Exception as exc:  # a bug in a builder: count it as a crash of this row
        crashes = row.crashes + 1
        error = f"building the message crashed ({crashes} time(s)): {exc!r}"[:500]
        summary.errors.append(f"row {row.id}: {error}")
        if crashes >= settings.crash_limit:
            return outbox.Outcome(row.id, "failed", None, f"parked: {error}", crashed=True)
        return outbox.Outcome(
            row.id, "retry", None, error, retry_at=now + backoff(crashes), crashed=True
        )


def _outcome(
    settings: Settings,
    row: outbox.OutboxRow,
    sent: PoolResult,
    now: datetime,
    summary: Summary,
    bounced: dict,
) -> outbox.Outcome | None:
    """The ledger outcome of the pool's answer for a row; None when no relay took it."""
    if sent.result is None:
        summary.blocked = sent.blocked
        return None
    outcome = outcome_for(row, sent.result, now, settings, sent.relay or "")
    if outcome.status == "failed" and sent.result.code and sent.result.stage in ("rcpt", "data"):
        bounced[row.id] = (row, sent.result, sent.relay or "")
    return outcome


def _record_bounce(
    db, settings: Settings, row: outbox.OutboxRow, result: SendResult, relay: str, now: datetime
) -> int:
    from subscribers import bounces

    if row.subscriber_id is None:
        return 0
    bounces.record_smtp_failure(
        db, settings, subscriber_id=row.subscriber_id, outbox_id=row.id, code=result.code,
        message=result.message, relay=relay, now=now,
    )  # fmt: skip
    return 1
