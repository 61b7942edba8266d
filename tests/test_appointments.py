"""Appointment requests: the form (Flask test client and domain), the two emails as the live
SMTP server receives them, the CLI, erase, retention, the report and the default CTA link."""

from __future__ import annotations

import csv
import io
import re

import pytest
from browser_support import ARTIFACTS, chromium, live, page, zone  # noqa: F401 (fixtures)
from conftest import APPOINTMENT_REQUEST

import web
from campaigns import appointments, check, render, report, worker
from campaigns.sender import send_due
from funnel.db import connect
from funnel.errors import InputError, NotFound, TransitionError
from subscribers import io as sub_io
from subscribers import lifecycle

CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')
CLINIC = "desk@backinmotion-physio.co.uk"
GOOD = APPOINTMENT_REQUEST


@pytest.fixture
def s(settings):
    return settings.replace(clinic_email=CLINIC)


class Site:
    def __init__(self, app, clock):
        self.app, self.client, self.clock = app, app.test_client(), clock

    def token(self, path="/appointment") -> str:
        r = self.client.get(path)
        assert r.status_code == 200
        return CSRF_RE.search(r.get_data(as_text=True)).group(1)

    def request(self, wait=3, environ_base=None, **fields):
        data = {"csrf": self.token(), "website": "", **form(**fields)}
        self.clock.advance(seconds=wait)
        return self.client.post("/appointment", data=data, environ_base=environ_base or {})


def form(**fields) -> dict:
    """GOOD as the browser sends it (checkboxes as 'yes'), with ``fields`` changed."""
    values = {**GOOD, **fields}
    out = {k: v for k, v in values.items() if k not in ("consent", "newsletter") and v is not None}
    for box in ("consent", "newsletter"):
        if values.get(box) is True:
            out[box] = "yes"
    return out


@pytest.fixture
def site(s, clock):
    app = web.create_app(s, clock=clock)
    yield Site(app, clock)
    app.extensions["funnel"].close()


def text(r) -> str:
    return r.get_data(as_text=True)


def counts(db) -> tuple[int, int, int]:
    return tuple(
        db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
        for t in ("appointments", "outbox", "subscribers")
    )


def deliver(db, s, clock):
    """What one worker loop does: a tick, then send what is due."""
    worker.tick(db, s, clock())
    return send_due(db, s, clock)


# ----------------------------------------------------------------- the page
def test_form_page_has_every_field_and_no_inline_code(site, s):
    r = site.client.get("/appointment")
    html = text(r)
    assert r.status_code == 200
    for name in ("name", "email", "phone", "reason", "consent", "newsletter", "website"):
        assert f'name="{name}"' in html, name
    assert html.count('name="contact_method"') == 3 and html.count('name="times"') == 4
    assert appointments.contact_consent(s) in html and s.consent_text in html
    newsletter = re.search(r'<input type="checkbox" name="newsletter"[^>]*>', html).group(0)
    assert "checked" not in newsletter  # the newsletter box starts unticked
    consent = re.search(r'<input type="checkbox" name="consent"[^>]*>', html).group(0)
    assert "required" in consent
    assert 'class="hp" aria-hidden="true"' in html
    assert "<script" not in html and "style=" not in html  # CSP: no inline script or style
    assert 'name="viewport" content="width=device-width, initial-scale=1"' in html


