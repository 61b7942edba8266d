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
        ("Invited to a webinar", 5),
        ("Registered", 4),
        ("Attended", 3),
        ("Clicked the offer", 2),
    ]
    rows = rep.rows()
    assert rows[0][1] is None and rows[1][1:] == (80.0, 80.0)
    assert rows[-1][1:] == (pytest.approx(200 / 3), 20.0)

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
    assert "<svg" in page and page.count("<rect") == 9
    assert "Clicked the offer: 2" in page  # bar tooltip
    # Nothing is fetched: no scripts, stylesheets, images or fonts from anywhere.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert "url(" not in page


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
