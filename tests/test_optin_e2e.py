"""The whole opt-in path through the real CLI, a real SQLite file and a live SMTP server."""

import sqlite3
from email.utils import getaddresses

from click.testing import CliRunner

import cli
from funnel.db import connect
from subscribers import lifecycle


def invoke(*args, input=None):
    result = CliRunner().invoke(cli.main, list(args), input=input, catch_exceptions=False)
    return result


def test_add_send_confirm_activate(cli_env, settings, smtp_server):
    r = invoke("subscribers", "add", "sam@example.com", "--name", "Sam Lee", "--tz", "America/New_York")
    assert r.exit_code == 0, r.output
    assert "confirmation email is queued" in r.output

    r = invoke("send", "-q")
    assert r.exit_code == 0, r.output
    assert r.output.startswith("1 sent")

    (received,) = smtp_server.messages
    msg = received.message
    assert received.rcpt_tos == ["sam@example.com"]
    assert received.mail_from.startswith("bounce+") and received.mail_from.endswith("@" + settings.sender_domain)
    assert getaddresses([msg["To"]]) == [("Sam Lee", "sam@example.com")]
    assert settings.site_name in msg["From"]
    assert "confirm" in msg["Subject"].lower()
    assert msg["Message-ID"] and msg["Date"]
    assert msg.get_content_type() == "multipart/alternative"
    text, html = received.part("plain"), received.part("html")
    confirm_links = [u for u in received.links() if "/confirm/" in u]
    assert len(confirm_links) == 1 and confirm_links[0].startswith(settings.base_url + "/confirm/")
    assert confirm_links[0] in html.replace("&amp;", "&")
    assert "Sam" in text

    # Follow the link (the web page does the same; the CLI is the fallback).
    r = invoke("subscribers", "confirm", confirm_links[0])
    assert r.exit_code == 0, r.output
    db = connect(settings.db)
    sub = lifecycle.find(db, "sam@example.com")
    assert sub.status == "active"
    ledger = db.execute("SELECT action, source, consent_text_version FROM consent ORDER BY id").fetchall()
    assert ledger == [("requested", "admin", settings.consent_version), ("confirmed", "cli", settings.consent_version)]

    r = invoke("subscribers", "confirm", confirm_links[0])
    assert r.exit_code == 1 and "already been used" in r.output

    r = invoke("subscribers", "show", "sam@example.com")
    assert "confirmed" in r.output and "active" in r.output


def test_refused_connection_keeps_the_row_for_retry(cli_env, offline_settings, monkeypatch):
    monkeypatch.setenv("FUNNEL_SMTP_URL", offline_settings.smtp_urls[0])
    # The sender's own handling of a relay that goes down: dev mode, because outside
    # it the preflight refuses to start on a dead relay (test_check.py).
    monkeypatch.setenv("FUNNEL_DEV", "1")
    assert invoke("subscribers", "add", "sam@example.com").exit_code == 0
    r = invoke("send", "-q")
    assert "refused the connection" in r.output or "cannot connect" in r.output
    db = connect(cli_env["FUNNEL_DB"])
    status, attempts, error = db.execute("SELECT status, attempts, last_error FROM outbox").fetchone()
    assert status == "retry" and attempts == 1 and "connect" in error


def test_bad_cli_input_is_one_line(cli_env):
    for args, message in [
        (("subscribers", "add", "nope"), "email: 'nope' is not a valid email address"),
        (("subscribers", "add", "a@example.com", "--tz", "Nowhere/Land"), "timezone: unknown time zone"),
        (("subscribers", "add", "a@example.com", "--name", "x\r\nBcc: y@z.com"), "name: the name contains a line break"),
        (("subscribers", "confirm", "forged.token.value"), "not valid"),
        (("subscribers", "show", "ghost@example.com"), "no subscriber"),
    ]:
        r = invoke(*args)
        assert r.exit_code == 1
        error_lines = [line for line in r.output.splitlines() if line.startswith("Error:")]
        assert len(error_lines) == 1 and message in error_lines[0], r.output


def test_every_command_has_help_with_an_example(cli_env):
    def walk(group, path):
        for name, cmd in group.commands.items():
            yield (*path, name), cmd
            if hasattr(cmd, "commands"):
                yield from walk(cmd, (*path, name))

    commands = list(walk(cli.main, ()))
    assert len(commands) >= 10
    for path, _cmd in commands:
        r = invoke(*path, "--help")
        assert r.exit_code == 0
        assert "Example" in r.output, f"`funnel {' '.join(path)} --help` has no example"


def test_init_twice_is_harmless(cli_env):
    first = invoke("init")
    second = invoke("init")
    assert "applied" in first.output or "up to date" in first.output
    assert "up to date" in second.output


def test_locked_database_gives_a_clear_error(cli_env, monkeypatch):
    monkeypatch.setattr("funnel.db.BUSY_TIMEOUT_MS", 200)
    invoke("init")
    blocker = sqlite3.connect(cli_env["FUNNEL_DB"], isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        r = invoke("subscribers", "add", "a@example.com")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert r.exit_code == 1
    assert "locked" in r.output and "nothing was changed" in r.output


def test_read_only_database_gives_a_clear_error(cli_env, monkeypatch):
    """Root ignores file modes, so make the connection itself read-only."""
    invoke("init")
    real_connect = connect

    def read_only(path, **kwargs):
        db = real_connect(path, **kwargs)
        db.execute("PRAGMA query_only = ON")
        return db

    monkeypatch.setattr(cli, "connect", read_only)
    r = invoke("subscribers", "add", "a@example.com")
    assert r.exit_code == 1
    assert "read-only" in r.output and "nothing was changed" in r.output
    assert connect(cli_env["FUNNEL_DB"]).execute("SELECT COUNT(*) FROM subscribers").fetchone()[0] == 0


def test_exports_to_standard_output(cli_env):
    assert invoke("subscribers", "add", "sam@example.com", "--name", "Sam").exit_code == 0
    r = invoke("subscribers", "export")
    assert r.exit_code == 0, r.output
    assert "sam@example.com,Sam," in r.output
    r = invoke("subscribers", "export", "--format", "json", "--email", "sam@example.com")
    assert r.exit_code == 0 and '"action": "requested"' in r.output
