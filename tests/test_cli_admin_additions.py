"""The CLI additions the console builds on: merge tags, campaign preview and test, events."""

from __future__ import annotations

import email
import email.policy
from datetime import timedelta

import pytest

from campaigns import broadcasts
from campaigns.sender import send_due
from funnel.db import iso, log_event
from subscribers import lifecycle


def add_active(db, address: str, name: str, clock) -> int:
    sid = db.execute(
        "INSERT INTO subscribers (email, email_hash, name, status, created_at, updated_at) "
        "VALUES (?, ?, ?, 'active', ?, ?)",
        (address, lifecycle.email_hash(address), name, iso(clock()), iso(clock())),
    ).lastrowid
    db.execute("INSERT INTO subscriptions (subscriber_id, stream, status, updated_at) "
               "VALUES (?, 'broadcasts', 'subscribed', ?)", (sid, iso(clock())))
    return sid


def error_line(result) -> str:
    assert result.exit_code != 0, result.output
    lines = [x for x in result.output.splitlines() if x.startswith("Error")]
    assert len(lines) == 1, result.output
    return lines[0]


def draft(run, *args) -> int:
    r = run("campaign", "create", *args)
    assert r.exit_code == 0, r.output
    return int(r.output.strip())


@pytest.fixture
def body(tmp_path):
    path = tmp_path / "news.md"
    path.write_text("Dear {{ name }}, the **hydrotherapy pool** reopens on Monday.\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------- merge tags
@pytest.mark.parametrize("option, text, field", [
    ("--subject", "Hello {{ nmae }}", "--subject"),
    ("--preheader", "For {{first }}", "--preheader"),
])
def test_create_refuses_an_unknown_merge_tag_naming_it(run, db, body, option, text, field):
    args = ["--subject", "Pool news"] if option != "--subject" else []
    line = error_line(run("campaign", "create", "--body", body, *args, option, text))
    bad = text[text.index("{{"):text.index("}}") + 2].replace("{{", "").replace("}}", "").strip()
    assert f"{field}: unknown merge tag {{{{ {bad} }}}}" in line
    assert "{{ first_name }}" in line and "{{ name }}" in line
    assert db.execute("SELECT COUNT(*) FROM campaigns").fetchone()[0] == 0


@pytest.mark.parametrize("text, shown", [
    ("{{ first_name | upper }}", "{{ first_name | upper }}"),
    ("{{7*7}}", "{{ 7*7 }}"),
    ("{{ }}", "{{ }}"),
])
def test_anything_else_in_braces_is_refused_too(run, db, tmp_path, text, shown):
    path = tmp_path / "braces.md"
    path.write_text(f"Hi {text}\n", encoding="utf-8")
    line = error_line(run("campaign", "create", "--subject", "News", "--body", path))
    assert f"--body: unknown merge tag {shown}" in line
    assert db.execute("SELECT COUNT(*) FROM campaigns").fetchone()[0] == 0


def test_create_refuses_an_unknown_merge_tag_in_the_body(run, db, tmp_path):
    path = tmp_path / "typo.md"
    path.write_text("Hi {{ frist_name }}\n", encoding="utf-8")
    line = error_line(run("campaign", "create", "--subject", "News", "--body", path))
    assert "--body: unknown merge tag {{ frist_name }}" in line
    assert db.execute("SELECT COUNT(*) FROM campaigns").fetchone()[0] == 0


def test_name_in_a_subject_is_rendered_per_recipient(run, db, settings, clock, smtp_server, body):
    add_active(db, "maria@example.com", "Maria Lopez", clock)
    add_active(db, "ken@example.com", "Ken", clock)
    cid = draft(run, "--subject", "{{ name }}, the pool is back", "--body", body)
    broadcasts.schedule_campaign(db, settings, cid, clock(), send_now=True)
    broadcasts.queue(db, settings, cid, clock())
    assert send_due(db, settings, clock).sent == 2
    got = {m.rcpt_tos[0]: m for m in smtp_server.messages}
    assert got["maria@example.com"].message["Subject"] == "Maria, the pool is back"
    assert got["ken@example.com"].message["Subject"] == "Ken, the pool is back"
    assert "Dear Ken," in got["ken@example.com"].part("plain")
    assert b"{{" not in got["ken@example.com"].data


# ----------------------------------------------------------------- preview
def test_preview_writes_the_rendered_message(run, db, body, tmp_path):
    cid = draft(run, "--subject", "Pool news for {{ first_name }}", "--preheader", "Monday", "--body", body)
    out = tmp_path / "out"
    r = run("campaign", "preview", cid, "--to", out)
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"campaign-{cid}.{x}" for x in ("eml", "html", "preview.html", "txt")]
    msg = email.message_from_bytes((out / f"campaign-{cid}.eml").read_bytes(), policy=email.policy.default)
    assert msg["Subject"] == "Pool news for Alex" and msg["List-Unsubscribe"]
    assert "<strong>hydrotherapy pool</strong>" in (out / f"campaign-{cid}.html").read_text()
    assert "Dear Alex," in (out / f"campaign-{cid}.txt").read_text()
    page = (out / f"campaign-{cid}.preview.html").read_text()
    assert 'width="375"' in page and 'width="800"' in page


def test_preview_of_a_missing_campaign_is_one_sentence(run, tmp_path):
    assert "campaign 99 does not exist" in error_line(run("campaign", "preview", 99, "--to", tmp_path))