def test_valid_request_is_stored_and_both_emails_arrive(site, s, clock, smtp_server):
    r = site.request()
    assert r.status_code == 303 and r.headers["Location"] == "/appointment/thanks?m=text"
    thanks = text(site.client.get(r.headers["Location"]))
    assert "within one working day by a text message" in thanks
    db = connect(s.db)
    (a,) = appointments.list_requests(db)
    assert (a.status, a.name, a.email, a.phone, a.contact_method, a.times, a.newsletter) == (
        "new", "Priya Shah", "priya@example.com", "+44 (0)7700 900123", "text",
        ("weekday-morning", "saturday-morning"), False,
    )  # fmt: skip
    assert a.source == "web" and a.attribution == {}
    assert lifecycle.find(db, "priya@example.com") is None  # no newsletter box: no subscriber
    assert smtp_server.messages == []  # queued only; the worker sends

    summary = deliver(db, s, clock)
    assert summary.sent == 2, summary.errors
    (clinic,) = smtp_server.to(CLINIC)
    m = clinic.message
    assert m["To"] == f"{s.site_name} <{CLINIC}>"
    assert m["Reply-To"] == "priya@example.com"
    assert m["From"] == f"{s.site_name} <{s.from_addr}>"
    assert m["Subject"] == "Appointment request from Priya Shah (a text message)"
    assert m["List-Unsubscribe"] is None and m["List-Id"] is None  # transactional
    body = clinic.part("plain")
    for value in ("+44 (0)7700 900123", "Weekday mornings, Saturday mornings",
                  "Stiff lower back after long drives.", "a text message",
                  f"funnel appointments mark {a.id} contacted", s.postal_address):  # fmt: skip
        assert value in body, value

    (ack,) = smtp_server.to("priya@example.com")
    m = ack.message
    assert m["To"] == "Priya Shah <priya@example.com>" and m["Reply-To"] == CLINIC
    assert m["From"] == f"{s.site_name} <{s.from_addr}>"
    assert m["List-Unsubscribe"] is None
    body = " ".join(ack.part("plain").split())
    assert "We will contact you within one working day by a text message (+44 (0)7700 900123)" in body
    assert "Hi Priya," in body and s.postal_address in body and "Unsubscribe" not in body
    assert "a text message" in ack.part("html")


def test_user_text_stays_text_in_the_emails(site, s, clock, smtp_server):
    evil = "{{7*7}} <script>alert(1)</script> [link](https://evil.example)"
    assert site.request(reason=evil, contact_method="email").status_code == 303
    db = connect(s.db)
    assert deliver(db, s, clock).sent == 2
    for msg in smtp_server.messages:
        html = msg.part("html")
        assert "<script>alert" not in html and "&lt;script&gt;" in html
        assert 'href="https://evil.example"' not in html and "{{7*7}}" in html
        assert "49" not in msg.part("plain")


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"email": "", "phone": ""}, "Please give an email address or a phone number"),
        ({"reason": "x" * 1001}, "The reason is 1,001 characters long"),
        ({"phone": "0770 CALL ME"}, "A phone number may only contain digits"),
        ({"contact_method": "fax"}, "&#39;fax&#39; is not a contact method we offer"),
        ({"consent": None}, "Please tick the consent box"),
        ({"phone": "", "contact_method": "phone"}, "You chose a phone call; please give a phone number"),
        ({"times": ["midnight"]}, "is not one of the preferred times offered"),
        ({"name": ""}, "Please tell us your name"),
    ],
)
def test_bad_input_gets_the_form_again_naming_the_field_and_stores_nothing(site, s, fields, says):
    db = connect(s.db)
    before = list(db.conn.iterdump())
    r = site.request(**fields)
    html = text(r)
    assert r.status_code == 400 and says in html, html
    assert '<p class="error" role="alert">' in html and "<form" in html
    assert 'value="Priya Shah"' in html or fields.get("name") == ""  # what they typed stays
    assert counts(db) == (0, 0, 0)
    assert list(db.conn.iterdump()) == before


def test_domain_rejects_bad_input_naming_the_field(db, s, clock):
    cases = {
        "email": {"email": "", "phone": ""},
        "reason": {"reason": "y" * 1001},
        "phone": {"phone": "07700 9OO123"},
        "contact_method": {"contact_method": "pigeon"},
        "consent": {"consent": False},
    }
    for field, change in cases.items():
        with pytest.raises(InputError, match=rf"^{field}: "):
            appointments.create_request(db, s, {**GOOD, **change}, None, clock())
    assert counts(db) == (0, 0, 0)
    ok = appointments.create_request(db, s, {**GOOD, "reason": "z" * 1000}, None, clock())
    assert len(ok.reason) == 1000


