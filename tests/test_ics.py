"""Calendar files and calendar links, parsed back with icalendar and urllib."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import icalendar

from campaigns import ics

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)


def event(**kw):
    values = dict(
        slug="spine-health",
        title="Spine Health Webinar",
        description="Live Q&A; bring questions, a mat, and water.",
        starts_at=datetime(2026, 7, 9, 22, 0, tzinfo=UTC),  # 18:00 EDT
        timezone="America/New_York",
        duration_minutes=75,
        join_url="https://meet.example/s?id=1&pwd=x",
        sequence=2,
    )
    values.update(kw)
    return ics.EventInfo(**values)


def build(info, method=None, name='Jo "JJ" Smith; MD, PhD'):
    data = ics.build_ics(
        info,
        uid=ics.event_uid(info.slug, 7, "clinic.example"),
        organizer_name="Back in Motion",
        organizer_email="news@clinic.example",
        attendee_email="jo@example.com",
        attendee_name=name,
        now=NOW,
        method=method,
    )
    return data, icalendar.Calendar.from_ical(data)


def test_request_round_trip_in_the_webinars_zone():
    data, cal = build(event())
    assert str(cal["METHOD"]) == "REQUEST"
    (ev,) = cal.walk("VEVENT")
    assert str(ev["UID"]) == "webinar-spine-health-7@clinic.example"
    assert int(ev["SEQUENCE"]) == 2 and str(ev["STATUS"]) == "CONFIRMED"
    assert ev["DTSTART"].params["TZID"] == "America/New_York"
    start = ev.decoded("DTSTART")
    assert start == datetime(2026, 7, 9, 18, 0, tzinfo=ZoneInfo("America/New_York"))
    assert start.utcoffset() == timedelta(hours=-4)  # EDT, from the VTIMEZONE
    assert ev.decoded("DTEND") - start == timedelta(minutes=75)
    (tz,) = cal.walk("VTIMEZONE")
    assert str(tz["TZID"]) == "America/New_York" and tz.walk("DAYLIGHT")
    (alarm,) = ev.walk("VALARM")
    assert alarm.decoded("TRIGGER") == timedelta(minutes=-15)
    # Text and parameters are escaped, not pasted: the odd name stays one CN.
    attendee = ev["ATTENDEE"]
    assert str(attendee) == "mailto:jo@example.com"
    assert attendee.params["CN"] == 'Jo "JJ" Smith; MD, PhD'
    assert str(ev["DESCRIPTION"]).startswith("Live Q&A; bring questions, a mat, and water.")
    assert b"SUMMARY:Spine Health Webinar" in data
    assert b"DESCRIPTION:Live Q&A\\; bring questions\\, a mat\\, and water." in data
    assert str(ev["ORGANIZER"]) == "mailto:news@clinic.example"
    assert len(data) < 4000  # the VTIMEZONE covers the years around the event only


def test_cancel_keeps_uid_and_drops_the_alarm():
    _data, cal = build(event(cancelled=True, sequence=3))
    assert str(cal["METHOD"]) == "CANCEL"
    (ev,) = cal.walk("VEVENT")
    assert str(ev["STATUS"]) == "CANCELLED" and int(ev["SEQUENCE"]) == 3
    assert str(ev["UID"]) == "webinar-spine-health-7@clinic.example"
    assert not ev.walk("VALARM")


def test_control_characters_never_reach_the_file():
    data, cal = build(event(title="Spine\r\nX-Injected: yes"), name="A\x07B")
    (ev,) = cal.walk("VEVENT")
    assert ev["ATTENDEE"].params["CN"] == "A B"
    assert b"\nX-Injected" not in data and str(ev["SUMMARY"]) == "Spine\nX-Injected: yes"


def test_calendar_links():
    info = event()
    g = urlsplit(ics.google_calendar_url(info))
    q = parse_qs(g.query)
    assert g.netloc == "calendar.google.com" and q["action"] == ["TEMPLATE"]
    assert q["dates"] == ["20260709T220000Z/20260709T231500Z"]
    assert q["text"] == ["Spine Health Webinar"] and q["location"] == [info.join_url]
    o = urlsplit(ics.outlook_url(info))
    q = parse_qs(o.query)
    assert o.netloc == "outlook.live.com" and o.path == "/calendar/0/deeplink/compose"
    assert q["startdt"] == ["2026-07-09T22:00:00Z"] and q["enddt"] == ["2026-07-09T23:15:00Z"]
    assert q["subject"] == ["Spine Health Webinar"] and info.join_url in q["body"][0]
