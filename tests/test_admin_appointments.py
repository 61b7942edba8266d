"""Appointment requests in the admin console: the inbox, a request's page, status changes, export.

The last test marks a request as booked in a real Chromium at 1280 and 375 px
(screenshots in tests/artifacts/).

Plus the domain functions behind them (campaigns/appointments.py): the paged
inbox with its attribution, mark_seen (a form sent twice applies once) and the
dashboard's counts.
"""

# ruff: noqa: F811
from __future__ import annotations

import csv
import io
import re

import pytest
from admin_support import (  # noqa: F401 (fixtures)
    EMAIL,
    PASSWORD,
    admin_user,
    console,
    fast_hash,
    signed_in,
)
from browser_support import ARTIFACTS, chromium, live, zone  # noqa: F401 (fixtures)
from conftest import APPOINTMENT_REQUEST

from campaigns import appointments
from funnel.db import utcnow
from funnel.errors import InputError, TransitionError
from subscribers import admins

GOOD = APPOINTMENT_REQUEST
SERIES = {"kind": "series", "series": "importance-of-exercise", "step": "03-weak-abs-busy-back"}


def request_from(db, settings, clock, attribution=None, **fields) -> appointments.Appointment:
    a = appointments.create_request(db, settings, {**GOOD, **fields}, attribution, clock())
    clock.advance(minutes=5)
    return a


def login(console):
    """Sign in after the clock has moved (a session idles out after 30 minutes)."""
    assert console.login().status_code == 303
    return console


def status_of(db, aid: int) -> str:
    return appointments.get_request(db, aid).status


def audits(db) -> list[dict]:
    return [r for r in admins.audit_log(db, 100) if r["action"].startswith(("appointment", "export_app"))]


# ----------------------------------------------------------------- inbox
def test_inbox_lists_requests_newest_first_with_their_attribution(console, db, settings, clock):
    older = request_from(db, settings, clock, SERIES)
    newer = request_from(db, settings, clock, {"kind": "broadcast", "broadcast_id": 7},
                         name="Tom Okafor", email="tom@example.com", phone="", contact_method="email",
                         times=["weekday-evening"])
    clock.advance(hours=3)
    signed_in = login(console)

    r = signed_in.get("/admin/appointments/")
    assert r.status_code == 200
    html = r.get_data(as_text=True)
    assert html.index("Tom Okafor") < html.index("Priya Shah")
    assert "Series: importance-of-exercise, step 03-weak-abs-busy-back" in html
    assert "Message kind: series" in html and "Broadcast: #7" in html
    assert "a text message" in html and "Weekday mornings, Saturday mornings" in html
    assert "Weekday evenings (after 5 pm)" in html and ">3 h<" in html
    assert f'/admin/appointments/{older.id}"' in html and f'/admin/appointments/{newer.id}"' in html
    assert 'href="/admin/appointments/"' in html  # the nav entry

    appointments.mark(db, older.id, "contacted", clock())
    contacted = signed_in.get("/admin/appointments/?status=contacted").get_data(as_text=True)
    assert "Priya Shah" in contacted and "Tom Okafor" not in contacted
    assert "new (1)" in contacted and "contacted (1)" in contacted
    assert signed_in.get("/admin/appointments/?status=lost").status_code == 400


def test_inbox_pages_by_id_and_names_the_broadcast_and_webinar(db, settings, clock):
    db.execute("INSERT INTO campaigns (id, kind, template, subject, created_at, updated_at) "
               "VALUES (7, 'broadcast', 'broadcast', 'Sitting well at work', ?, ?)",
               (clock().isoformat(), clock().isoformat()))
    ids = [request_from(db, settings, clock, {"kind": "broadcast", "broadcast_id": 7},
                        name=f"Reader {i}").id for i in range(5)]
    first = appointments.inbox(db, limit=2)
    second = appointments.inbox(db, before=first.next_before, limit=2)
    third = appointments.inbox(db, before=second.next_before, limit=2)
    assert [a.id for a in first.rows + second.rows + third.rows] == ids[::-1]
    assert third.next_before is None
    assert first.sources[ids[-1]] == [("Message kind", "broadcast"), ("Broadcast", "#7 Sitting well at work")]
    assert first.counts == {"new": 5, "contacted": 0, "booked": 0, "closed": 0}


