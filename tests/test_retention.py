"""Never-confirmed signups are purged after pending_retention_days (issue 10 item 9).

A real SQLite file and the fake clock: signups go through optin.signup with
an IP and a user agent, their confirmation emails go to the live SMTP sink,
then `funnel send` (and the worker's tick) run at later fake dates.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from click.testing import CliRunner

import cli
from campaigns import webinars
from campaigns.worker import tick
from funnel.db import iso
from funnel.errors import SettingsError
from funnel.settings import load_settings
from subscribers import lifecycle, optin, tokens


def count(db, sql, *args):
    return db.execute(sql, args).fetchone()[0]


@pytest.fixture
def run_send(cli_env, clock, monkeypatch):
    monkeypatch.setattr(cli.App, "now", lambda self: clock())

    def run():
        r = CliRunner().invoke(cli.main, ["send"])
        assert r.exit_code == 0, r.output
        return r

    return run


def test_pending_signups_are_purged_after_the_retention_period(db, settings, clock, run_send,
                                                               smtp_server):
    start = clock()
    stale = optin.signup(db, settings, "stale@example.com", start, name="Stale", source="form",
                         ip="198.51.100.7", user_agent="StaleAgent/1").subscriber_id
    again = optin.signup(db, settings, "again@example.com", start, ip="198.51.100.8",
                         user_agent="AgainAgent/1").subscriber_id
    done = optin.signup(db, settings, "done@example.com", start, ip="198.51.100.9").subscriber_id
    optin.confirm(db, settings, tokens.confirm_token(settings, done, lifecycle.get(db, done).confirm_nonce,
                  start), start, ip="198.51.100.9")
    # An earlier subscriber who unsubscribed, then signed up again and never confirmed
    back = optin.signup(db, settings, "back@example.com", start).subscriber_id
    optin.activate_imported(db, settings, back, start, "paper form")
    lifecycle.unsubscribe(db, back, start, source="web")
    optin.signup(db, settings, "back@example.com", start)
    # A webinar-only contact (pending, registered): their registration is their consent
    webinars.create_webinar(db, settings, {
        "slug": "spine-health", "title": "Spine Health Webinar",
        "start": (start + timedelta(days=60)).strftime("%Y-%m-%d %H:%M"),
        "timezone": "Europe/London", "join_url": "https://meet.backinmotion-physio.co.uk/spine",
    }, start)  # fmt: skip
    webinars.register(db, settings, "spine-health", start, email="guest@example.com",
                      ip="198.51.100.10", user_agent="GuestAgent/1")
    # The stale address was already on the suppression list (e.g. erased before, by hash)
    db.execute("INSERT INTO suppressions (email_hash, reason, at) VALUES (?, 'erased', ?)",
               (lifecycle.email_hash("stale@example.com"), iso(start)))
    run_send()
    assert len(smtp_server.to("stale@example.com")) == 1  # the confirmation went out
    suppressions = db.execute("SELECT * FROM suppressions ORDER BY email_hash").fetchall()

    clock.set(start + timedelta(days=20))
    optin.signup(db, settings, "again@example.com", clock())  # asks for a fresh confirmation
    clock.set(start + timedelta(days=29, hours=23))
    assert "purged" not in run_send().output
    assert lifecycle.find(db, "stale@example.com") is not None

    clock.set(start + timedelta(days=30, hours=1))
    r = run_send()
    assert "1 never-confirmed signup(s) purged" in r.stderr
    assert lifecycle.find(db, "stale@example.com") is None
    assert count(db, "SELECT COUNT(*) FROM consent WHERE subscriber_id = ?", stale) == 0
    assert count(db, "SELECT COUNT(*) FROM consent WHERE ip = '198.51.100.7' "
                     "OR user_agent = 'StaleAgent/1'") == 0
    assert count(db, "SELECT COUNT(*) FROM outbox WHERE to_addr = 'stale@example.com' "
                     "OR subscriber_id = ?", stale) == 0
    assert count(db, "SELECT COUNT(*) FROM subscriptions WHERE subscriber_id = ?", stale) == 0
    # the anonymous signup event stays for the funnel report; no new suppression is added
    assert count(db, "SELECT COUNT(*) FROM events WHERE kind = 'subscribed' AND subscriber_id IS NULL") == 1
    assert db.execute("SELECT * FROM suppressions ORDER BY email_hash").fetchall() == suppressions
    assert len(suppressions) == 1
    # the others are untouched
    for address, status in (("again@example.com", "pending"), ("done@example.com", "active"),
                            ("back@example.com", "unsubscribed"), ("guest@example.com", "pending")):
        assert lifecycle.find(db, address).status == status, address
    assert count(db, "SELECT COUNT(*) FROM consent WHERE subscriber_id = ?", again) == 2

    # The worker's tick does the same: the re-requested one goes 30 days after its last request
    clock.set(start + timedelta(days=50, hours=1))
    assert tick(db, settings, clock())["pending_purged"] == 1
    assert lifecycle.find(db, "again@example.com") is None
    assert count(db, "SELECT COUNT(*) FROM consent WHERE user_agent = 'AgainAgent/1'") == 0
    assert {lifecycle.find(db, a).status for a in ("done@example.com", "back@example.com",
                                                   "guest@example.com")} == {"active", "unsubscribed",
                                                                             "pending"}
    # and the address may sign up again from scratch
    assert optin.signup(db, settings, "again@example.com", clock()).action == "created"


def test_retention_setting_is_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("FUNNEL_PENDING_RETENTION_DAYS", "2")
    monkeypatch.setenv("FUNNEL_SECRET_KEYS", "a-secret-key-0123456789")
    monkeypatch.setenv("FUNNEL_CONFIG", str(tmp_path / "absent.toml"))
    with pytest.raises(SettingsError, match=r"^FUNNEL_PENDING_RETENTION_DAYS: 2 is shorter than "
                                            r"confirm_max_age_days \(3\)"):
        load_settings()
    monkeypatch.setenv("FUNNEL_PENDING_RETENTION_DAYS", "45")
    assert load_settings().pending_retention_days == 45
