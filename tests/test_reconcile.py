"""Enrollment by reconciling: every way a reader becomes active starts the series.

The first tests run the real `funnel` CLI in fresh processes (nothing imported
beforehand can register anything) against a temporary database and the live
SMTP sink, and read what the sink received.  They use the real clock only
(in the subprocesses), with readers in a zone where it is daytime now, so part
1 is not held back by quiet hours.  The rest call the domain functions with the
fake clock.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from browser_support import daytime_zone

from campaigns import webinars
from campaigns.enrollment import reconcile, schedule_series
from campaigns.sender import send_due
from campaigns.series import find_series
from funnel.db import parse_iso
from subscribers import lifecycle, optin, tokens

REPO = Path(__file__).resolve().parents[1]
SLUG = "importance-of-exercise"
STREAM = f"series:{SLUG}"


def part_1_subject(settings) -> str:
    return find_series(settings.content_path, SLUG).steps[0].subject


def funnel(env: dict, *args: str) -> subprocess.CompletedProcess:
    """Run `funnel ARGS` in a fresh Python process."""
    r = subprocess.run(
        [sys.executable, "-c", "import cli; cli.main()", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


@pytest.fixture
def env(cli_env) -> dict:
    out = {k: v for k, v in os.environ.items() if not k.startswith("FUNNEL_")}
    out.update(cli_env, FUNNEL_DEV="1")
    return out


def received(sink) -> list[tuple[str, str]]:
    return sorted((m.message["To"], m.message["Subject"]) for m in sink.messages)


# ----------------------------------------------------------------- fresh processes
def test_pre_confirmed_import_gets_part_1_on_the_next_send(env, settings, smtp_server, tmp_path):
    zone = daytime_zone()
    people = tmp_path / "list.csv"
    people.write_text(
        "email,name,timezone\n"
        f"ana@example.com,Ana,{zone}\nbo@example.com,Bo,{zone}\ncy@example.com,Cy,{zone}\n",
        encoding="utf-8",
    )
    r = funnel(env, "subscribers", "import", str(people), "--pre-confirmed", "--consent-note", "x")
    assert "imported 3 as active" in r.stdout
    assert smtp_server.messages == []  # nothing is sent by the import itself

    r = funnel(env, "send")
    assert r.stdout.startswith("3 sent"), r.stdout
    assert "3 reader(s) enrolled in a series, 3 series step(s) queued" in r.stderr
    subject = part_1_subject(settings)
    assert received(smtp_server) == [
        ("Ana <ana@example.com>", subject),
        ("Bo <bo@example.com>", subject),
        ("Cy <cy@example.com>", subject),
    ]
    for m in smtp_server.messages:
        assert "Part 1" in m.part("plain")

    # The next send finds nobody new and sends nothing again.
    r = funnel(env, "send", "-q")
    assert r.stdout.startswith("0 sent"), r.stdout
    assert len(smtp_server.messages) == 3


def test_cli_add_and_confirm_gets_part_1(env, settings, smtp_server):
    funnel(env, "subscribers", "add", "dee@example.com", "--name", "Dee", "--tz", daytime_zone())
    funnel(env, "send", "-q")
    (confirmation,) = smtp_server.to("dee@example.com")
    link = next(u for u in confirmation.links() if "/confirm/" in u)
    smtp_server.clear()

    r = funnel(env, "subscribers", "confirm", link)
    assert "confirmed, now active" in r.stdout
    r = funnel(env, "send", "-q")
    assert r.stdout.startswith("1 sent"), r.stdout
    assert received(smtp_server) == [("Dee <dee@example.com>", part_1_subject(settings))]


# ----------------------------------------------------------------- in process
def confirm(db, settings, email, now, **kwargs) -> int:
    r = optin.signup(db, settings, email, now, **kwargs)
    sub = lifecycle.get(db, r.subscriber_id)
    optin.confirm(db, settings, tokens.confirm_token(settings, sub.id, sub.confirm_nonce, now), now)
    return sub.id


def enrollments(db, sid) -> list[tuple]:
    return db.execute(
        "SELECT series, status FROM enrollments WHERE subscriber_id = ?", (sid,)
    ).fetchall()


def enrolled_events(db, sid) -> int:
    return db.execute(
        "SELECT COUNT(*) FROM events WHERE kind = 'enrolled' AND subscriber_id = ?", (sid,)
    ).fetchone()[0]


def series_sent(db, sid) -> list[str]:
    return [
        r[0]
        for r in db.execute(
            "SELECT step_key FROM series_deliveries WHERE subscriber_id = ? ORDER BY at, rowid",
            (sid,),
        )
    ]


def test_confirming_enrols_on_the_next_pass_not_before(db, settings, clock):
    sid = confirm(db, settings, "e@example.com", clock(), timezone="Europe/London")
    assert enrollments(db, sid) == []  # confirming alone writes no enrollment
    assert schedule_series(db, settings, clock()) == 1  # enrolled and part 1 queued
    assert enrollments(db, sid) == [(SLUG, "active")]
    first = find_series(settings.content_path, SLUG).steps[0].key
    assert series_sent(db, sid) == [first]


def test_reconcile_twice_enrols_once(db, settings, clock):
    sid = confirm(db, settings, "twice@example.com", clock())
    assert reconcile(db, settings, clock()).enrolled == 1
    # Even when the reader is noted again (their stream touched), nothing is added.
    lifecycle.set_subscription(db, sid, STREAM, "unsubscribed", clock())
    lifecycle.set_subscription(db, sid, STREAM, "subscribed", clock())
    assert db.execute("SELECT COUNT(*) FROM enrollment_queue").fetchone()[0] == 1
    assert reconcile(db, settings, clock()).enrolled == 0
    assert reconcile(db, settings, clock()).enrolled == 0
    assert enrollments(db, sid) == [(SLUG, "active")]
    assert enrolled_events(db, sid) == 1
    assert db.execute("SELECT COUNT(*) FROM enrollment_queue").fetchone()[0] == 0


def test_reader_unsubscribed_from_the_series_is_not_enrolled(db, settings, clock):
    sid = confirm(db, settings, "no-series@example.com", clock())
    lifecycle.set_subscription(db, sid, STREAM, "unsubscribed", clock())
    assert reconcile(db, settings, clock()).enrolled == 0
    assert schedule_series(db, settings, clock()) == 0
    assert enrollments(db, sid) == []
    assert lifecycle.subscriptions(db, sid)["broadcasts"]["status"] == "subscribed"
    # Turning the series on later (the preferences page) starts it then.
    clock.advance(days=3)
    lifecycle.set_subscription(db, sid, STREAM, "subscribed", clock())
    assert schedule_series(db, settings, clock()) == 1
    assert enrollments(db, sid) == [(SLUG, "active")]


def test_pending_and_unsubscribed_readers_are_not_enrolled(db, settings, clock):
    pending = optin.signup(db, settings, "p@example.com", clock()).subscriber_id
    gone = confirm(db, settings, "gone@example.com", clock())
    lifecycle.unsubscribe(db, gone, clock())
    assert reconcile(db, settings, clock()).enrolled == 0
    assert enrollments(db, pending) == [] and enrollments(db, gone) == []


def test_resubscribe_resumes_the_old_enrollment_and_never_resends(db, settings, clock):
    series = find_series(settings.content_path, SLUG)
    sid = confirm(db, settings, "back@example.com", clock(), timezone="Europe/London")
    schedule_series(db, settings, clock())
    send_due(db, settings, clock)
    lifecycle.unsubscribe(db, sid, clock())
    clock.advance(days=10)  # past part 2's slot: the scheduler stops the enrollment
    schedule_series(db, settings, clock())
    assert enrollments(db, sid) == [(SLUG, "stopped")]

    # A month later they sign up again and confirm: a fresh opt-in.
    clock.advance(days=30)
    assert optin.signup(db, settings, "back@example.com", clock()).action == "restarted"
    sub = lifecycle.get(db, sid)
    optin.confirm(db, settings, tokens.confirm_token(settings, sid, sub.confirm_nonce, clock()),
                  clock())  # fmt: skip
    assert reconcile(db, settings, clock()) == (0, 1)  # (enrolled, resumed)
    schedule_series(db, settings, clock())
    assert enrollments(db, sid) == [(SLUG, "active")]
    assert enrolled_events(db, sid) == 1  # resumed, not enrolled a second time
    # Part 2 follows on its slot; part 1 is never sent again.
    due = parse_iso(
        db.execute("SELECT next_due_at FROM enrollments WHERE subscriber_id = ?", (sid,))
        .fetchone()[0]
    )
    clock.set(due)
    assert schedule_series(db, settings, clock()) == 1
    assert series_sent(db, sid) == [series.steps[0].key, series.steps[1].key]


def test_a_reader_who_finished_is_not_started_again(db, settings, clock):
    sid = confirm(db, settings, "done@example.com", clock())
    reconcile(db, settings, clock())
    db.execute(
        "UPDATE enrollments SET status = 'completed', next_due_at = NULL WHERE subscriber_id = ?",
        (sid,),
    )
    clock.advance(days=1)
    lifecycle.set_subscription(db, sid, STREAM, "unsubscribed", clock())
    clock.advance(days=1)
    lifecycle.set_subscription(db, sid, STREAM, "subscribed", clock())
    assert schedule_series(db, settings, clock()) == 0
    assert enrollments(db, sid) == [(SLUG, "completed")]
    assert enrolled_events(db, sid) == 1


def test_webinar_form_with_the_newsletter_box_enrols_after_confirming(db, settings, clock):
    start = (clock() + timedelta(days=20)).strftime("%Y-%m-%d 18:00")
    webinars.create_webinar(
        db,
        settings,
        {"slug": "spine-health", "title": "Spine Health Webinar", "description": "Live answers.",
         "start": start, "timezone": "Europe/London", "join_url": "https://meet.example.org/s"},
        clock(),
    )  # fmt: skip
    result = webinars.register(
        db, settings, "spine-health", clock(), email="w@example.com", newsletter=True,
        timezone="Europe/London",
    )  # fmt: skip
    sid = lifecycle.find(db, "w@example.com").id
    assert result.newsletter == "created"
    assert reconcile(db, settings, clock()).enrolled == 0  # pending: the newsletter isn't confirmed yet
    sub = lifecycle.get(db, sid)
    optin.confirm(db, settings, tokens.confirm_token(settings, sid, sub.confirm_nonce, clock()),
                  clock())  # fmt: skip
    assert schedule_series(db, settings, clock()) == 1
    assert enrollments(db, sid) == [(SLUG, "active")]


def test_pre_confirmed_import_in_process_enrols_with_part_1_at_the_readers_morning(
    db, settings, clock, tmp_path
):
    """An import at 23:00 in the readers' zone: enrolled now, part 1 due at the end of quiet hours."""
    from subscribers.io import import_csv

    clock.set(clock().replace(hour=23, minute=0))  # 23:00 UTC = 23:00 in London in winter
    people = tmp_path / "night.csv"
    people.write_text("email,timezone\nn1@example.com,Europe/London\n", encoding="utf-8")
    import_csv(db, settings, people, clock(), pre_confirmed=True, consent_note="paper form")
    assert schedule_series(db, settings, clock()) == 0
    (sid,) = [r[0] for r in db.execute("SELECT id FROM subscribers")]
    due = db.execute("SELECT next_due_at FROM enrollments WHERE subscriber_id = ?", (sid,))
    morning = parse_iso(due.fetchone()[0])
    assert morning.astimezone(ZoneInfo("Europe/London")).hour == settings.quiet_end_hour
    clock.set(morning)
    assert schedule_series(db, settings, clock()) == 1


