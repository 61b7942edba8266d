"""The send loop: claim due rows, build them, hand them to SMTP, mark the ledger.

``send_due`` is what ``funnel send`` (cron) and ``funnel worker`` (a loop)
run.  It owns no state between calls: everything it knows is in the outbox
table, so it can be killed at any moment and started again.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from funnel.errors import FunnelError
from funnel.settings import Settings

from . import messages, outbox
from .smtp import Relay, SendResult

#: Retry backoff: base * 2**(attempt-1), capped, plus up to 20% jitter.
BACKOFF_BASE = timedelta(minutes=2)
BACKOFF_CAP = timedelta(hours=6)


def backoff(attempt: int, rng: random.Random | None = None) -> timedelta:
    rng = rng or random
    delay = min(BACKOFF_BASE * (2 ** max(attempt - 1, 0)), BACKOFF_CAP)
    return delay * (1 + rng.random() * 0.2)


@dataclass
class Summary:
    claimed: int = 0
    sent: int = 0
    retry: int = 0
    failed: int = 0
    skipped: int = 0
    recovered: int = 0
    parked: int = 0
    lost_leases: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, status: str) -> None:
        if status == "sent":
            self.sent += 1
        elif status == "retry":
            self.retry += 1
        elif status == "failed":
            self.failed += 1
        else:
            self.skipped += 1

    def line(self) -> str:
        parts = [f"{self.sent} sent", f"{self.retry} to retry", f"{self.failed} failed"]
        if self.skipped:
            parts.append(f"{self.skipped} skipped")
        if self.recovered or self.parked:
            parts.append(f"{self.recovered} resent after a crash, {self.parked} parked")
        return ", ".join(parts)


def outcome_for(row: outbox.OutboxRow, result: SendResult, now: datetime,
                settings: Settings, relay_label: str) -> outbox.Outcome:
    verdict = result.verdict
    if verdict == "sent":
        return outbox.Outcome(row.id, "sent", result.code, None, relay=relay_label)
    if verdict == "failed":
        return outbox.Outcome(row.id, "failed", result.code, f"{result.stage}: {result.message}"[:500],
                              relay=relay_label)
    # retry / slowdown
    if row.attempts >= settings.max_attempts:
        return outbox.Outcome(row.id, "failed", result.code,
                              f"gave up after {row.attempts} attempts: {result.message}"[:500],
                              relay=relay_label)
    return outbox.Outcome(row.id, "retry", result.code, f"{result.stage}: {result.message}"[:500],
                          retry_at=now + backoff(row.attempts), relay=relay_label)


def send_due(
    db,
    settings: Settings,
    clock: Callable[[], datetime],
    *,
    relay: Relay | None = None,
    limit: int | None = None,
    signer=None,
    progress: Callable[[int], None] | None = None,
) -> Summary:
    """Send everything due now (up to ``limit`` rows); returns a summary."""
    summary = Summary()
    own_relay = relay is None
    relay = relay or Relay(settings.relays[0])
    try:
        summary.recovered, summary.parked = outbox.recover_stale(db, settings, clock())
        while limit is None or summary.claimed < limit:
            now = clock()
            batch = settings.batch_size if limit is None else min(settings.batch_size, limit - summary.claimed)
            token, rows = outbox.claim(db, now, batch)
            if not rows:
                break
            summary.claimed += len(rows)
            outcomes: list[outbox.Outcome] = []
            stop = False
            for row in rows:
                now = clock()
                try:
                    msg = messages.build(db, settings, row, now, signer=signer)
                except messages.SkipMessage as skip:
                    outcomes.append(outbox.Outcome(row.id, skip.status, None, skip.reason))
                    summary.add(skip.status)
                    continue
                except FunnelError as exc:
                    outcomes.append(outbox.Outcome(row.id, "failed", None, f"build: {exc}"))
                    summary.add("failed")
                    summary.errors.append(f"row {row.id}: {exc}")
                    continue
                result = relay.send(msg.envelope_from, msg.recipient, msg.data)
                o = outcome_for(row, result, now, settings, relay.config.label)
                outcomes.append(o)
                summary.add(o.status)
                if result.code is None and result.stage == "connect":
                    stop = True  # the relay is down: stop claiming, keep the rest queued
                    break
            done = {o.row_id for o in outcomes}
            leftover = [r.id for r in rows if r.id not in done]
            summary.lost_leases += outbox.mark(db, token, outcomes, clock())
            if leftover:
                outbox.release(db, token, leftover, clock())
            if progress:
                progress(len(outcomes))
            if stop:
                summary.errors.append(f"relay {relay.config.label} refused the connection; rows stay queued")
                break
    finally:
        if own_relay:
            relay.close()
    return summary
