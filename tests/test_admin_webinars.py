"""The console's webinars screen: create, registrants, attendance upload, reschedule, cancel."""

# ruff: noqa: F811
from __future__ import annotations

import html
import io
from datetime import timedelta

import pytest
from admin_support import (  # noqa: F401 (fixtures)
    admin_user,
    console,
    fast_hash,
    signed_in,
)

from campaigns import webinars
from subscribers import optin


def text(response) -> str:
    return html.unescape(response.get_data(as_text=True))


def statuses(db) -> dict[str, str]:
    return dict(db.execute("SELECT s.email, r.status FROM registrations r "
                           "JOIN subscribers s ON s.id = r.subscriber_id").fetchall())


def active(db, settings, email, now):
    sid = optin.signup(db, settings, email, now).subscriber_id
    optin.activate_imported(db, settings, sid, now, "test fixture")
    return sid


@pytest.fixture
def webinar(signed_in, db, settings, clock):
    """A webinar made through the console, three days ahead, with two registrants."""
    start = clock() + timedelta(days=3)
    token = signed_in.token("/admin/webinars/")
    r = signed_in.post("/admin/webinars/", {
        "slug": "spine-health", "title": "Spine Health Webinar", "start": f"{start:%Y-%m-%d} 18:00",
        "timezone": "Europe/London", "join_url": "https://meet.clinic.example/spine",
        "description": "Live answers about recurring low back pain.",
    }, token=token)
    assert r.status_code == 303, text(r)
    for addr in ("ana@example.com", "bo@example.com"):
        active(db, settings, addr, clock())
        webinars.register(db, settings, "spine-health", clock(), email=addr)
    return webinars.get_webinar(db, "spine-health")


def after(signed_in, clock, webinar):
    """Half an hour after the webinar ends, signed in again (the session has timed out)."""
    clock.set(webinar.ends_at + timedelta(minutes=30))
    assert signed_in.login().status_code == 303


def upload(signed_in, data: bytes, name: str = "zoom.csv"):
    token = signed_in.token("/admin/webinars/spine-health")
    return signed_in.post("/admin/webinars/spine-health/attendance",
                          {"file": (io.BytesIO(data), name)}, token=token,
                          content_type="multipart/form-data")


def test_webinar_page_lists_registrants(signed_in, webinar):
    page = text(signed_in.get("/admin/webinars/spine-health"))
    assert "ana@example.com" in page and "bo@example.com" in page and "2 registered" in page
    assert "Spine Health Webinar" in text(signed_in.get("/admin/webinars/"))


def test_attendance_upload_for_a_past_webinar_marks_attended_and_no_show(signed_in, db, clock,
                                                                        webinar):
    after(signed_in, clock, webinar)
    r = upload(signed_in, b"User Email,Duration (Minutes)\r\nana@example.com,48\r\n")
    assert r.status_code == 200, text(r)
    assert "1 attended, 1 no-show" in text(r)
    assert statuses(db) == {"ana@example.com": "attended", "bo@example.com": "no_show"}
    page = text(signed_in.get("/admin/webinars/spine-health"))
    assert "follow-up" in page
    (n,) = db.execute("SELECT COUNT(*) FROM events WHERE kind = 'admin' "
                      "AND ref = 'webinar_attendance'").fetchone()
    assert n == 1


@pytest.mark.parametrize("data, message", [
    ("Email,Duration\nana@example.com,48\n".encode("utf-16"), "zoom.csv: not UTF-8 text"),
    (b"Email,Duration\nana@example.com,lots\n", "zoom.csv:2: duration 'lots' is not a number"),
    (b"Name\nAna\n", "zoom.csv: no header row with an email column"),
])
def test_bad_attendance_files_get_the_cli_errors_and_change_nothing(signed_in, db, clock, webinar,
                                                                    data, message):
    after(signed_in, clock, webinar)
    r = upload(signed_in, data)
    assert r.status_code == 400 and message in text(r)
    assert statuses(db) == {"ana@example.com": "registered", "bo@example.com": "registered"}


def test_attendance_before_the_webinar_is_refused(signed_in, db, webinar):
    r = upload(signed_in, b"Email\nana@example.com\n")
    assert r.status_code == 400 and "has not started yet" in text(r)


def test_reschedule_and_cancel(signed_in, db, clock, webinar):
    new_start = webinar.local_start + timedelta(days=1)
    token = signed_in.token("/admin/webinars/spine-health")
    r = signed_in.post("/admin/webinars/spine-health/edit", {"start": f"{new_start:%Y-%m-%d %H:%M}"},
                       token=token)
    assert r.status_code == 303 and "rescheduled" in r.headers["Location"]
    assert webinars.get_webinar(db, "spine-health").starts_at == new_start
    r = signed_in.post("/admin/webinars/spine-health/cancel", {"confirm": "Spine"}, token=token)
    assert r.status_code == 400 and webinars.get_webinar(db, "spine-health").status == "scheduled"
    r = signed_in.post("/admin/webinars/spine-health/cancel", {"confirm": "spine health webinar"},
                       token=token)
    assert r.status_code == 303 and webinars.get_webinar(db, "spine-health").status == "cancelled"


def test_bad_create_names_the_field(signed_in, db):
    token = signed_in.token("/admin/webinars/")
    r = signed_in.post("/admin/webinars/", {"slug": "x-1", "title": "X", "start": "someday", "timezone": "Europe/London",
                                            "join_url": "https://meet.example/x"}, token=token)
    assert r.status_code == 400 and "Start" in text(r)
    assert webinars.list_webinars(db) == []
