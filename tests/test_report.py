"""The funnel report from a seeded event log: counts, conversions, and the HTML page."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

import cli
from campaigns import report
from funnel.db import iso, log_event, transaction
from funnel.errors import InputError

DAY = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
SERIES = "series:importance-of-exercise"


def seed(db):
    """10 sign up; 8 confirm; 8 get part 1, 6 part 2, 3 part 3; 5 invited, 4 register,
    3 attend, 2 click the offer.  Plus noise that must not count."""
    with transaction(db):
        for i in range(1, 12):
            db.execute(
                "INSERT INTO subscribers (id, email, email_hash, status, created_at, updated_at) "
                "VALUES (?, ?, ?, 'active', ?, ?)",
                (i, f"p{i}@example.com", f"h{i}", iso(DAY), iso(DAY)),
            )
        at = DAY
        for sid in range(1, 11):
            log_event(db, "subscribed", at, sid)
        log_event(db, "subscribed", datetime(2026, 10, 1, tzinfo=UTC), 11)  # before --since
        for sid in range(1, 9):
            log_event(db, "confirmed", at + timedelta(hours=1), sid)
        parts = {
            "01-therapy-before-fitness": range(1, 9),
            "02-tight-psoas-sleepy-glutes": range(1, 7),
            "03-anything": range(1, 4),
        }
        for key, sids in parts.items():
            for sid in sids:
                log_event(db, "sent", at + timedelta(days=1), sid, f"{SERIES}:{key}")
        log_event(
            db, "sent", at + timedelta(days=2), 1, f"{SERIES}:02-tight-psoas-sleepy-glutes"
        )  # resend
        # Part numbers: step 1 from the ledger, step 2 from the content, step 3 from the key.
        for sid in range(1, 9):
            db.execute(
                "INSERT INTO series_deliveries (subscriber_id, series, step_key, part, at) "
                "VALUES (?, 'importance-of-exercise', '01-therapy-before-fitness', 1, ?)",
                (sid, iso(at)),
            )
        log_event(db, "sent", at, 2, "webinar:spine-health:confirm")  # not a series part
        for sid in range(1, 6):
            log_event(db, "invited", at + timedelta(days=3), sid, "webinar:spine-health")
        for sid in range(1, 5):
            log_event(db, "registered", at + timedelta(days=4), sid, "webinar:spine-health")
        for sid in range(1, 4):
            log_event(db, "attended", at + timedelta(days=5), sid, "webinar:spine-health")
        for sid in (1, 2, 2):
            log_event(db, "clicked_offer", at + timedelta(days=6), sid, "webinar:spine-health")


def test_counts_and_conversions(db, settings):
    seed(db)
    rep = report.compute(db, settings, since="2026-11-01", until="2026-11-30")
    counts = [(s.label, s.count) for s in rep.steps]
    assert counts == [
        ("Signed up", 10),
        ("Confirmed", 8),
        ("The importance of exercise for low back pain: part 1", 8),
        ("The importance of exercise for low back pain: part 2", 6),
        ("The importance of exercise for low back pain: part 3", 3),
        ("Clicked a link in an email", 0),
        ("Invited to a webinar", 5),
        ("Registered", 4),
        ("Attended", 3),
        ("Clicked the offer", 2),
        ("Requested an appointment", 0),
        ("Booked", 0),
    ]
    rows = rep.rows()
    assert rows[0][1] is None and rows[1][1:] == (80.0, 80.0)
    assert rows[-3][1:] == (pytest.approx(200 / 3), 20.0)

    text = report.render_text(rep)
    assert text.splitlines()[0] == "Funnel report (2026-11-01 to 2026-11-30)"
    line = next(x for x in text.splitlines() if x.startswith("Registered"))
    assert line.split()[-3:] == ["4", "80.0%", "40.0%"]

    everything = report.compute(db, settings)
    assert everything.steps[0].count == 11 and everything.period == "all time"
    later = report.compute(db, settings, since="2026-11-07")
    assert [s.count for s in later.steps if s.label in ("Signed up", "Registered", "Attended")] == [
        0,
        0,
        3,
    ]
    with pytest.raises(InputError, match="--since: 'Nov 1' is not a date"):
        report.compute(db, settings, since="Nov 1")
    with pytest.raises(InputError, match="--since: 2026-12-01 is after --until 2026-11-01"):
        report.compute(db, settings, since="2026-12-01", until="2026-11-01")


def test_html_is_self_contained(db, settings, cli_env, tmp_path):
    seed(db)
    out = tmp_path / "report.html"
    result = CliRunner().invoke(
        cli.main, ["report", "--since", "2026-11-01", "--html", str(out)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "Clicked the offer" in result.output and "wrote" in result.output
    page = out.read_text(encoding="utf-8")
    assert "<svg" in page and page.count("<rect") == 12
    assert "Clicked the offer: 2" in page  # bar tooltip
    # Nothing is fetched: no scripts, stylesheets, images or fonts from anywhere.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert "url(" not in page


# ----------------------------------------------------------------- requests by email, the course
PART3 = "03-weak-abs-busy-back"
COURSE = "series:28-day-programme"
FORM = {"name": "Pat Reader", "phone": "", "contact_method": "email", "times": ["weekday-morning"],
        "reason": "", "consent": True}


def sent_row(db, rid: int, kind: str, ref: str, sid: int, campaign_id: int | None = None):
    db.execute(
        "INSERT INTO outbox (id, dedupe_key, kind, subscriber_id, campaign_id, ref, to_addr, "
        "message_id, status, due_at, created_at, updated_at, sent_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'sent', ?, ?, ?, ?)",
        (rid, f"k{rid}", kind, sid, campaign_id, ref, f"p{sid}@example.com", f"<m{rid}@x>",
         *[iso(DAY + timedelta(days=1))] * 4),
    )


def request(db, settings, email: str, at: datetime, **attr):
    from campaigns import appointments

    return appointments.create_request(db, settings, {**FORM, "email": email}, attr or None, at)


def test_requests_are_counted_by_the_email_that_earned_them(db, settings):
    seed(db)
    with transaction(db):
        db.execute(
            "INSERT INTO campaigns (id, kind, template, subject, status, created_at, updated_at) "
            "VALUES (7, 'broadcast', 'broadcast', 'Stretch with us', 'finished', ?, ?)",
            (iso(DAY), iso(DAY)),
        )
        for sid in (1, 2):
            sent_row(db, sid, "series", f"{SERIES}:{PART3}", sid)
        sent_row(db, 3, "broadcast", "campaign:7", 3, campaign_id=7)
        db.execute("INSERT INTO clicks (outbox_id, link_index, link, at, verdict) "
                   "VALUES (1, 0, 'https://x/appointment', ?, 'human')", (iso(DAY + timedelta(days=2)),))
    later = DAY + timedelta(days=2)
    part3 = {"kind": "series", "series": "importance-of-exercise", "step": PART3}
    request(db, settings, "p1@example.com", later, click_id=1, **part3)
    request(db, settings, "p4@example.com", later, **part3)  # its click row was purged since
    request(db, settings, "p3@example.com", later, kind="broadcast", broadcast_id=7)
    request(db, settings, "p5@example.com", later, kind="webinar_followup", webinar="spine-health")
    request(db, settings, "p6@example.com", later)  # came to the page on their own
    request(db, settings, "p8@example.com", DAY + timedelta(days=40), **part3)  # after --until

    rep = report.compute(db, settings, since="2026-11-01", until="2026-11-30")
    got = {(r.group, r.label): (r.sent, r.clicked, r.requests) for r in rep.click_rates}
    assert got == {
        ("series", "importance-of-exercise \u00b7 part 3"): (2, 1, 2),
        ("broadcast", "broadcast 7: Stretch with us"): (1, 0, 1),
        # Sent before the window (not in this log at all), yet it earned a request in it.
        ("webinar", "spine-health \u00b7 followup"): (0, 0, 1),
    }
    assert next(s.count for s in rep.steps if s.label == "Requested an appointment") == 5
    text = report.render_text(rep)
    line = next(x for x in text.splitlines() if x.startswith("importance-of-exercise \u00b7 part 3"))
    assert line.split()[-5:] == ["2", "1", "50.0%", "0", "2"]
    assert "REQUESTS" in text.splitlines()[text.splitlines().index(line) - 1]
    page = report.render_html(rep)
    assert "<th>Appointment requests</th>" in page
    assert "<td>importance-of-exercise \u00b7 part 3</td><td>2</td><td>1</td>" in page
    # Aggregates only: no address appears anywhere in the report.
    assert "@example.com" not in text + page


def test_the_course_ends_in_requested_an_appointment(db, settings):
    """Started -> day 7 -> day 14 -> day 28 -> requested, matched on the request's address."""
    with transaction(db):
        for i in range(1, 7):
            db.execute(
                "INSERT INTO subscribers (id, email, email_hash, status, created_at, updated_at) "
                "VALUES (?, ?, ?, 'active', ?, ?)",
                (i, f"p{i}@example.com", f"h{i}", iso(DAY), iso(DAY)),
            )
            log_event(db, "subscribed", DAY, i)
        for sid in (1, 2, 3, 4):
            log_event(db, "enrolled", DAY, sid, COURSE)
        for day, sids in ((7, (1, 2, 3)), (14, (1, 2)), (28, (1,))):
            key = f"{day:02d}-day"
            for sid in sids:
                log_event(db, "sent", DAY + timedelta(days=day), sid, f"{COURSE}:{key}")
                db.execute(
                    "INSERT INTO series_deliveries (subscriber_id, series, step_key, part, at) "
                    "VALUES (?, '28-day-programme', ?, ?, ?)", (sid, key, day, iso(DAY)),
                )  # fmt: skip
    later = DAY + timedelta(days=20)
    request(db, settings, "P2@Example.com", later)  # a course reader: any case of the address
    request(db, settings, "p3@example.com", later)
    request(db, settings, "p3@example.com", later + timedelta(hours=1))  # the same person again
    request(db, settings, "p5@example.com", later)  # never started the course
    request(db, settings, "p4@example.com", DAY + timedelta(days=60))  # after --until

    rep = report.compute(db, settings, since="2026-11-01", until="2026-11-30")
    rows = {s.label: (s.count, of_stage) for s, of_stage, _ in rep.rows()}
    course = [(label, v) for label, v in rows.items() if "28-day" in label]
    assert [label for label, _ in course] == [
        "Started: The 28-day programme",
        "The 28-day programme: day 7",
        "The 28-day programme: day 14",
        "The 28-day programme: day 28",
        "The 28-day programme: requested an appointment",
    ]
    # p2 reached day 14, p3 day 7: "requested" is a share of day 7, the stage holding both.
    assert rows["The 28-day programme: requested an appointment"] == (2, pytest.approx(200 / 3))
    assert rows["Requested an appointment"][0] == 4
    assert all(p <= 100.0 for _, a, b in rep.rows() for p in (a, b) if p is not None)
    text = report.render_text(rep)
    assert re.search(r"^The 28-day programme: requested an appointment\s+2\s+66\.7%", text, re.M)
    assert "Course \u00b7 requested" in report.render_html(rep)


def test_two_step_keys_of_one_part_count_each_person_once(db, settings):
    """A step renamed mid-series: readers got part 3 under either key, some under both."""
    with transaction(db):
        for i in range(1, 6):
            db.execute(
                "INSERT INTO subscribers (id, email, email_hash, status, created_at, updated_at) "
                "VALUES (?, ?, ?, 'active', ?, ?)",
                (i, f"p{i}@example.com", f"h{i}", iso(DAY), iso(DAY)),
            )
        for sid in (1, 2, 3):
            log_event(db, "sent", DAY, sid, f"{SERIES}:03-old-name")
        for sid in (3, 4, 5):
            log_event(db, "sent", DAY, sid, f"{SERIES}:03-new-name")
    counts = dict((s.label, s.count) for s in report.compute(db, settings).steps)
    assert counts["The importance of exercise for low back pain: part 3"] == 5
