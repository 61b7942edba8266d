"""Issue 12's conversion path in a real Chromium, against the real stack (see browser_support).

A reader who has part 3 of the exercise series opens it in the dev inbox, presses its
appointment button (a tracked ``/c/`` link to our own page), fills in the form on a
375 px viewport and sends it.  The clinic's notification and the acknowledgement arrive
in the dev inbox, and ``funnel report`` counts one human click and one request, both
attributed to part 3.
"""

# The fixtures are imported from browser_support, so their names reappear as parameters.
# ruff: noqa: F811
from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from browser_support import (  # noqa: F401 (fixtures)
    ARTIFACTS,
    chromium,
    daytime_zone,
    running_stack,
    wait_for,
)

from campaigns import report
from campaigns.series import find_series
from funnel import outbox
from funnel.db import iso, parse_iso, transaction, utcnow
from subscribers import lifecycle, optin, tokens

pytestmark = pytest.mark.browser

CLINIC = "desk@backinmotion-physio.co.uk"
SERIES = "importance-of-exercise"
STEP = "03-weak-abs-busy-back"
#: Headless Chromium says "HeadlessChrome" in its user agent, which scanners.toml rightly
#: lists; the reader's own browser is an ordinary Chrome on a phone.
PHONE_UA = ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 "
            "(KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36")


@pytest.fixture
def live(tmp_path):
    # No appointment_url: the button leads to our own /appointment page, as by default.
    with running_stack(tmp_path, appointment_url="", clinic_email=CLINIC) as stack:
        yield stack


@pytest.fixture
def phone(chromium):
    context = chromium.new_context(
        timezone_id=daytime_zone(), viewport={"width": 375, "height": 800},
        user_agent=PHONE_UA, is_mobile=True, has_touch=True,
    )  # fmt: skip
    context.set_default_timeout(15_000)
    pg = context.new_page()
    errors: list[str] = []  # from every tab of this browser
    context.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    pg.console_errors = errors
    try:
        yield pg
    finally:
        context.close()


def reader_with_part_3(live, email: str, name: str) -> tuple[int, int, dict]:
    """A confirmed reader whose part 3 was delivered an hour ago: (subscriber, outbox row, mail).

    They reach part 3 through the domain functions; the worker sends it to the dev
    inbox.  The row's ``sent_at`` is then moved back an hour: this reader opens the
    email later, not within scanners.toml's seconds after delivery.
    """
    s, now = live.settings, utcnow()
    sid = optin.signup(live.db, s, email, now, name=name, timezone=daytime_zone()).subscriber_id
    optin.confirm(live.db, s, tokens.confirm_token(s, sid, lifecycle.get(live.db, sid).confirm_nonce, now), now)
    with transaction(live.db):
        row_id = outbox.enqueue(
            live.db, s, dedupe_key=f"series:{SERIES}:{STEP}:{sid}", kind="series",
            subscriber_id=sid, to_addr=email, due_at=now, now=now, stream=f"series:{SERIES}",
            ref=f"series:{SERIES}:{STEP}", data={"series": SERIES, "step": STEP, "part": 3},
        )  # fmt: skip
    subject = find_series(s.content_path, SERIES).steps[2].subject
    mail = live.wait_for_mail(email, subject)
    sent_at = wait_for(
        lambda: live.db.execute(
            "SELECT sent_at FROM outbox WHERE id = ? AND status = 'sent'", (row_id,)
        ).fetchone(),
        what="part 3 marked sent",
    )[0]
    with transaction(live.db):
        live.db.execute("UPDATE outbox SET sent_at = ? WHERE id = ?",
                        (iso(parse_iso(sent_at) - timedelta(hours=1)), row_id))
    return sid, row_id, mail