def test_bots_forged_forms_and_floods_store_nothing(tmp_path, s, clock):
    app = web.create_app(s.replace(signup_rate_per_minute=2), clock=clock)
    site = Site(app, clock)
    db = connect(s.db)
    bot = site.request(website="http://spam.example")
    fast = site.request(wait=0.5)
    for r in (bot, fast):  # the same page a person gets, and nothing stored
        assert (r.status_code, r.headers["Location"]) == (303, "/appointment/thanks")
    assert counts(db) == (0, 0, 0)
    no_token = site.client.post("/appointment", data=form())
    forged = site.client.post("/appointment", data={**form(), "csrf": site.token()[:-4] + "AAAA"})
    other_site = site.client.post(
        "/appointment", data={**form(), "csrf": site.token()}, headers={"Origin": "https://evil.example"}
    )
    assert [no_token.status_code, forged.status_code, other_site.status_code] == [403, 403, 403]
    assert counts(db) == (0, 0, 0)
    limited = site.request()  # third POST from this address in a minute (limit 2)
    assert limited.status_code == 429 and "wait a minute" in text(limited)
    assert counts(db) == (0, 0, 0)
    clock.advance(seconds=61)
    assert site.request().status_code == 303
    assert counts(db)[0] == 1


def test_newsletter_box_starts_double_opt_in_and_unticked_leaves_no_subscriber(
    site, s, clock, smtp_server
):
    assert site.request(email="keen@example.com", newsletter=True).status_code == 303
    assert site.request(email="just-once@example.com", newsletter=None).status_code == 303
    db = connect(s.db)
    keen = lifecycle.find(db, "keen@example.com")
    assert keen.status == "pending" and keen.source == "appointment"
    assert lifecycle.find(db, "just-once@example.com") is None
    assert deliver(db, s, clock).sent == 5  # 2 x (clinic + ack) + one confirmation
    (confirm,) = [m for m in smtp_server.to("keen@example.com") if "confirm" in m.message["Subject"]]
    assert "/confirm/" in confirm.part("plain")
    assert not [m for m in smtp_server.to("just-once@example.com") if "confirm" in m.message["Subject"]]


def test_attribution_is_stored_as_given(db, s, clock):
    attr = {"attr_click_id": 41, "attr_kind": "series", "attr_series": "importance-of-exercise",
            "attr_step": "03-weak-abs-busy-back", "attr_broadcast_id": None, "attr_webinar": None}  # fmt: skip
    a = appointments.create_request(db, s, GOOD, attr, clock())
    row = db.execute(
        "SELECT attr_click_id, attr_kind, attr_series, attr_step, attr_broadcast_id, attr_webinar "
        "FROM appointments WHERE id = ?", (a.id,),
    ).fetchone()  # fmt: skip
    assert row == (41, "series", "importance-of-exercise", "03-weak-abs-busy-back", None, None)
    b = appointments.create_request(db, s, GOOD, {"kind": "broadcast", "broadcast_id": 7}, clock())
    assert b.attribution == {"attr_kind": "broadcast", "attr_broadcast_id": 7}
    with pytest.raises(InputError, match="attribution: unknown key 'colour'"):
        appointments.create_request(db, s, GOOD, {"colour": "red"}, clock())


def test_phone_only_request_and_no_clinic_email(db, settings, clock, smtp_server):
    assert "FUNNEL_CLINIC_EMAIL: not set" in " ".join(check.warnings(settings, clock()))
    fields = {**GOOD, "email": "", "contact_method": "phone"}
    appointments.create_request(db, settings, fields, None, clock())
    assert deliver(db, settings, clock).sent == 1  # no address, no acknowledgement
    (msg,) = smtp_server.messages
    assert msg.rcpt_tos == [settings.from_addr]  # no clinic_email: the From address
    assert msg.message["Reply-To"] is None
    assert "a phone call" in msg.part("plain")