# ----------------------------------------------------------------- status
def test_mark_booked_changes_the_db_and_writes_an_audit_event(signed_in, db, settings, clock):
    a = request_from(db, settings, clock, SERIES)
    page = signed_in.get(f"/admin/appointments/{a.id}").get_data(as_text=True)
    assert "Stiff lower back after long drives." in page and "+44 (0)7700 900123" in page
    assert "importance-of-exercise, step 03-weak-abs-busy-back" in page
    assert "may contact me about this request by the method I chose" in page
    assert 'value="booked"' not in page  # from new only contacted or closed are offered

    token = signed_in.token(f"/admin/appointments/{a.id}")
    r = signed_in.post(f"/admin/appointments/{a.id}/status",
                       {"seen": "new", "status": "contacted", "note": "left a voicemail"}, token=token)
    assert r.status_code == 303 and "done=Marked+contacted" in r.headers["Location"]
    booked = {"seen": "contacted", "status": "booked", "note": "Tue 10:30 with Sam"}
    r = signed_in.post(f"/admin/appointments/{a.id}/status", booked, token=token)
    assert r.status_code == 303

    stored = appointments.get_request(db, a.id)
    assert stored.status == "booked" and stored.booked_at == clock()
    assert [(n["status"], n["note"]) for n in stored.notes] == [
        ("contacted", "left a voicemail"), ("booked", "Tue 10:30 with Sam")]
    log = audits(db)
    assert [(e["action"], e["target"], e["detail"], e["who"]) for e in log] == [
        ("appointment_status", f"appointment {a.id}", "booked", EMAIL),
        ("appointment_status", f"appointment {a.id}", "contacted", EMAIL)]
    assert log[0]["ip"] == signed_in.ip

    # The same form sent again (a double click, a reload): nothing is applied twice.
    again = signed_in.post(f"/admin/appointments/{a.id}/status", booked, token=token)
    assert again.status_code == 303 and "already+booked" in again.headers["Location"]
    assert len(appointments.get_request(db, a.id).notes) == 2 and len(audits(db)) == 2
    shown = signed_in.get(again.headers["Location"]).get_data(as_text=True)
    assert "It was already booked; nothing changed." in shown and "Tue 10:30 with Sam" in shown
    assert "that is final" in shown


def test_a_bad_transition_is_refused_with_the_domains_message(signed_in, db, settings, clock):
    a = request_from(db, settings, clock)
    token = signed_in.token(f"/admin/appointments/{a.id}")
    r = signed_in.post(f"/admin/appointments/{a.id}/status",
                       {"seen": "new", "status": "booked", "note": "booked him in"}, token=token)
    assert r.status_code == 400
    html = r.get_data(as_text=True)
    assert f"appointment {a.id} is new: it cannot become booked" in html
    assert 'value="booked him in"' in html  # the note typed is kept in the form
    r = signed_in.post(f"/admin/appointments/{a.id}/status", {"seen": "new", "status": "lost"},
                       token=token)
    assert r.status_code == 400 and "status: &#39;lost&#39; is not one of" in r.get_data(as_text=True)
    assert status_of(db, a.id) == "new" and appointments.get_request(db, a.id).notes == ()
    assert audits(db) == []

    # Someone else closed it after this page was shown: the stale form changes nothing.
    appointments.mark(db, a.id, "closed", clock(), "duplicate")
    r = signed_in.post(f"/admin/appointments/{a.id}/status", {"seen": "new", "status": "contacted"},
                       token=token)
    assert r.status_code == 400 and "became closed after this page showed it as new" in r.get_data(as_text=True)
    assert status_of(db, a.id) == "closed" and len(appointments.get_request(db, a.id).notes) == 1


def test_mark_seen_applies_once(db, settings, clock):
    a = request_from(db, settings, clock)
    assert appointments.mark_seen(db, a.id, "new", "contacted", clock())[1] is True
    again, changed = appointments.mark_seen(db, a.id, "new", "contacted", clock())
    assert changed is False and len(again.notes) == 1
    with pytest.raises(TransitionError, match="became contacted"):
        appointments.mark_seen(db, a.id, "new", "closed", clock())
    with pytest.raises(InputError, match="seen: ''"):
        appointments.mark_seen(db, a.id, "", "contacted", clock())


# ----------------------------------------------------------------- guard
def test_without_a_session_every_appointment_page_goes_to_login(console, db, settings, clock):
    a = request_from(db, settings, clock)
    for path in ("/admin/appointments/", f"/admin/appointments/{a.id}"):
        r = console.get(path)
        assert r.status_code == 302 and "/admin/login" in r.headers["Location"]
    token = console.token()  # the login form's token is no use here
    for path in (f"/admin/appointments/{a.id}/status", "/admin/appointments/export"):
        r = console.post(path, {"seen": "new", "status": "contacted"}, token=token)
        assert r.status_code in (302, 403) and r.status_code != 200
    assert status_of(db, a.id) == "new"


def test_post_without_csrf_is_403(signed_in, db, settings, clock):
    a = request_from(db, settings, clock)
    r = signed_in.post(f"/admin/appointments/{a.id}/status", {"seen": "new", "status": "contacted"})
    assert r.status_code == 403
    r = signed_in.post(f"/admin/appointments/{a.id}/status", {"seen": "new", "status": "contacted"},
                       token="forged")
    assert r.status_code == 403
    assert signed_in.post("/admin/appointments/export", {}).status_code == 403
    assert status_of(db, a.id) == "new" and audits(db) == []


