"""The long-lived worker: schedule, queue, send, sleep, until told to stop.

One loop iteration is a scheduler :func:`tick` (readers who newly subscribed
to a series enrolled, series steps that are due,
broadcasts whose time has come, postponed steps moved to their new slot,
finished campaigns closed) followed by :func:`campaigns.sender.send_due`.
``funnel send`` runs the same tick once before sending, so cron users get
the same behaviour as a worker.

Everything the worker knows is in the database, so it can be stopped at any
point (SIGINT/SIGTERM set the stop event; the current batch is marked first)
and several workers may run at once.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime

from funnel import clock as clocks
from funnel import health
from funnel.db import connect
from funnel.errors import FunnelError
from funnel.settings import Settings
from subscribers import retention

from . import appointments, broadcasts, enrollment, feeds, sender
from .series import missing_parts_text


@dataclass
class Tick:
    series_enrolled: int = 0
    series_queued: int = 0
    series_postponed: int = 0
    deferred: int = 0
    campaigns_queued: int = 0
    broadcast_rows: int = 0
    campaigns_finished: int = 0
    ab_decided: int = 0
    pending_purged: int = 0
    appointments_purged: int = 0
    webhooks_delivered: int = 0
    webhooks_failed: int = 0
    feeds_checked: int = 0
    feed_drafts: int = 0
    held_series: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        parts = []
        if self.campaigns_queued:
            parts.append(
                f"{self.campaigns_queued} campaign(s) queued ({self.broadcast_rows} messages)"
            )
        if self.series_enrolled:
            parts.append(f"{self.series_enrolled} reader(s) enrolled in a series")
        if self.series_queued:
            parts.append(f"{self.series_queued} series step(s) queued")
        if self.series_postponed or self.deferred:
            parts.append(
                f"{self.series_postponed + self.deferred} series step(s) postponed "
                "(frequency cap or webinar)"
            )
        if self.ab_decided:
            parts.append(f"{self.ab_decided} A/B test(s) decided, the winner queued")
        if self.campaigns_finished:
            parts.append(f"{self.campaigns_finished} campaign(s) finished")
        if self.feed_drafts:
            parts.append(f"{self.feed_drafts} draft broadcast(s) from watched feeds")
        if self.pending_purged:
            parts.append(f"{self.pending_purged} never-confirmed signup(s) purged")
        if self.appointments_purged:
            parts.append(f"{self.appointments_purged} old appointment request(s) purged")
        if self.webhooks_delivered or self.webhooks_failed:
            parts.append(
                f"{self.webhooks_delivered} appointment webhook(s) delivered, "
                f"{self.webhooks_failed} given up (see `funnel check`)"
            )
        return ", ".join(parts)


def tick_line(ticked: dict) -> str:
    """One line describing a :func:`tick` result ("" when nothing happened)."""
    return Tick(**ticked).line()


def tick(
    db, settings: Settings, now: datetime, *, progress: Callable[[int], None] | None = None
) -> dict:
    """One scheduler pass; returns counts (see :class:`Tick`) as a dict.

    Broadcasts are queued before series steps are materialised, so a series
    step sees a broadcast due at the same moment and yields to it.
    """
    health.beat(db, "worker", now)  # /healthz: the worker (or cron send) is alive
    t = Tick()
    t.campaigns_queued, t.broadcast_rows = broadcasts.queue_due(
        db, settings, now, progress=progress
    )
    t.ab_decided = broadcasts.decide_due(db, settings, now)
    report = enrollment.TickReport()
    t.series_queued = enrollment.schedule_series(db, settings, now, report=report)
    t.series_enrolled = report.enrolled
    t.series_postponed = report.postponed
    t.held_series, t.problems = report.held_series, report.problems
    t.deferred = enrollment.defer_held(db, settings, now)
    t.campaigns_finished = broadcasts.finish_done(db, now)
    t.pending_purged = retention.purge_pending(db, settings, now)
    t.appointments_purged = retention.purge_appointments(db, settings, now)
    hooks = appointments.deliver_webhooks(db, settings, now)
    t.webhooks_delivered, t.webhooks_failed = hooks.delivered, hooks.failed
    watched = feeds.check_due(db, settings, now)
    t.feeds_checked, t.feed_drafts = watched.checked, len(watched.drafts)
    t.problems += watched.problems
    for slug in settings.enroll_series:
        try:
            series = enrollment.load(settings, slug)
        except FunnelError as exc:
            t.problems.append(f"enroll_series {slug!r}: {exc}")
            continue
        if series.gaps:
            t.problems.append(
                f"enroll_series {slug!r}: {missing_parts_text(series.gaps)}, so readers who "
                f"confirm are not enrolled in it; fill the gaps or enrol them later with "
                f"`funnel series enroll {slug} --allow-gaps`"
            )
    return t.as_dict()


def run_worker(
    settings: Settings,
    stop: threading.Event,
    clock: Callable[[], datetime] = clocks.now,
    interval: float = 5.0,
    on_summary: Callable[[dict, sender.Summary | None], None] | None = None,
    *,
    relay=None,
    on_error: Callable[[FunnelError], None] | None = None,
    connections: int = 1,
) -> int:
    """Loop tick + send until ``stop`` is set; returns the number of iterations.

    ``on_summary(tick_dict, send_summary)`` is called after each iteration.
    A FunnelError in one iteration (a locked database, a broken series file)
    is reported through ``on_error`` and the loop carries on; bugs propagate.

    ``connections`` > 1 forks that many minus one sender processes, each with
    its own database connection and its own relay connection(s); each claims
    its own batches under its own lease, exactly as separate workers do, so no
    row is sent twice, and a sender killed mid-batch is recovered like any
    dead worker.  Processes, not threads: building a message is Python work,
    and threads would share one core under the GIL.  A relay's per-second
    rate is split between the senders.  They stop after their current batch
    when this loop stops, or when they find this process gone.
    """
    connect(settings.db, migrate=True).close()  # migrated before any sender starts
    halt = multiprocessing.get_context("fork").Event()
    helpers = [
        multiprocessing.get_context("fork").Process(
            target=_send_process, name=f"funnel-sender-{i}",
            args=(settings, halt, clock, interval, on_summary, on_error, connections,
                  os.getpid()),
        )
        for i in range(1, connections)
    ]  # fmt: skip
    for process in helpers:  # forked before this process opens the database
        process.start()
    db = connect(settings.db)
    pool = relay if relay is not None else _pool(settings, connections)
    signer = _signer(settings, on_error, connections)
    loops = 0
    try:
        while not stop.is_set():
            loops += 1
            try:
                t = tick(db, settings, clock())
                summary = sender.send_due(db, settings, clock, relay=pool, signer=signer)
            except FunnelError as exc:
                if on_error is None:
                    raise
                on_error(exc)
            else:
                if on_summary:
                    on_summary(t, summary)
            stop.wait(interval)
    finally:
        halt.set()
        for process in helpers:
            process.join()
        if relay is None:
            pool.close()
        if signer is not None:
            signer.close()
        db.close()
    return loops


def _signer(settings: Settings, on_error, connections: int = 1):
    """The DKIM signer for a sender's lifetime (its signing child process starts with
    the first large batch and is kept between ticks), or None without a key.  A bad key
    is reported like any iteration's error, and each send then reports it again.

    With several sender processes the CPUs are theirs to share: no sender keeps
    its threads on one CPU and its signing child on the others
    (``DkimSigner.keep_apart``), or two of them could end up on the same one.
    """
    try:
        signer = sender.signer_for(settings)
    except FunnelError as exc:
        if on_error is None:
            raise
        on_error(exc)
        return None
    if signer is not None:
        signer.apart = connections == 1
    return signer


def _pool(settings: Settings, connections: int):
    """A relay pool for one of ``connections`` senders: per-second rates split evenly."""
    from .smtp import RelayPool

    configs = [
        replace(c, rate_per_second=c.rate_per_second / connections) for c in settings.relays
    ]
    return RelayPool.from_configs(configs)


def _send_process(settings, halt, clock, interval, on_summary, on_error, connections,
                  parent: int) -> None:  # fmt: skip
    """One extra sender of ``run_worker``: send what is due, batch by batch, until told
    to stop (``halt``, or SIGTERM) or until the worker that forked it is gone."""
    stopping: list[int] = []
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the worker, which halts us
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    db = connect(settings.db)
    pool = _pool(settings, connections)
    signer = _signer(settings, on_error, connections)
    try:
        while not (halt.is_set() or stopping or os.getppid() != parent):
            try:
                summary = sender.send_due(
                    db, settings, clock, relay=pool, limit=settings.batch_size, signer=signer
                )
            except FunnelError as exc:
                if on_error is None:
                    raise
                on_error(exc)
                halt.wait(interval)
                continue
            if on_summary and summary.claimed:
                on_summary(Tick().as_dict(), summary)
            if summary.claimed < settings.batch_size or summary.blocked:
                halt.wait(interval)
    finally:
        pool.close()
        if signer is not None:
            signer.close()
        db.close()