# ----------------------------------------------------------------- status, CLI
def test_status_machine(db, s, clock):
    a = appointments.create_request(db, s, GOOD, None, clock())
    b = appointments.create_request(db, s, GOOD, None, clock())
    appointments.mark(db, a.id, "contacted", clock.advance(hours=2), "left a voicemail")
    done = appointments.mark(db, a.id, "booked", clock.advance(hours=1), "Tue 10:30")
    assert done.status == "booked" and done.booked_at == clock()
    assert [(n["status"], n["note"]) for n in done.notes] == [
        ("contacted", "left a voicemail"), ("booked", "Tue 10:30"),
    ]
    assert appointments.mark(db, b.id, "closed", clock()).status == "closed"
    with pytest.raises(TransitionError, match=f"appointment {a.id} is booked: it cannot become closed"):
        appointments.mark(db, a.id, "closed", clock())
    with pytest.raises(TransitionError, match="cannot become booked \\(from new it can become contacted or closed\\)"):
        appointments.mark(db, appointments.create_request(db, s, GOOD, None, clock()).id, "booked", clock())
    with pytest.raises(NotFound, match="appointment 99 does not exist"):
        appointments.mark(db, 99, "contacted", clock())


def test_cli_list_show_mark_export(run, db, s, clock, tmp_path):
    first = appointments.create_request(db, s, GOOD, {"attr_kind": "series", "attr_step": "03"}, clock())
    second = appointments.create_request(
        db, s, {**GOOD, "name": "=HYPERLINK(\"x\")", "email": "", "contact_method": "phone"}, None,
        clock.advance(minutes=5),
    )  # fmt: skip
    r = run("appointments", "list")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split()[0] == str(second.id) and lines[1].split()[0] == str(first.id)
    assert "+44 (0)7700 900123" in lines[0] and lines[-1] == "2 shown"
    r = run("appointments", "mark", first.id, "contacted", "--note", "rang, no answer")
    assert r.exit_code == 0 and r.output == f"appointment {first.id}: contacted\n"
    assert run("appointments", "list", "--status", "contacted").output.splitlines()[-1] == "1 shown"
    show = run("appointments", "show", first.id).output
    for part in ("status: contacted", "name: Priya Shah", "contact by: a text message",
                 "came from: kind=series, step=03", "Stiff lower back", "contacted: rang, no answer"):  # fmt: skip
        assert part in show, part
    bad = run("appointments", "mark", first.id, "contacted")
    assert bad.exit_code == 1
    assert f"appointment {first.id} is contacted: it cannot become contacted" in bad.output
    assert "Traceback" not in bad.output
    missing = run("appointments", "show", 999)
    assert missing.exit_code == 1 and "appointment 999 does not exist" in missing.output
    assert run("appointments", "mark", first.id, "new").exit_code == 2  # not a choice
    out = tmp_path / "requests.csv"
    r = run("appointments", "export", "--out", out)
    assert r.exit_code == 0 and "exported 2 appointment request(s)" in r.output
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert [row["id"] for row in rows] == [str(first.id), str(second.id)]
    assert rows[0]["attr_kind"] == "series" and "contacted: rang, no answer" in rows[0]["notes"]
    assert rows[1]["name"].startswith("'=")  # a spreadsheet formula is neutralised
    for name in ("list", "show", "mark", "export", "webhook-secret"):
        assert "Example:" in run("appointments", name, "--help").output


