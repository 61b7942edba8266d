"""Broadcasts: create, schedule (--at/--tz/--local/--now), queue once, pause/resume, cancel."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from conftest import TEST_START

from campaigns import broadcasts
from campaigns.sender import send_due
from funnel import outbox
from funnel.db import connect, iso, parse_iso
from funnel.errors import InputError, TransitionError
from subscribers import lifecycle

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
BODY = (
    "---\nsubject: Winter opening hours\npreheader: We're open until 8 pm\n---\n"
    "Hello {{ first_name }}! **Longer hours** from December.\n"
)


def add_active(db, email, tz=None, streams=("broadcasts",)) -> int:
    sid = db.execute(
        "INSERT INTO subscribers (email, email_hash, name, timezone, status, created_at, "
        "updated_at) VALUES (?, ?, 'Reader', ?, 'active', ?, ?)",
        (email, lifecycle.email_hash(email), tz, iso(T0), iso(T0)),
    ).lastrowid
    for stream in streams:
        db.execute(
            "INSERT INTO subscriptions (subscriber_id, stream, status, updated_at) "
            "VALUES (?, ?, 'subscribed', ?)",
            (sid, stream, iso(T0)),
        )
    return sid


@pytest.fixture
def body(tmp_path):
    path = tmp_path / "winter.md"
    path.write_text(BODY, encoding="utf-8")
    return path


def ahead(clock, days: int, hm: str = "09:00") -> str:
    """The wall-clock time ``days`` after the clock's date, as ``--at`` takes it."""
    return f"{clock() + timedelta(days=days):%Y-%m-%d} {hm}"


