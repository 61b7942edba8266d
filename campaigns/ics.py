"""Calendar files and "add to calendar" links for webinar emails.

The ``.ics`` is built with ``icalendar`` (never by string pasting), which
escapes text values and quotes parameters (a registrant called
``Jo "JJ" Smith; MD`` stays one CN parameter).  The event carries:

* ``METHOD:REQUEST`` (confirmation, update) or ``METHOD:CANCEL`` with
  ``STATUS:CANCELLED``;
* a ``UID`` stable per webinar *and* registrant, so an update or a cancel
  replaces the entry the confirmation created instead of adding a second one;
* ``SEQUENCE`` = the webinar's sequence, bumped on every reschedule/cancel,
  which is how calendar apps know the newer file wins;
* ``DTSTART`` in the webinar's own IANA zone (``TZID`` plus a ``VTIMEZONE``
  component, trimmed to the years around the event), so the entry shows the
  right local time for every reader, across DST;
* a ``VALARM`` 15 minutes before the start.

Pure: no clock (``now`` is the DTSTAMP) and no network.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import icalendar

PRODID = "-//funnel//webinars//EN"
ALARM_MINUTES = 15


@dataclass(frozen=True)
class EventInfo:
    """What a calendar entry needs to know about a webinar."""

    slug: str
    title: str
    description: str
    starts_at: datetime  # aware, UTC
    timezone: str
    duration_minutes: int
    join_url: str
    sequence: int
    cancelled: bool = False

    @property
    def ends_at(self) -> datetime:
        return self.starts_at + timedelta(minutes=self.duration_minutes)


def event_uid(slug: str, subscriber_id: int, domain: str) -> str:
    """Stable per webinar and registrant: updates and cancels replace the same entry."""
    return f"webinar-{slug}-{subscriber_id}@{domain}"


def _param_text(value: str) -> str:
    # icalendar quotes parameters and applies RFC 6868; still, keep control
    # characters out entirely (names are already cleaned at signup).
    return " ".join("".join(c if c.isprintable() else " " for c in value).split())


def build_ics(
    event: EventInfo,
    *,
    uid: str,
    organizer_name: str,
    organizer_email: str,
    attendee_email: str,
    attendee_name: str = "",
    now: datetime,
    method: str | None = None,
) -> bytes:
    """The ``.ics`` bytes for one registrant (``method`` defaults from ``event.cancelled``)."""
    method = method or ("CANCEL" if event.cancelled else "REQUEST")
    if method not in ("REQUEST", "CANCEL"):
        raise ValueError(f"unsupported iTIP method {method!r}")
    tz = ZoneInfo(event.timezone)
    start_local = event.starts_at.astimezone(tz)

    cal = icalendar.Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    cal.add("method", method)

    ev = icalendar.Event()
    ev.add("uid", uid)
    ev.add("sequence", event.sequence)
    ev.add("dtstamp", now.astimezone(UTC))
    ev.add("dtstart", start_local)
    ev.add("dtend", event.ends_at.astimezone(tz))
    ev.add("summary", event.title)
    description = event.description.strip()
    ev.add("description", f"{description}\n\nJoin: {event.join_url}".strip())
    ev.add("location", event.join_url)
    ev.add("url", event.join_url)
    ev.add("status", "CANCELLED" if method == "CANCEL" else "CONFIRMED")
    ev.add("transp", "OPAQUE")

    organizer = icalendar.vCalAddress(f"mailto:{organizer_email}")
    organizer.params["cn"] = _param_text(organizer_name)
    ev.add("organizer", organizer)
    attendee = icalendar.vCalAddress(f"mailto:{attendee_email}")
    if attendee_name.strip():
        attendee.params["cn"] = _param_text(attendee_name)
    attendee.params["role"] = "REQ-PARTICIPANT"
    attendee.params["partstat"] = "ACCEPTED"
    attendee.params["rsvp"] = "FALSE"
    ev.add("attendee", attendee)

    if method == "REQUEST":
        alarm = icalendar.Alarm()
        alarm.add("action", "DISPLAY")
        alarm.add("description", f"{event.title} starts in {ALARM_MINUTES} minutes")
        alarm.add("trigger", timedelta(minutes=-ALARM_MINUTES))
        ev.add_component(alarm)

    cal.add_component(ev)
    # A VTIMEZONE covering the years around the event keeps the file small
    # (icalendar's default spans 1970-2038, ~3 KB of RDATEs per zone).
    year = start_local.year
    cal.add_missing_timezones(first_date=date(year - 1, 1, 1), last_date=date(year + 2, 1, 1))
    return cal.to_ical()


def _utc_stamp(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def _utc_iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def google_calendar_url(event: EventInfo) -> str:
    query = urlencode(
        {
            "action": "TEMPLATE",
            "text": event.title,
            "dates": f"{_utc_stamp(event.starts_at)}/{_utc_stamp(event.ends_at)}",
            "details": f"Join: {event.join_url}",
            "location": event.join_url,
        }
    )
    return f"https://calendar.google.com/calendar/render?{query}"


def outlook_url(event: EventInfo) -> str:
    query = urlencode(
        {
            "path": "/calendar/action/compose",
            "rru": "addevent",
            "subject": event.title,
            "startdt": _utc_iso(event.starts_at),
            "enddt": _utc_iso(event.ends_at),
            "body": f"Join: {event.join_url}",
            "location": event.join_url,
        }
    )
    return f"https://outlook.live.com/calendar/0/deeplink/compose?{query}"


__all__ = [
    "ALARM_MINUTES",
    "EventInfo",
    "build_ics",
    "event_uid",
    "google_calendar_url",
    "outlook_url",
]