def test_snippet_posts_to_the_embed_page_which_stores_nothing(run, site, s):
    r = run("form", "snippet", "--appointment")
    assert r.exit_code == 0
    assert f'action="{s.url("/appointment/embed")}"' in r.output
    assert 'name="contact_method"' in r.output and 'name="website"' in r.output
    assert "/subscribe/embed" in run("form", "snippet").output  # the signup snippet is unchanged
    db = connect(s.db)
    shown = site.client.post("/appointment/embed", data=form())
    html = text(shown)
    assert shown.status_code == 200 and 'value="Priya Shah"' in html and 'name="csrf"' in html
    assert counts(db) == (0, 0, 0)
    token = CSRF_RE.search(html).group(1)
    site.clock.advance(seconds=1.5)
    done = site.client.post("/appointment", data={**form(), "csrf": token})
    assert done.status_code == 303
    (a,) = appointments.list_requests(db)
    assert a.source == "embed"


# ----------------------------------------------------------------- erase, retention
def test_erase_removes_requests_and_their_addresses(db, s, clock, run):
    appointments.create_request(db, s, GOOD, None, clock())
    appointments.create_request(db, s, {**GOOD, "email": "other@example.com"}, None, clock())
    r = run("subscribers", "erase", "Priya@example.com", "--yes")  # not a subscriber: still erased
    assert r.exit_code == 0, r.output
    assert "erased (appointment requests only); the address is suppressed" in r.output
    assert [a.email for a in appointments.list_requests(db)] == ["other@example.com"]
    assert db.execute(
        "SELECT COUNT(*) FROM outbox WHERE to_addr = 'priya@example.com' OR "
        "(ref = 'appointment:1' AND status != 'cancelled')"
    ).fetchone() == (0,)
    assert lifecycle.is_suppressed(db, "priya@example.com")
    # A subscriber with requests: both go.
    appointments.create_request(db, s, {**GOOD, "email": "both@example.com", "newsletter": True}, None, clock())
    sub_io.erase(db, "both@example.com", clock())
    assert [a.email for a in appointments.list_requests(db)] == ["other@example.com"]


def test_old_requests_are_purged_by_the_tick(db, s, clock):
    old = appointments.create_request(db, s, GOOD, None, clock())
    clock.advance(days=200)
    recent = appointments.create_request(db, s, GOOD, None, clock())
    clock.advance(days=166)
    ticked = worker.tick(db, s, clock())
    assert ticked["appointments_purged"] == 1
    assert [a.id for a in appointments.list_requests(db)] == [recent.id]
    assert db.execute(
        "SELECT COUNT(*) FROM outbox WHERE ref = ? AND to_addr IS NOT NULL", (f"appointment:{old.id}",)
    ).fetchone() == (0,)
    assert "old appointment request(s) purged" in worker.tick_line(ticked)


# ----------------------------------------------------------------- report, CTA
def test_report_counts_requests_and_bookings(db, s, clock):
    a = appointments.create_request(db, s, GOOD, None, clock())
    appointments.create_request(db, s, {**GOOD, "email": "", "contact_method": "phone"}, None, clock())
    appointments.mark(db, a.id, "contacted", clock())
    appointments.mark(db, a.id, "booked", clock())
    rep = report.compute(db, s)
    steps = {step.label: step.count for step in rep.steps}
    assert steps["Requested an appointment"] == 2 and steps["Booked"] == 1
    assert [st.label for st in rep.steps][-2:] == ["Requested an appointment", "Booked"]


def test_bundled_part_3_links_its_appointment_button_to_our_page(tmp_path, smtp_server, clock, mailings):
    from funnel import outbox
    from funnel.settings import test_settings

    bare = test_settings(tmp_path, smtp_urls=(smtp_server.url,), appointment_url="")
    sid = mailings.subscriber("sam@example.com", "Sam Lee")
    step = "03-weak-abs-busy-back"
    outbox.enqueue(
        mailings.db, bare, dedupe_key=f"series:importance-of-exercise:{step}:{sid}", kind="series",
        subscriber_id=sid, to_addr="sam@example.com", due_at=clock(), now=clock(),
        stream="series:importance-of-exercise", ref=f"series:importance-of-exercise:{step}",
        data={"series": "importance-of-exercise", "step": step, "part": 3},
    )  # fmt: skip
    summary = send_due(mailings.db, bare, clock)
    assert summary.sent == 1, summary.errors
    (msg,) = smtp_server.messages
    # The button goes through a tracked /c/ link that leads to our own page.
    assert f"{bare.base_url}/appointment" in msg.followed_links(mailings.db, bare, clock())


