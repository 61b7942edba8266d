"""Every message kind scores <= 0 in SpamAssassin, run offline (issue 10 item 10).

One message of every kind in the builder table (and both follow-up variants)
is produced the real way: the reader's path is driven through the domain
functions, the sender delivers to the live aiosmtpd sink, and the bytes the
sink received are piped into ``spamassassin -L -t`` (local tests only, no
network).  All messages go through one SpamAssassin run in --mbox mode:
starting SpamAssassin (compiling its rules) costs about 2 s, scoring one more
message about 0.25 s, so 13 messages take ~5 s instead of ~26 s one by one.

Skips without ``spamassassin`` locally; fails under ``CI=true`` (.ci/run
installs it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from campaigns import appointments, attendance, broadcasts, kinds, webinars
from campaigns.sender import send_due
from campaigns.worker import tick
from subscribers import lifecycle, optin

SPAMASSASSIN = shutil.which("spamassassin")
SCORE_RE = re.compile(rb"^X-Spam-Status: (?:Yes|No), score=(-?[0-9.]+)", re.MULTILINE)
REPORT_RE = re.compile(rb"^Content analysis details:.*?\n\n(.*?)(?:\n\n|\Z)", re.DOTALL | re.MULTILINE)

if SPAMASSASSIN is None:
    if os.environ.get("CI") == "true":
        pytest.fail("spamassassin is not installed (CI installs it in .ci/run)", pytrace=False)
    pytestmark = pytest.mark.skip(reason="spamassassin is not installed; `apt-get install spamassassin`")


def scores(messages_: list[bytes]) -> list[tuple[float, str]]:
    """SpamAssassin's score for each message, offline, and the rules that hit.

    The messages travel as an mbox (LF line ends, as a local delivery writes
    them; the sender's QP encoding already escapes body lines that start
    with "From ").
    """
    mbox = b"".join(
        b"From MAILER-DAEMON Thu Jan  1 00:00:00 1970\n" + m.replace(b"\r\n", b"\n").rstrip(b"\n") + b"\n\n"
        for m in messages_
    )
    r = subprocess.run([SPAMASSASSIN, "-L", "-t", "--mbox"], input=mbox, capture_output=True, timeout=300)
    out = re.split(rb"^From MAILER-DAEMON [^\n]*\n", r.stdout, flags=re.MULTILINE)[1:]
    assert len(out) == len(messages_), f"spamassassin returned {len(out)} messages: {r.stderr.decode()[-500:]}"
    results = []
    for one in out:
        m = SCORE_RE.search(one)
        assert m, f"no X-Spam-Status in spamassassin output: {r.stderr.decode()[-500:]}"
        report = REPORT_RE.search(one)
        results.append((float(m.group(1)), report.group(1).decode("utf-8", "replace") if report else ""))
    return results


def one_of_each_kind(db, settings, clock, smtp_server) -> dict[str, bytes]:
    """Drive one reader's path and return {label: received bytes} for every kind."""
    got: dict[str, bytes] = {}

    def deliver(label: str, addr: str, subject_word: str) -> None:
        send_due(db, settings, clock)
        tick(db, settings, clock())
        send_due(db, settings, clock)
        hits = [m for m in smtp_server.to(addr) if subject_word.lower() in m.message["Subject"].lower()]
        assert hits, f"{label}: nothing to {addr} with {subject_word!r} in the subject"
        got[label] = hits[-1].data

    now = clock()
    # confirm: a new signup
    optin.signup(db, settings, "sam@example.com", now, name="Sam Lee", timezone="Europe/London")
    deliver("confirm", "sam@example.com", "confirm")
    # series: an active reader gets part 1 from the reconciling pass
    alex = optin.signup(db, settings, "alex@example.com", now, name="Alex Ng").subscriber_id
    optin.activate_imported(db, settings, alex, now, "test fixture")
    tick(db, settings, clock())
    send_due(db, settings, clock)
    series = [m for m in smtp_server.to("alex@example.com") if "List-Id" in m.message and "series" in
              m.message["List-Id"]]
    assert series, "no series email"
    got["series"] = series[0].data
    # broadcast (a day later: the frequency cap allows one bulk email a day)
    clock.advance(hours=25)
    now = clock()
    cid = broadcasts.create(
        db, settings, now, subject="Clinic news for December",
        body_md="Our winter opening hours are now on the website.\n\nSee you soon.",
    )
    broadcasts.schedule_campaign(db, settings, cid, now, send_now=True)
    deliver("broadcast", "alex@example.com", "Clinic news")
    # broadcast_test: the admin's test send of the same campaign, to an address with no subscriber
    broadcasts.test_send(db, settings, cid, "manager@backinmotion-physio.co.uk", now)
    deliver("broadcast_test", "manager@backinmotion-physio.co.uk", "[Test]")
    # appointment_clinic / appointment_ack: a request from the hosted page
    appointments.create_request(db, settings, {
        "name": "Jo Park", "email": "jo@example.com", "phone": "", "contact_method": "email",
        "times": ["weekday-morning"], "reason": "Stiff lower back after long drives.",
        "consent": True, "newsletter": False,
    }, None, now)
    deliver("appointment_ack", "jo@example.com", "")
    deliver("appointment_clinic", settings.clinic_email or settings.from_addr, "Jo Park")
    # webinar: invite, register (confirm), reschedule (update), reminders, follow-ups, cancel
    start = now + timedelta(days=10)
    webinars.create_webinar(db, settings, {
        "slug": "spine-health", "title": "Spine Health Webinar",
        "description": "Live answers about recurring low back pain.",
        "start": start.strftime("%Y-%m-%d 18:00"), "timezone": "Europe/London",
        "join_url": "https://meet.clinic.example/spine",
    }, now)
    clock.advance(hours=25)
    now = clock()
    webinars.invite(db, settings, "spine-health", "all", now)
    deliver("webinar_invite", "alex@example.com", "invited")
    link = next(u for u in smtp_server.to("alex@example.com")[-1].followed_links(db, settings, now) if "/w/spine-health?t=" in u)
    token = parse_qs(urlsplit(link).query)["t"][0]
    webinars.register_with_token(db, settings, "spine-health", token, now)
    deliver("webinar_confirm", "alex@example.com", "registered")
    w = webinars.edit_webinar(db, settings, "spine-health", {"start": (start + timedelta(days=1)).strftime(
        "%Y-%m-%d 18:00")}, now).webinar
    deliver("webinar_update", "alex@example.com", "new time")
    # someone who left registers again: one verification email
    gus = optin.signup(db, settings, "gus@example.com", now, name="Gus").subscriber_id
    optin.activate_imported(db, settings, gus, now, "test fixture")
    lifecycle.unsubscribe(db, gus, now)
    assert webinars.register(db, settings, "spine-health", now, email="gus@example.com").status == "verify"
    deliver("webinar_verify", "gus@example.com", "confirm your place")
    clock.set(w.starts_at - timedelta(minutes=60))
    deliver("webinar_reminder", "alex@example.com", "starting")
    cole = webinars.register(db, settings, "spine-health", clock(), email="cole@example.com", name="Cole",
                             source="cli", consent_action="imported")
    assert cole.status == "registered"
    send_due(db, settings, clock)
    csv_path = settings.db + ".zoom.csv"
    with open(csv_path, "w", encoding="utf-8") as fh:
        fh.write("User Name (Original Name),User Email,Join Time,Leave Time,Duration (Minutes)\n"
                 f"Alex Ng,alex@example.com,{w.starts_at:%Y-%m-%d %H:%M:%S},"
                 f"{w.starts_at + timedelta(minutes=40):%Y-%m-%d %H:%M:%S},40\n")
    clock.set(w.starts_at + timedelta(minutes=70))
    attendance.import_attendance(db, settings, "spine-health", csv_path, clock())
    clock.set(w.starts_at + timedelta(minutes=60 + 121))
    deliver("webinar_followup (attended)", "alex@example.com", "thank you")
    deliver("webinar_followup (missed)", "cole@example.com", "missed you")
    webinars.create_webinar(db, settings, {
        "slug": "posture", "title": "Posture Clinic", "start": (clock() + timedelta(days=9)).strftime(
            "%Y-%m-%d 10:00"), "timezone": "America/New_York", "join_url": "https://meet.clinic.example/p",
        "capacity": 1,
    }, clock())
    webinars.register(db, settings, "posture", clock(), email="dee@example.com", source="cli",
                      consent_action="imported")
    waiting = webinars.register(db, settings, "posture", clock(), email="eve@example.com", source="cli",
                                consent_action="imported")
    assert waiting.status == "waitlisted"
    deliver("webinar_waitlist", "eve@example.com", "waitlist")
    webinars.cancel_webinar(db, settings, "posture", clock())
    deliver("webinar_cancel", "dee@example.com", "cancelled")
    return got


def test_every_kind_scores_at_most_zero(db, settings, clock, smtp_server):
    clock.set(datetime(2026, 11, 30, 9, 0, tzinfo=UTC))
    sent = one_of_each_kind(db, settings, clock, smtp_server)
    scored = {label.split(" ")[0] for label in sent}
    every = set(kinds.BUILDERS) | set(kinds.DIRECT_BUILDERS)
    assert scored == every - {"test_bulk"}, "a kind in the builder table is not scored"
    results = dict(zip(sent, scores(list(sent.values())), strict=True))
    over = {label: f"{s:+.1f}\n{report}" for label, (s, report) in results.items() if s > 0}
    assert not over, "\n\n".join(f"{label}: {text}" for label, text in over.items())
