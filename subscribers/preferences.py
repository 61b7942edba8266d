"""What a reader can do from the links in an email: unsubscribe, preferences, view.

The web pages (``web/pages.py``) read the signed token and call one function
here; every state change goes through :mod:`subscribers.lifecycle`.

Unsubscribe scopes
------------------
Every bulk email's unsubscribe token carries ``st``, the stream the email came
from.  RFC 8058 one-click unsubscribes from *the list the message came from*
(its ``List-Id`` is per stream), so a one-click POST from a series email stops
that series only; broadcasts and webinar invitations continue.  A token with no
stream (or the page's "unsubscribe from everything" button) unsubscribes the
reader from everything: status ``unsubscribed``, all streams off, every queued
send cancelled at once.

Pausing
-------
"Pause for N weeks" sets each stream the reader keeps on to ``paused`` with
``paused_until`` = now + N weeks.  The delivery engine treats a paused stream
whose ``paused_until`` has passed as subscribed again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from funnel.db import iso, log_event, parse_iso, transaction
from funnel.errors import InputError, NotFound
from funnel.settings import Settings

from . import lifecycle, optin, streams, tokens

#: The pause lengths the page offers (weeks).
PAUSE_CHOICES = (1, 2, 4, 8, 12)
MAX_PAUSE_WEEKS = 52
OUT_STATES = ("unsubscribed", "bounced", "complained", "erased")


# ----------------------------------------------------------------- labels
def stream_label(settings: Settings, stream: str) -> str:
    """A reader-facing name for a stream."""
    if stream == "broadcasts":
        return "News and occasional updates from the clinic"
    if stream == "webinars":
        return "Webinar invitations"
    if stream.startswith("series:"):
        slug = stream.partition(":")[2]
        title = streams.series_title(settings.content_paths, slug)
        if slug == settings.programme_series:
            return f"{title or slug.replace('-', ' ')}: one short email a day"
        return f"The weekly series: {title or slug.replace('-', ' ')}"
    if stream.startswith(
        "webinar:"
    ):  # one webinar's reminders and follow-up (campaigns/webinars.py)
        return (
            f"Reminders and follow-up for the webinar: {stream.partition(':')[2].replace('-', ' ')}"
        )
    return stream


# ----------------------------------------------------------------- unsubscribe
def unsubscribe_from_link(
    db,
    settings: Settings,
    subscriber_id: int,
    now: datetime,
    *,
    stream: str | None,
    everything: bool,
    source: str,
) -> str | None:
    """Unsubscribe from ``stream`` (or from everything); returns the scope used.

    Safe to repeat, and quiet about subscribers that no longer exist: a link
    in an old email must always end in "you're unsubscribed".
    Returns the stream, or None for "everything".
    """
    scope = None if everything or not stream else stream
    try:
        lifecycle.unsubscribe(db, subscriber_id, now, stream=scope, source=source)
    except NotFound:
        pass
    return scope


# ----------------------------------------------------------------- preferences
@dataclass
class StreamChoice:
    stream: str
    label: str
    on: bool
    paused_until: datetime | None = None


@dataclass
class PreferencesView:
    subscriber_id: int
    status: str
    first_name: str
    name: str
    timezone: str  # the subscriber's zone, or the clinic's default
    streams: list[StreamChoice] = field(default_factory=list)
    paused_until: datetime | None = None  # the latest pause of any stream still on
    #: The reader's signed "Start the 28-day programme" token (a button that
    #: POSTs to /programme/start/TOKEN), when they are active and not on it;
    #: with ``programme_url`` set, ``programme_url`` is the link instead.
    programme_token: str | None = None
    programme_url: str | None = None

    @property
    def can_change_streams(self) -> bool:
        return self.status in ("active", "pending")


def known_streams(db, settings: Settings, subscriber_id: int) -> list[str]:
    """The streams a reader may switch: the defaults plus any they already have."""
    streams = list(optin.default_streams(settings))
    for stream in lifecycle.subscriptions(db, subscriber_id):
        if stream not in streams:
            streams.append(stream)
    return streams


def preferences_view(db, settings: Settings, subscriber_id: int, now: datetime) -> PreferencesView:
    """Current choices for the preferences page (reads only)."""
    sub = lifecycle.get(db, subscriber_id)
    if sub.status == "erased":
        raise NotFound(f"subscriber {subscriber_id} was erased")
    subs = lifecycle.subscriptions(db, subscriber_id)
    view = PreferencesView(
        subscriber_id=sub.id,
        status=sub.status,
        first_name=sub.first_name,
        name=sub.name,
        timezone=sub.timezone or settings.timezone,
    )
    for stream in known_streams(db, settings, subscriber_id):
        state = subs.get(stream)
        if sub.status in OUT_STATES:
            on = False
        elif state is None:  # pending readers get the default streams when they confirm
            on = sub.status == "pending" and bool(sub.confirm_nonce)
        else:
            on = state["status"] in ("subscribed", "paused")
        until = parse_iso((state or {}).get("paused_until"))
        if state and state["status"] == "paused" and until and until > now:
            view.paused_until = max(view.paused_until or until, until)
        else:
            until = None
        view.streams.append(StreamChoice(stream, stream_label(settings, stream), on, until))
    course = subs.get(f"series:{settings.programme_series}", {}).get("status")
    if sub.status == "active" and course not in ("subscribed", "paused"):
        if settings.programme_url:
            view.programme_url = settings.programme_url
        else:
            view.programme_token = tokens.programme_token(settings, sub.id, now)
    return view


def _pause_weeks(raw: object) -> int | None:
    """'' / 'keep' -> None (leave pauses as they are); '0' -> 0 (resume); 'N' -> N weeks."""
    text = str(raw if raw is not None else "").strip().lower()
    if text in ("", "keep"):
        return None
    try:
        weeks = int(text)
    except ValueError as exc:
        raise InputError(f"pause_weeks: {text!r} is not a number of weeks") from exc
    if not 0 <= weeks <= MAX_PAUSE_WEEKS:
        raise InputError(f"pause_weeks: choose from 0 to {MAX_PAUSE_WEEKS} weeks")
    return weeks


def update_preferences(
    db, settings: Settings, subscriber_id: int, values: Mapping[str, object], now: datetime
) -> PreferencesView:
    """Validate and apply the preferences form in one transaction.

    ``values``: ``name`` (str), ``timezone`` (IANA name, '' = the default),
    ``streams`` (the streams to keep on; the others are switched off),
    ``pause_weeks`` ('keep', '0' = resume, or 1-52).  Bad input raises
    InputError naming the field and changes nothing.
    """
    name = optin.clean_name(str(values.get("name", "") or ""))
    timezone = optin.clean_timezone(str(values.get("timezone", "") or ""))
    pause = _pause_weeks(values.get("pause_weeks"))
    wanted_raw = values.get("streams") or []
    wanted = {str(s) for s in ([wanted_raw] if isinstance(wanted_raw, str) else wanted_raw)}

    with transaction(db):
        sub = lifecycle.get(db, subscriber_id)
        if sub.status == "erased":
            raise NotFound(f"subscriber {subscriber_id} was erased")
        allowed = known_streams(db, settings, subscriber_id)
        unknown = sorted(wanted - set(allowed))
        if unknown:
            raise InputError(f"streams: {unknown[0]!r} is not a list you can subscribe to")
        if sub.status in OUT_STATES and wanted:
            raise InputError(
                "streams: you are unsubscribed from everything; sign up again on the form "
                "to receive emails"
            )
        current = lifecycle.subscriptions(db, subscriber_id)
        if name != sub.name or timezone != sub.timezone:
            # Details, not state: the same columns optin updates on a repeat signup.
            db.execute(
                "UPDATE subscribers SET name = ?, timezone = ?, updated_at = ? WHERE id = ?",
                (name, timezone, iso(now), subscriber_id),
            )
            log_event(db, "preferences", now, subscriber_id, "details")
            if timezone != sub.timezone:
                _retime_enrollments(db, subscriber_id, now)  # the next step moves to the new zone's slot
        if sub.status not in OUT_STATES:
            paused_until = now + timedelta(weeks=pause) if pause else None
            for stream in allowed:
                state = current.get(stream, {"status": None, "paused_until": None})
                if stream not in wanted:
                    if state["status"] not in (None, "unsubscribed") or (
                        state["status"] is None and sub.status == "active"
                    ):
                        lifecycle.set_subscription(db, subscriber_id, stream, "unsubscribed", now)
                    continue
                if pause is None:  # keep any current pause; turn on what was off
                    if state["status"] in (None, "unsubscribed"):
                        lifecycle.set_subscription(db, subscriber_id, stream, "subscribed", now)
                    continue
                target = ("paused", paused_until) if pause else ("subscribed", None)
                if (state["status"], parse_iso(state["paused_until"])) != target:
                    lifecycle.set_subscription(
                        db, subscriber_id, stream, target[0], now, paused_until=target[1]
                    )
    return preferences_view(db, settings, subscriber_id, now)


def _retime_enrollments(db, subscriber_id: int, now: datetime) -> int:
    """After a zone change: have the next scheduler pass re-time this reader's steps.

    A waiting enrollment is looked at again at once; the scheduler
    (campaigns/enrollment.py) computes its next slot in the new zone and leaves
    it waiting if that is later.
    """
    return db.execute(
        "UPDATE enrollments SET next_due_at = ?, updated_at = ? "
        "WHERE subscriber_id = ? AND status = 'active' AND next_due_at > ?",
        (iso(now), iso(now), subscriber_id, iso(now)),
    ).rowcount