def test_appointment_cta_defaults_to_the_hosted_page(settings, clock):
    bare = settings.replace(appointment_url="")
    compiled = render.compile_email(
        bare, "series", subject="Part 3", body_md="Hello.", ctas=[{"kind": "appointment"}],
        extra={"part": 3, "series_title": "The importance of exercise"},
    )  # fmt: skip
    html = compiled.render(render.sample_recipient(bare)).html
    assert f'href="{bare.base_url}/appointment"' in html
    assert not [p for p in check.content_problems(bare) if "appointment" in p]
    own = settings.replace(appointment_url="https://book.example.org/clinic")
    html = render.compile_email(
        own, "series", subject="Part 3", body_md="Hello.", ctas=[{"kind": "appointment"}],
    ).render(render.sample_recipient(own)).html
    assert 'href="https://book.example.org/clinic"' in html


@pytest.mark.parametrize("kind", ["appointment_clinic", "appointment_ack"])
def test_appointment_kinds_compile_strict_without_subscriber_links(s, kind):
    compiled = render.compile_email(s, kind, subject=f"A {kind} email", strict=True)
    sample = {**render.sample_recipient(s, kind), "unsubscribe_url": "", "preferences_url": "", "view_url": ""}
    out = compiled.render(sample)
    for part in (out.html, out.text):
        assert s.postal_address in part and s.site_name in part
        assert "Unsubscribe" not in part and "/u/" not in part and "/p/" not in part
        assert render.MEDICAL_NOTE not in " ".join(part.split())
        assert "Weekday mornings, Saturday mornings" in part
    assert "{{" not in out.html and not re.search(r"zq[0-9a-f]{10}x\d+qz", out.html + out.text)


@pytest.mark.browser
def test_phone_sized_form_in_chromium_sends_both_emails(live, page):  # noqa: F811
    """At 375 px: the form fits, a mistake is shown in place, and a request reaches the dev inbox."""
    s = live.settings
    pg = page
    pg.set_viewport_size({"width": 375, "height": 800})
    pg.goto(live.url + "/appointment")
    assert pg.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    pg.fill("#name", "Robin Hale")
    pg.fill("#email", "robin@example.com")
    pg.fill("#phone", "0770 CALL ME")  # letters: the server says which field is wrong
    pg.check("input[name=contact_method][value=email]")
    pg.check("input[name=times][value=weekday-evening]")
    pg.fill("#reason", "Back spasms when I lift my toddler.")
    pg.check("input[name=consent]")
    pg.evaluate("document.querySelector('#phone').removeAttribute('pattern')")
    pg.wait_for_timeout(400)  # the timing floor is 0.3 s in this stack
    pg.click("button[type=submit]")
    assert "A phone number may only contain digits" in pg.inner_text("p.error")
    assert pg.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert pg.input_value("#name") == "Robin Hale"  # what they typed is still there
    pg.screenshot(path=str(ARTIFACTS / "appointment-form-375.png"), full_page=True)
    pg.fill("#phone", "07700 900123")
    pg.wait_for_timeout(400)
    pg.click("button[type=submit]")
    pg.wait_for_url("**/appointment/thanks?m=email")
    assert "by email" in pg.inner_text("main")
    pg.screenshot(path=str(ARTIFACTS / "appointment-375.png"), full_page=True)
    ack = live.wait_for_mail("robin@example.com", "appointment request")
    clinic = live.wait_for_mail(s.from_addr, "Appointment request from Robin Hale")
    assert ack and clinic
    assert [e for e in pg.console_errors if "status of 400" not in e] == []  # 400: the mistake
