"""The 28-day programme as a daily course: its start link and the start page.

The course is an ordinary series (``content/series/28-day-programme/``,
``cadence = "daily"``) on its own stream, ``series:28-day-programme``; which
series the programme buttons start is the ``programme_series`` setting.
Nobody is put on it at confirmation (it is not in ``enroll_series``): a reader
starts it with a personal signed button, or an admin with ``funnel series
enroll``.

* :func:`start_url` is the reader's "Start the 28-day programme" link.  The
  ``programme`` CTA, the attended webinar follow-up and the preferences page
  use it, unless ``programme_url`` sends readers to a programme the clinic
  sells elsewhere.
* ``GET /programme/start/TOKEN`` shows :func:`start_view` (reads only: link
  scanners open every URL); the reader's ``POST`` calls
  :func:`campaigns.enrollment.start_course`, which enrols them.

Timing, the shared frequency cap and completion are the scheduler's
(:mod:`campaigns.enrollment`); the report's stages are :mod:`campaigns.report`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from funnel.errors import ConfigurationError, NotFound
from funnel.settings import Settings
from subscribers import lifecycle, tokens
from subscribers.streams import series_folder


def missing_course(settings: Settings) -> str | None:
    """Why the programme buttons can't start a course, or None when they can.

    With ``programme_url`` set they go there; otherwise ``programme_series``
    must name a series in the content folders, or every start page would 404.
    """
    if settings.programme_url or series_folder(settings.content_paths, settings.programme_series):
        return None
    return (
        f"FUNNEL_PROGRAMME_SERIES: the programme buttons start the series "
        f"{settings.programme_series!r}, which is in no content folder; set "
        "FUNNEL_PROGRAMME_SERIES to a series slug or FUNNEL_PROGRAMME_URL to a page"
    )


def start_url(settings: Settings, subscriber_id: int, now: datetime) -> str:
    """The reader's personal one-click start link (a page whose button POSTs)."""
    return settings.url(f"/programme/start/{tokens.programme_token(settings, subscriber_id, now)}")


def programme_link(settings: Settings, subscriber_id: int, now: datetime) -> str:
    """Where a "Start the 28-day programme" button goes: ``programme_url``, else the course.

    Raises ConfigurationError (the sender holds the message until the settings
    change) when neither leads anywhere.
    """
    if settings.programme_url:
        return settings.programme_url
    if (problem := missing_course(settings)) is not None:
        raise ConfigurationError(problem)
    return start_url(settings, subscriber_id, now)


def programme_cta(
    settings: Settings, ctas: Sequence[Mapping], sub: lifecycle.Subscriber, now: datetime
) -> dict:
    """Recipient values for content with a ``programme`` CTA: the reader's start link.

    Empty when there is no such CTA or ``programme_url`` is set (the CTA then
    links to that URL for everyone; see campaigns/render.py).
    """
    if settings.programme_url or not any(c.get("kind") == "programme" for c in ctas):
        return {}
    return {"programme_url": programme_link(settings, sub.id, now)}


@dataclass(frozen=True)
class StartView:
    """What the start page shows: the course and where this reader stands."""

    title: str
    days: int
    first_name: str
    #: ``new`` | ``active`` (on it) | ``completed`` | ``stopped`` | ``inactive``
    #: (unsubscribed, bounced... : pressing the button would change nothing)
    state: str


def start_view(db, settings: Settings, token: str, now: datetime) -> StartView:
    """The start page for the reader a programme token names.  Reads only."""
    from .series import find_series

    sid = tokens.read_programme_token(settings, token, now)
    sub = lifecycle.get(db, sid)
    if sub.status == "erased":
        raise NotFound(f"subscriber {sid} was erased")
    series = find_series(settings.content_paths, settings.programme_series)
    row = db.execute(
        "SELECT status FROM enrollments WHERE subscriber_id = ? AND series = ?",
        (sid, series.slug),
    ).fetchone()
    if sub.status != "active":
        state = "inactive"
    elif row is None:
        state = "new"
    else:
        state = row[0]
    return StartView(series.title, len(series.steps), sub.first_name, state)


__all__ = ["StartView", "missing_course", "programme_cta", "programme_link", "start_url", "start_view"]