def funnel_report_cli(settings) -> str:
    """``funnel report`` run as the admin runs it, against the stack's database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNNEL_")}
    env.update(
        FUNNEL_DB=settings.db, FUNNEL_SECRET_KEYS=",".join(settings.secret_keys),
        FUNNEL_BASE_URL=settings.base_url, FUNNEL_FROM=settings.from_addr,
        FUNNEL_SITE_NAME=settings.site_name, FUNNEL_POSTAL_ADDRESS=settings.postal_address,
        FUNNEL_SMTP_URL=",".join(settings.smtp_urls), FUNNEL_CLINIC_EMAIL=CLINIC,
        FUNNEL_CONFIG=str(Path(settings.db).with_name("absent.toml")),
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", "import cli; cli.main()", "report"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_reader_requests_an_appointment_from_part_3(live, phone):
    ARTIFACTS.mkdir(exist_ok=True)
    s = live.settings
    sid, row_id, mail = reader_with_part_3(live, "dana@example.com", "Dana Reyes")

    # Part 3 in the dev inbox; the reader presses its appointment button, which opens
    # our appointment page in a new tab, as a webmail does.
    inbox_tab = phone
    inbox_tab.goto(f"{live.url}/dev/inbox/{mail['id']}")
    button = inbox_tab.frame_locator("iframe.email").get_by_role("link", name="Book an assessment")
    assert "/c/" in button.get_attribute("href")  # a tracked link, not the page itself
    with inbox_tab.context.expect_page() as opened:
        button.click()
    pg = opened.value
    pg.wait_for_url("**/appointment")
    pg.wait_for_load_state("load")
    pg.screenshot(path=str(ARTIFACTS / "conversion-form-375.png"), full_page=True)
    assert pg.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    (verdict, link), = live.db.execute(
        "SELECT verdict, link FROM clicks WHERE outbox_id = ?", (row_id,)
    ).fetchall()
    assert (verdict, link) == ("human", f"{s.base_url}/appointment")

    # The form, filled in on the phone.
    pg.fill("#name", "Dana Reyes")
    pg.fill("#email", "dana@example.com")
    pg.fill("#phone", "07700 900456")
    pg.check("input[name=contact_method][value=email]")
    pg.check("input[name=times][value=weekday-morning]")
    pg.fill("#reason", "A sharp pain low in my back whenever I bend to garden.")
    pg.check("input[name=consent]")
    pg.wait_for_timeout(400)  # a person takes longer than min_form_seconds
    pg.click("button[type=submit]")
    pg.wait_for_url("**/appointment/thanks?m=email")
    assert "by email" in pg.inner_text("main")
    pg.screenshot(path=str(ARTIFACTS / "conversion-thanks-375.png"), full_page=True)
    assert inbox_tab.console_errors == []

    # The request carries the click's attribution: part 3 of the series.
    (attr,) = live.db.execute(
        "SELECT attr_click_id, attr_kind, attr_series, attr_step, attr_broadcast_id, attr_webinar "
        "FROM appointments WHERE email = 'dana@example.com'"
    ).fetchall()
    click_id = live.db.execute("SELECT id FROM clicks WHERE outbox_id = ?", (row_id,)).fetchone()[0]
    assert attr == (click_id, "series", SERIES, STEP, None, None)

    # Both emails arrive in the dev inbox; the clinic can answer the requester directly.
    ack = live.wait_for_mail("dana@example.com", "appointment request")
    clinic = live.wait_for_mail(CLINIC, "Appointment request from Dana Reyes")
    assert dict(live.message(clinic["id"]).headers)["Reply-To"] == "dana@example.com"
    assert "by email" in " ".join(live.message(ack["id"]).text.split())
    pg.goto(f"{live.url}/dev/inbox")
    inbox = pg.inner_text("table.inbox")
    assert "Appointment request from Dana Reyes" in inbox
    pg.screenshot(path=str(ARTIFACTS / "conversion-inbox-375.png"), full_page=True)

    # The report: one click and one request, both on part 3.
    rep = report.compute(live.db, s, now=utcnow())
    steps = {st.label: st.count for st in rep.steps}
    assert steps["Clicked a link in an email"] == 1
    assert steps["Requested an appointment"] == 1
    (part3,) = [r for r in rep.click_rates if r.label == f"{SERIES} \u00b7 part 3"]
    assert (part3.sent, part3.clicked, part3.requests) == (1, 1, 1)
    assert sum(r.requests for r in rep.click_rates) == 1
    for text in (report.render_text(rep), funnel_report_cli(s)):
        assert re.search(r"^Clicked a link in an email\s+1\s", text, re.M), text
        assert re.search(r"^Requested an appointment\s+1\s", text, re.M), text
        assert re.search(rf"^{SERIES} \u00b7 part 3\s+1\s+1\s+100\.0%\s+0\s+1$", text, re.M), text