# ----------------------------------------------------------------- test send
def test_test_send_goes_through_the_outbox_marked_and_not_counted(run, db, settings, clock,
                                                                   smtp_server, body):
    add_active(db, "reader@example.com", "Reader", clock)
    cid = draft(run, "--subject", "Pool news", "--body", body)
    r = run("campaign", "test", cid, "--to", "manager@clinic.example")
    assert r.exit_code == 0, r.output
    assert not smtp_server.messages  # queued, not sent behind the outbox's back
    assert send_due(db, settings, clock).sent == 1
    (m,) = smtp_server.messages
    assert m.rcpt_tos == ["manager@clinic.example"]
    assert m.message["Subject"] == "[Test] Pool news"
    assert "hydrotherapy pool" in m.part("html")
    st = broadcasts.status(db, settings, cid, clock())
    assert st.campaign.status == "draft" and st.total == 0 and st.audience == 1
    assert [x["rows"] for x in broadcasts.listing(db)] == [0]


def test_test_send_bad_address_is_one_sentence(run, db, body):
    cid = draft(run, "--subject", "Pool news", "--body", body)
    assert "--to: 'nobody' is not a valid email address" in error_line(
        run("campaign", "test", cid, "--to", "nobody"))
    assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0


# ----------------------------------------------------------------- events
def test_events_filter_by_kind_and_since(run, db, clock):
    sid = add_active(db, "ev@example.com", "Ev", clock)
    log_event(db, "subscribed", clock() - timedelta(days=10), sid)
    log_event(db, "bounced", clock() - timedelta(hours=2), sid, "row:1")
    log_event(db, "confirmed", clock() - timedelta(hours=1), sid)
    r = run("events", "--since", "24h")
    assert r.exit_code == 0, r.output
    assert "bounced" in r.output and "confirmed" in r.output and "subscribed" not in r.output
    r = run("events", "--kind", "bounced")
    lines = r.output.splitlines()
    assert len(lines) == 2 and "ev@example.com" in lines[1] and "row:1" in lines[1]
    r = run("events", "--since", f"{clock() - timedelta(days=3):%Y-%m-%d}")
    assert "bounced" in r.output and "subscribed" not in r.output
    r = run("events", "--limit", "1")
    assert len(r.output.splitlines()) == 2 and "confirmed" in r.output


@pytest.mark.parametrize("args, option", [
    (["--kind", "exploded"], "--kind"),
    (["--since", "last blue moon"], "--since"),
    (["--since", "monday 09:00"], "--since"),
    (["--since", "2026-13-40"], "--since"),
    (["--limit", "0"], "--limit"),
])
def test_events_bad_options_name_the_option(run, args, option):
    assert option in error_line(run("events", *args))


# ----------------------------------------------------------------- subscribers
def test_subscribers_history_shows_the_timeline(run, db, settings, clock, smtp_server, body):
    sid = add_active(db, "tl@example.com", "Tia Lane", clock)
    log_event(db, "confirmed", clock() - timedelta(days=1), sid)
    cid = draft(run, "--subject", "Pool news", "--body", body)
    broadcasts.schedule_campaign(db, settings, cid, clock(), send_now=True)
    broadcasts.queue(db, settings, cid, clock())
    send_due(db, settings, clock)
    r = run("subscribers", "history", "tl@example.com")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert "email sent" in lines[1] and "Pool news" in lines[1]  # newest first
    assert "confirmed" in lines[2]


def test_subscribers_edit_changes_name_and_zone(run, db, clock):
    sid = add_active(db, "ed@example.com", "Ed", clock)
    r = run("subscribers", "edit", "ed@example.com", "--name", "Edwina Park", "--tz", "Asia/Tokyo")
    assert r.exit_code == 0, r.output
    assert lifecycle.get(db, sid).name == "Edwina Park" and lifecycle.get(db, sid).timezone == "Asia/Tokyo"
    line = error_line(run("subscribers", "edit", "ed@example.com", "--tz", "Mars/Olympus"))
    assert "timezone" in line and lifecycle.get(db, sid).timezone == "Asia/Tokyo"
    assert "--name" in error_line(run("subscribers", "edit", "ed@example.com"))


def test_subscribers_unsuppress_needs_a_reason_and_logs_it(run, db, clock):
    sid = add_active(db, "bo@example.com", "Bo", clock)
    db.execute("UPDATE subscribers SET status = 'bounced' WHERE id = ?", (sid,))
    assert "--reason" in error_line(run("subscribers", "unsuppress", "bo@example.com"))
    assert "reason" in error_line(run("subscribers", "unsuppress", "bo@example.com", "--reason", " "))
    assert lifecycle.get(db, sid).status == "bounced"
    r = run("subscribers", "unsuppress", "bo@example.com", "--reason", "mailbox emptied")
    assert r.exit_code == 0, r.output
    assert lifecycle.get(db, sid).status == "active"
    (data,) = db.execute("SELECT data FROM events WHERE kind = 'admin' AND ref = 'unsuppress'").fetchone()
    assert "mailbox emptied" in data


def test_history_of_an_unknown_address_is_one_sentence(run):
    line = error_line(run("subscribers", "history", "nobody@example.com"))
    assert "nobody@example.com" in line