# ----------------------------------------------------------------- export, dashboard
def test_export_is_the_cli_export(signed_in, db, settings, clock, tmp_path, run):
    a = request_from(db, settings, clock, SERIES)
    request_from(db, settings, clock, name="Tom Okafor", reason="=HYPERLINK(\"x\")")
    appointments.mark(db, a.id, "contacted", clock(), "left a voicemail")
    r = signed_in.post("/admin/appointments/export", {}, token=signed_in.token("/admin/appointments/"))
    assert r.status_code == 200 and r.mimetype == "text/csv"
    assert 'filename="appointments-all.csv"' in r.headers["Content-Disposition"]

    out = tmp_path / "requests.csv"
    result = run("appointments", "export", "--out", out)
    assert result.exit_code == 0, result.output
    assert r.get_data() == out.read_bytes()
    rows = list(csv.DictReader(io.StringIO(r.get_data(as_text=True))))
    assert [row["name"] for row in rows] == ["Priya Shah", "Tom Okafor"]
    assert rows[1]["reason"].startswith("'=")  # neutralised for spreadsheets

    booked = signed_in.post("/admin/appointments/export", {"status": "contacted"},
                            token=signed_in.token("/admin/appointments/?status=contacted"))
    assert [row["id"] for row in csv.DictReader(io.StringIO(booked.get_data(as_text=True)))] == [str(a.id)]
    assert [e["target"] for e in audits(db)] == ["contacted", "all"]


def test_dashboard_counts_requests_over_7_and_30_days_and_the_new_ones(console, db, settings, clock):
    old = request_from(db, settings, clock)
    clock.advance(days=10)
    request_from(db, settings, clock)
    request_from(db, settings, clock)
    appointments.mark(db, old.id, "contacted", clock())
    assert appointments.recent_counts(db, clock(), (7, 30)) == ({7: 2, 30: 3}, 2)

    html = login(console).get("/admin/").get_data(as_text=True)
    row = html[html.index("Appointment requests</a>"):]
    assert row.split("</tr>")[0].count("<td>2</td>") == 1 and "<td>3</td>" in row.split("</tr>")[0]
    assert '<a href="/admin/appointments/?status=new">2 appointment requests waiting</a>' in html


# ----------------------------------------------------------------- in Chromium
def fits(pg) -> bool:
    return pg.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


@pytest.mark.browser
@pytest.mark.parametrize("width", [1280, 375])
def test_mark_a_request_as_booked_in_chromium(live, chromium, zone, width):
    ARTIFACTS.mkdir(exist_ok=True)
    admins.add_user(live.db, EMAIL, PASSWORD, utcnow())
    a = appointments.create_request(live.db, live.settings, GOOD, SERIES, utcnow())

    context = chromium.new_context(viewport={"width": width, "height": 900}, timezone_id=zone)
    context.set_default_timeout(15_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    try:
        pg.goto(live.url + "/admin/")
        pg.wait_for_url(re.compile(r".*/admin/login\?.*"))
        pg.fill("#email", EMAIL)
        pg.fill("#password", PASSWORD)
        pg.click("button[type=submit]")
        pg.wait_for_url("**/admin/")
        pg.click("#appointments-new a")  # "1 appointment request waiting"
        pg.wait_for_url(re.compile(r".*/admin/appointments/\?status=new$"))
        row = pg.locator("table.appointments tbody tr")
        assert row.count() == 1
        assert "Series: importance-of-exercise, step 03-weak-abs-busy-back" in row.inner_text()
        assert fits(pg)
        pg.screenshot(path=str(ARTIFACTS / f"admin-appointments-{width}.png"), full_page=True)

        pg.click("text=Priya Shah")
        pg.wait_for_url(f"**/admin/appointments/{a.id}")
        pg.check("#status-contacted")
        pg.fill("#note", "rang, she will call back")
        pg.click("form.status button[type=submit]")
        pg.wait_for_url(re.compile(rf".*/admin/appointments/{a.id}\?done=.*"))
        assert pg.inner_text("#status") == "contacted"
        pg.check("#status-booked")
        pg.fill("#note", "Tue 10:30 with Sam")
        pg.click("form.status button[type=submit]")
        pg.wait_for_url(re.compile(rf".*/admin/appointments/{a.id}\?done=Marked.*booked"))
        assert pg.inner_text("#status") == "booked"
        assert "Tue 10:30 with Sam" in pg.inner_text("table.notes")
        assert fits(pg)
        pg.screenshot(path=str(ARTIFACTS / f"admin-appointment-booked-{width}.png"), full_page=True)
    finally:
        context.close()
    assert appointments.get_request(live.db, a.id).status == "booked"
    assert [(r["action"], r["detail"]) for r in admins.audit_log(live.db, 2)] == [
        ("appointment_status", "booked"), ("appointment_status", "contacted")]
    assert errors == []