def in_zone(text: str, zone: str) -> datetime:
    """``ahead()``'s text read in ``zone``, as an aware datetime."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=ZoneInfo(zone))


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("Error:")]
    return line


# ----------------------------------------------------------------- create
def test_create_prints_the_id_of_a_draft(run, db, body):
    r = run("campaign", "create", "--template", "broadcast", "--segment", "all", "--body", body)
    assert r.exit_code == 0, r.output
    cid = int(r.output.strip())
    c = broadcasts.get(db, cid)
    assert (c.status, c.subject, c.preheader, c.segment) == (
        "draft",
        "Winter opening hours",
        "We're open until 8 pm",
        "all",
    )
    r = run("campaign", "create", "--subject", "Override", "--body", body)
    assert broadcasts.get(db, int(r.output)).subject == "Override"
    r = run("campaign", "list")
    assert "Override" in r.output and "draft" in r.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--subject", "Hi\r\nBcc: x@evil.example"], "--subject"),
        (["--subject", "Hi", "--segment", "nope"], "no segment named 'nope'"),
        (["--subject", "Hi", "--where", "colour=red"], "unknown key 'colour'"),
        (["--subject", "Hi", "--template", "fancy"], "--template: unknown template 'fancy'"),
        (["--subject", " "], "--subject: a subject is required"),
    ],
)
def test_create_bad_input(run, db, body, args, message):
    r = run("campaign", "create", "--body", body, *args)
    assert message in one_line_error(r)
    assert db.execute("SELECT COUNT(*) FROM campaigns").fetchone()[0] == 0


def test_create_bad_front_matter(db, settings, clock, tmp_path):
    path = tmp_path / "bad.md"
    path.write_text("---\nsubject: Hi\ncolor: red\n---\nBody\n")
    with pytest.raises(InputError, match=r"bad.md:3: front matter 'color' is not a known key"):
        broadcasts.create(db, settings, clock(), body_path=path)
    with pytest.raises(InputError, match="--body: .* does not exist"):
        broadcasts.create(db, settings, clock(), subject="x", body_path=tmp_path / "none.md")


# ----------------------------------------------------------------- schedule
def test_schedule_at_in_the_clinic_zone_or_tz(run, db, body, clock, settings):
    cid = int(run("campaign", "create", "--body", body).output)
    at = ahead(clock, 10)
    r = run("campaign", "schedule", cid, "--at", at)
    assert r.exit_code == 0, r.output
    c = broadcasts.get(db, cid)
    assert c.status == "scheduled" and parse_iso(c.send_at) == in_zone(at, settings.timezone)
    r = run("campaign", "schedule", cid, "--at", at, "--tz", "America/New_York")
    new_york = in_zone(at, "America/New_York")
    assert f"{at} {new_york:%Z}" in r.output  # EST or EDT, whichever holds on that day
    assert parse_iso(broadcasts.get(db, cid).send_at) == new_york


def test_schedule_accepts_relative_times(run, db, body, clock):
    """--at takes "tomorrow 09:00", "monday 09:00", "in N days HH:MM"; --in takes a delay."""
    london = ZoneInfo("Europe/London")
    local_now = clock().astimezone(london)
    cid = int(run("campaign", "create", "--body", body).output)

    def send_at() -> datetime:
        return parse_iso(broadcasts.get(db, cid).send_at)

    r = run("campaign", "schedule", cid, "--in", "2h")
    assert r.exit_code == 0, r.output
    assert send_at() == clock() + timedelta(hours=2)
    r = run("campaign", "schedule", cid, "--at", "Tomorrow 09:00")
    assert r.exit_code == 0, r.output
    tomorrow = local_now.date() + timedelta(days=1)
    assert send_at().astimezone(london).replace(tzinfo=None) == datetime.combine(
        tomorrow, datetime.min.time()
    ).replace(hour=9)
    r = run("campaign", "schedule", cid, "--at", "monday 09:00")
    assert r.exit_code == 0, r.output
    local = send_at().astimezone(london)
    assert (local.weekday(), local.hour, local.minute) == (0, 9, 0)
    assert timedelta(0) < send_at() - clock() <= timedelta(days=7)
    r = run("campaign", "schedule", cid, "--at", "in 14 days 18:00", "--local")
    assert r.exit_code == 0, r.output
    day = local_now.date() + timedelta(days=14)
    assert broadcasts.get(db, cid).data["local_at"] == f"{day:%Y-%m-%d} 18:00"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--at", "tomorrow"], "--at: 'tomorrow' is not a time; use \"YYYY-MM-DD HH:MM\", "),
        (["--at", "next tuesday"], '"tomorrow 09:00", "monday 09:00", "in 2 hours", "+30m"'),
        (["--at", "2026-13-01 09:00"], "--at: '2026-13-01 09:00' is not a time; use"),
        (["--at", "2026-12-01 25:00"], "--at: '2026-12-01 25:00' is not a time"),
        (
            ["--at", "2020-01-01 09:00"],
            "--at 2020-01-01 09:00 is in the past (2020-01-01 09:00 Europe/London); use --now",
        ),
        (
            ["--at", "today 09:00"],
            f"--at today 09:00 is in the past ({TEST_START.astimezone(ZoneInfo('Europe/London')):%Y-%m-%d} 09:00",
        ),
        (["--in", "2 fortnights"], "--in: '2 fortnights' is not a duration; use a number and a unit"),
        (["--in", "2h", "--local"], "--in: --local needs a wall-clock time"),
        (["--in", "2h", "--now"], "--at: give one of --at TIME, --in DELAY or --now"),
        (["--at", "2026-12-01 09:00", "--tz", "Nowhere/Land"], "--tz: unknown time zone"),
        (["--at", "2026-12-01 09:00", "--tz", "Europe/Paris", "--local"], "--tz: --local"),
        ([], "--at: give one of --at TIME, --in DELAY or --now"),
        (["--now", "--at", "2026-12-01 09:00"], "give one of"),
    ],
)
def test_schedule_bad_input_is_one_line(run, db, body, args, message):
    cid = int(run("campaign", "create", "--body", body).output)
    assert message in one_line_error(run("campaign", "schedule", cid, *args))
    assert broadcasts.get(db, cid).status == "draft"


def test_schedule_local_time_per_reader(db, settings, clock):
    ny = add_active(db, "ny@example.com", tz="America/New_York")
    ldn = add_active(db, "ldn@example.com", tz="Europe/London")
    tokyo = add_active(db, "tk@example.com", tz="Asia/Tokyo")
    default = add_active(db, "nozone@example.com")
    cid = broadcasts.create(db, settings, clock(), subject="Hi", body_md="Hello.")
    at = ahead(clock, 10)
    c = broadcasts.schedule_campaign(db, settings, cid, clock(), at=at, local=True)
    assert c.local_time == 1 and c.local_at == at
    start = parse_iso(c.send_at)
    assert start == in_zone(at, "Pacific/Kiritimati")  # 09:00 in UTC+14, the earliest zone
    assert broadcasts.queue_due(db, settings, start - timedelta(minutes=1)) == (0, 0)
    assert broadcasts.queue_due(db, settings, start) == (1, 4)
    due = dict(db.execute("SELECT subscriber_id, due_at FROM outbox").fetchall())
    for sid, zone in (
        (ny, "America/New_York"),
        (ldn, "Europe/London"),
        (tokyo, "Asia/Tokyo"),
        (default, settings.timezone),
    ):
        local = parse_iso(due[sid]).astimezone(ZoneInfo(zone))
        assert (f"{local:%Y-%m-%d %H:%M}", local.second) == (at, 0)


# ----------------------------------------------------------------- queue
def test_queue_materialises_one_row_per_member_once(db, settings, clock):
    ids = [add_active(db, f"r{i}@example.com") for i in range(7)]
    add_active(db, "webinars-only@example.com", streams=("webinars",))
    gone = add_active(db, "gone@example.com")
    lifecycle.unsubscribe(db, gone, clock())
    cid = broadcasts.create(db, settings, clock(), subject="Hi", body_md="Hello.")
    broadcasts.schedule_campaign(db, settings, cid, clock(), send_now=True)
    assert broadcasts.queue(db, settings, cid, clock(), batch=3) == 7
    assert broadcasts.queue(db, settings, cid, clock(), batch=3) == 0
    rows = db.execute(
        "SELECT subscriber_id, kind, dedupe_key, stream, priority, campaign_id, ref FROM outbox "
        "ORDER BY subscriber_id"
    ).fetchall()
    assert rows == [
        (
            sid,
            "broadcast",
            f"campaign:{cid}:{sid}",
            "broadcasts",
            outbox.PRIORITY_BROADCAST,
            cid,
            f"campaign:{cid}",
        )
        for sid in ids
    ]
    assert broadcasts.get(db, cid).status == "sending"


def test_two_queuers_racing_make_one_row_each(db, settings, clock):
    for i in range(60):
        add_active(db, f"r{i}@example.com")
    cid = broadcasts.create(db, settings, clock(), subject="Hi", body_md="Hello.")
    broadcasts.schedule_campaign(db, settings, cid, clock(), send_now=True)
    results, errors = [], []

    def work():
        conn = connect(settings.db)
        try:
            results.append(broadcasts.queue(conn, settings, cid, clock(), batch=7))
        except Exception as exc:  # pragma: no cover - surfaced below
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sum(results) == 60
    assert db.execute("SELECT COUNT(*), COUNT(DISTINCT subscriber_id) FROM outbox").fetchone() == (
        60,
        60,
    )


# ----------------------------------------------------------------- send, pause, cancel
def test_broadcast_is_rendered_and_delivered(db, settings, clock, smtp_server, body):
    add_active(db, "sam@example.com")
    cid = broadcasts.create(db, settings, clock(), body_path=body)
    broadcasts.schedule_campaign(db, settings, cid, clock(), send_now=True)
    broadcasts.queue(db, settings, cid, clock())
    assert send_due(db, settings, clock).sent == 1
    (m,) = smtp_server.messages
    assert m.message["Subject"] == "Winter opening hours"
    assert m.message["List-Unsubscribe"].startswith(f"<{settings.base_url}/u/")
    assert "Hello Reader!" in m.part("plain") and "<strong>Longer hours</strong>" in m.part("html")
    assert broadcasts.finish_done(db, clock()) == 1
    st = broadcasts.status(db, settings, cid, clock())
    assert st.finished and st.counts == {"sent": 1} and st.campaign.status == "finished"


def test_pause_resume_ten_times_sends_each_exactly_once(db, settings, clock, smtp_server):
    s = settings.replace(batch_size=3)
    people = {f"r{i}@example.com" for i in range(25)}
    for email in sorted(people):
        add_active(db, email)

    def campaign(subject):
        cid = broadcasts.create(db, s, clock(), subject=subject, body_md="Hello.")
        broadcasts.schedule_campaign(db, s, cid, clock(), send_now=True)
        broadcasts.queue(db, s, cid, clock(), batch=4)
        return cid

    straight = campaign("Straight")
    send_due(db, s, clock)
    paused = campaign("Interrupted")
    for _ in range(10):
        send_due(db, s, clock, limit=2)
        broadcasts.pause(db, paused, clock())
        assert send_due(db, s, clock).claimed == 0  # nothing of a paused campaign goes
        broadcasts.resume(db, paused, clock())
    left = broadcasts.status(db, s, paused, clock())
    assert left.counts == {"sent": 20, "queued": 5} and not left.finished  # paused mid-way
    send_due(db, s, clock)

    def recipients(subject):
        return Counter(
            r for m in smtp_server.messages if m.message["Subject"] == subject for r in m.rcpt_tos
        )

    assert recipients("Straight") == recipients("Interrupted") == Counter(people)
    assert broadcasts.status(db, s, paused, clock()).finished
    assert broadcasts.status(db, s, straight, clock()).finished


def test_pause_before_start_and_cancel(db, settings, clock, run):
    ids = [add_active(db, f"r{i}@example.com") for i in range(3)]
    cid = broadcasts.create(db, settings, clock(), subject="Hi", body_md="Hello.")
    t0 = clock()
    broadcasts.schedule_campaign(db, settings, cid, t0, at=ahead(clock, 1))
    broadcasts.pause(db, cid, clock())
    assert broadcasts.queue_due(db, settings, t0 + timedelta(days=2)) == (0, 0)
    assert broadcasts.resume(db, cid, clock()).status == "scheduled"  # not started yet
    assert broadcasts.queue_due(db, settings, t0 + timedelta(days=2)) == (1, 3)
    clock.set(t0 + timedelta(days=2))
    r = run("campaign", "status", cid)
    assert "queued     3" in r.output and "finished: no" in r.output
    r = run("campaign", "cancel", cid)
    assert "3 unsent message(s) cancelled" in r.output
    assert dict(db.execute("SELECT status, COUNT(*) FROM outbox GROUP BY status")) == {
        "cancelled": 3
    }
    with pytest.raises(TransitionError, match="already cancelled"):
        broadcasts.cancel(db, cid, clock())
    with pytest.raises(TransitionError, match="only a scheduled or sending campaign"):
        broadcasts.pause(db, cid, clock())
    r = run("campaign", "status", 999)
    assert "campaign 999 does not exist" in one_line_error(r)
    assert len(ids) == 3


def test_paused_stream_subscriber_is_skipped(db, settings, clock, smtp_server):
    sid = add_active(db, "p@example.com")
    add_active(db, "q@example.com")
    cid = broadcasts.create(db, settings, clock(), subject="Hi", body_md="Hello.")
    broadcasts.schedule_campaign(db, settings, cid, clock(), send_now=True)
    broadcasts.queue(db, settings, cid, clock())
    lifecycle.set_subscription(
        db, sid, "broadcasts", "paused", clock(), paused_until=clock() + timedelta(days=30)
    )
    summary = send_due(db, settings, clock)
    assert summary.sent == 1 and [m.rcpt_tos for m in smtp_server.messages] == [["q@example.com"]]
    assert db.execute("SELECT status FROM outbox WHERE subscriber_id = ?", (sid,)).fetchone() == (
        "cancelled",
    )


def test_cli_schedule_now_queues(run, db, body, clock):
    for i in range(3):
        add_active(db, f"r{i}@example.com")
    cid = int(run("campaign", "create", "--body", body).output)
    r = run("campaign", "schedule", cid, "--now")
    assert r.exit_code == 0, r.output
    assert f"campaign {cid}: 3 message(s) queued" in r.output
    r = run("campaign", "pause", cid)
    assert r.output.strip() == f"campaign {cid}: paused"
    r = run("campaign", "resume", cid)
    assert r.output.strip() == f"campaign {cid}: sending"
    assert broadcasts.get(db, cid).queued_at == iso(clock())  # the fake clock was used


def test_campaign_body_from_standard_input(cli_env, db):

    import cli as cli_module

    r = CliRunner().invoke(cli_module.main, ["campaign", "create", "--subject", "Saturdays"],
                           input="We now open on **Saturdays**.\n")
    assert r.exit_code == 0, r.output
    cid = int(r.output.strip().splitlines()[-1])
    body = db.execute("SELECT body_md FROM campaigns WHERE id = ?", (cid,)).fetchone()[0]
    assert "**Saturdays**" in body


def test_an_edit_or_cancel_from_another_process_reaches_the_batch_being_built(db, settings, clock):
    """The builder reads the campaign once per batch (db.unchanged); a commit by the
    admin's process in the middle of the batch is seen by the next message."""
    from campaigns.content import SkipMessage

    ids = [add_active(db, f"r{i}@example.com") for i in range(3)]
    cid = broadcasts.create(db, settings, clock(), subject="First subject", body_md="Hello.")
    broadcasts.schedule_campaign(db, settings, cid, clock(), send_now=True)
    broadcasts.queue(db, settings, cid, clock())
    _token, rows = outbox.claim(db, clock(), 3)
    subs = {sid: lifecycle.get(db, sid) for sid in ids}
    build = lambda row: broadcasts.build_broadcast(db, settings, row, subs[row.subscriber_id], clock())  # noqa: E731
    assert build(rows[0]).subject == "First subject"
    admin = connect(settings.db)
    admin.execute("UPDATE campaigns SET subject = 'Second subject' WHERE id = ?", (cid,))
    assert build(rows[1]).subject == "Second subject"
    broadcasts.cancel(admin, cid, clock())
    with pytest.raises(SkipMessage, match="cancelled"):
        build(rows[2])
