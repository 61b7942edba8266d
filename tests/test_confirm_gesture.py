"""Confirmation needs a person (issue 10 item 6).

A scanner that runs JavaScript used to confirm subscriptions: the confirm page
submitted its own form.  Now only a press of its one button does.

* ``test_headless_chromium_loading_the_confirm_page_changes_nothing``: a real
  ``funnel serve`` (subprocess, temp database, dev settings, the real clock)
  and ``/usr/bin/chromium --headless --dump-dom`` on the confirm URL taken from
  the confirmation email the live SMTP sink received, and on an offer link:
  the reader stays pending, no consent is recorded, no click is counted.
* ``test_pressing_the_button_confirms`` (playwright): loading the page, even
  waiting, changes nothing; clicking the button confirms.

Without Chromium these skip, except under CI=true, where they fail.
"""

# ruff: noqa: F811  (fixtures imported from browser_support reappear as parameters)
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from browser_support import CHROMIUM, chromium, live, wait_for  # noqa: F401 (fixtures)
from conftest import REPO, free_port

from campaigns import webinars
from campaigns.sender import send_due
from funnel.db import connect, utcnow
from funnel.settings import test_settings
from subscribers import lifecycle, optin

pytestmark = pytest.mark.browser


def need_chromium() -> None:
    if not CHROMIUM.exists():
        message = f"this test needs Debian's Chromium at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def consent_actions(db, sid: int) -> list[str]:
    return [a for (a,) in db.execute("SELECT action FROM consent WHERE subscriber_id = ?", (sid,))]


@pytest.fixture
def served(tmp_path, smtp_server, real_clock):
    """`funnel serve` on a free port, as a subprocess, with dev settings and a temp database."""
    port = free_port()
    settings = test_settings(
        tmp_path, dev=True, base_url=f"http://127.0.0.1:{port}", smtp_urls=(smtp_server.url,)
    )
    connect(settings.db, migrate=True).close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNNEL_")}
    env.update({
        "FUNNEL_DEV": "1",
        "FUNNEL_DB": settings.db,
        "FUNNEL_SECRET_KEYS": ",".join(settings.secret_keys),
        "FUNNEL_BASE_URL": settings.base_url,
        "FUNNEL_FROM": settings.from_addr,
        "FUNNEL_SITE_NAME": settings.site_name,
        "FUNNEL_POSTAL_ADDRESS": settings.postal_address,
        "FUNNEL_SMTP_URL": smtp_server.url,
        "FUNNEL_APPOINTMENT_URL": settings.appointment_url,
        "FUNNEL_CONFIG": str(tmp_path / "absent.toml"),
        # The site alone, no worker: /healthz should not wait for a worker tick.
        "FUNNEL_HEALTHZ_WORKER_SECONDS": "0",
    })  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--port", str(port), "--threads", "4"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip

    def up():
        try:
            with urllib.request.urlopen(f"{settings.base_url}/healthz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return proc.poll() is not None  # it died: stop waiting and report below

    try:
        wait_for(up, 30, "funnel serve to answer /healthz")
        assert proc.poll() is None, proc.stdout.read()
        yield settings
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def dump_dom(url: str, profile: Path) -> str:
    """What a scanner with a real browser does: load the page, run its scripts, print the DOM."""
    result = subprocess.run(
        [
            str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
            f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", url,
        ],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_headless_chromium_loading_the_confirm_page_changes_nothing(served, smtp_server, tmp_path):
    need_chromium()
    settings = served
    db = connect(settings.db)
    sid = optin.signup(db, settings, "scanned@example.com", utcnow(), name="Sky").subscriber_id
    send_due(db, settings, utcnow)
    (mail,) = smtp_server.to("scanned@example.com")
    confirm_url = next(u for u in mail.links() if "/confirm/" in u)
    assert confirm_url.startswith(settings.base_url)
    before = list(db.conn.iterdump())

    dom = dump_dom(confirm_url, tmp_path / "profile")
    time.sleep(1)  # anything the browser might have submitted has landed
    assert lifecycle.get(db, sid).status == "pending"
    assert consent_actions(db, sid) == ["requested"]
    assert list(db.conn.iterdump()) == before
    # Chromium really loaded the page (and ran it; it still shows the button).
    assert "Confirm my subscription" in dom and 'class="big"' in dom

    # The webinar offer interstitial: loading it counts no click.
    now = utcnow()
    w = webinars.create_webinar(db, settings, {
        "slug": "spine-health", "title": "Spine Health Webinar", "description": "Live answers.",
        "start": (now.replace(year=now.year + 1)).strftime("%Y-%m-%d 18:00"),
        "timezone": "Europe/London", "join_url": "https://meet.clinic.example/spine",
    }, now)  # fmt: skip
    offer = settings.url(f"/o/{webinars.offer_token(settings, w.slug, sid, now)}")
    dom = dump_dom(offer, tmp_path / "profile2")
    assert "Thank you for joining Spine Health Webinar" in dom
    time.sleep(1)
    clicks = db.execute("SELECT COUNT(*) FROM events WHERE kind = 'clicked_offer'").fetchone()[0]
    assert clicks == 0
    db.close()


def test_pressing_the_button_confirms(live, chromium):
    s = live.settings
    sid = optin.signup(live.db, s, "presser@example.com", utcnow(), name="Pat").subscriber_id
    mail = live.wait_for_mail("presser@example.com", "confirm")
    confirm_url = next(u for u in live.message(mail["id"]).links if "/confirm/" in u)
    context = chromium.new_context(viewport={"width": 375, "height": 700})  # a phone
    try:
        page = context.new_page()
        page.goto(confirm_url)
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(1000)  # a script would have submitted by now
        assert lifecycle.get(live.db, sid).status == "pending"
        button = page.locator("button.big")
        box = button.bounding_box()
        assert box["width"] >= 300 and box["height"] >= 44  # one easy tap
        button.click()
        page.wait_for_url("**/confirmed")
        assert "You're in" in page.inner_text("h1")
    finally:
        context.close()
    assert lifecycle.get(live.db, sid).status == "active"
    assert consent_actions(live.db, sid) == ["requested", "confirmed"]
