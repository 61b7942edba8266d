"""The one place "now" comes from.

Every door (``cli.py``, the web app, the worker loop, ``funnel up``'s dev
stack and the dev mail catcher) reads the time through :func:`now` and passes
it down; domain functions take ``now`` as a parameter and never read a clock
themselves.  Tests install a fake source with :func:`use` (or
:func:`install`/:func:`restore`), so a CLI command, a page and the test's own
scheduling all agree on the same instant.

Monotonic timers for pure durations (rate buckets, timing floors, deadlines
while waiting for a socket) are not "now" and stay on ``time.monotonic``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

Source = Callable[[], datetime]


def real() -> datetime:
    """The system clock, in UTC."""
    return datetime.now(UTC)


_source: Source = real


def now() -> datetime:
    """The current instant (aware, UTC) from the installed source."""
    value = _source()
    if value.tzinfo is None:
        raise ValueError("the installed clock returned a naive datetime")
    return value.astimezone(UTC)


def install(source: Source) -> Source:
    """Make ``source`` the clock for everything; returns the previous one for :func:`restore`."""
    global _source
    previous, _source = _source, source
    return previous


def restore(previous: Source = real) -> None:
    """Put back the source :func:`install` returned (the system clock by default)."""
    global _source
    _source = previous


@contextlib.contextmanager
def use(source: Source) -> Iterator[Source]:
    """``with clock.use(fake): ...`` -- the fake is "now" inside the block only."""
    previous = install(source)
    try:
        yield source
    finally:
        restore(previous)