def test_gapped_series_is_skipped_and_a_broken_one_still_enrols(db, settings, clock, tmp_path):
    content = tmp_path / "content" / "series"
    for slug, parts in (("gappy", (3, 4)), ("broken", ())):
        folder = content / slug
        folder.mkdir(parents=True)
        for part in parts:
            (folder / f"p{part}.md").write_text(
                f"---\ntitle: T{part}\npart: {part}\nsubject: S{part}\n---\nBody {part}.\n",
                encoding="utf-8",
            )
        names = ", ".join(f'"p{p}.md"' for p in parts)
        (folder / "series.toml").write_text(
            f'title = "{slug}"\ncadence = "weekly"\nsend_day = "tuesday"\nsend_hour = 9\n'
            f"steps = [{names}]\n" if parts else "title = 3\n",
            encoding="utf-8",
        )
    s = settings.replace(content_dir=str(tmp_path / "content"), enroll_series=("gappy", "broken"))
    sid = confirm(db, s, "g@example.com", clock())
    assert reconcile(db, s, clock()).enrolled == 1
    assert enrollments(db, sid) == [("broken", "active")]



def test_upgrading_enrols_readers_imported_before_the_fix(settings, clock):
    """A database where a pre-confirmed import left readers un-enrolled (the old bug):
    migration 0013 notes them, and the first pass after the upgrade enrols them."""
    import sqlite_utils

    from funnel.db import connect, iso, migrations

    raw = sqlite_utils.Database(settings.db)
    migrations.apply(raw, stop_before="0013_enrollment_queue")
    stamp = iso(clock())
    for sid, status in ((1, "active"), (2, "pending")):
        raw.execute(
            "INSERT INTO subscribers (id, email, email_hash, status, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (sid, f"old{sid}@example.com", f"h{sid}", status, stamp, stamp),
        )
        raw.execute(
            "INSERT INTO subscriptions (subscriber_id, stream, status, updated_at) "
            "VALUES (?, ?, 'subscribed', ?)",
            (sid, STREAM, stamp),
        )
    raw.conn.commit()
    raw.close()

    db = connect(settings.db, migrate=True)
    assert db.execute("SELECT subscriber_id FROM enrollment_queue").fetchall() == [(1,)]
    assert reconcile(db, settings, clock()).enrolled == 1
    assert enrollments(db, 1) == [(SLUG, "active")] and enrollments(db, 2) == []
    db.close()
