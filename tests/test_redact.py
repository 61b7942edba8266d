"""Secrets never reach an error or log line (issue 10 item 8).

The relay password is shown as *** by one function, funnel.settings.redact,
in settings errors, object reprs, transport errors and every CLI line.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from conftest import free_port

import cli
from campaigns.smtp import Relay
from funnel.errors import SettingsError
from funnel.settings import load_settings, parse_smtp_url, redact

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (f"smtp://apikey:{SECRET}@relay.example:587", "smtp://apikey:***@relay.example:587"),
        (f"'smtps://u:{SECRET}@h?starttls=1'", "'smtps://u:***@h?starttls=1'"),
        (f"smtp://u:{SECRET}@with@at@h:25/x", "smtp://u:***@h:25/x"),  # a raw "@" in the password
        (f"smtp://:{SECRET}@h", "smtp://:***@h"),
        (f"relays a smtp://a:{SECRET}@h1, smtp://b:{SECRET}@h2", "relays a smtp://a:***@h1, smtp://b:***@h2"),
        ("smtp://127.0.0.1:8025", "smtp://127.0.0.1:8025"),  # host:port is not a password
        ("smtp://user@h:25", "smtp://user@h:25"),
    ],
)
def test_redact_hides_only_the_password(text, shown):
    assert redact(text) == shown


@pytest.mark.parametrize(
    "url",
    [
        f"smtp://apikey:{SECRET}@relay.example:587?bogus=1",
        f"ftp://apikey:{SECRET}@relay.example",
        f"smtp://apikey:{SECRET}@relay.example:99999",
    ],
)
def test_settings_errors_show_the_url_without_its_password(url):
    with pytest.raises(SettingsError) as err:
        parse_smtp_url(url)
    message = str(err.value)
    assert message.startswith("FUNNEL_SMTP_URL: ")
    assert SECRET not in message and "apikey:***@relay.example" in message


def test_cli_error_line_redacts_the_relay_password(cli_env, monkeypatch):
    monkeypatch.setenv("FUNNEL_SMTP_URL", f"smtp://apikey:{SECRET}@relay.example:587?bogus=1")
    r = CliRunner().invoke(cli.main, ["send"], catch_exceptions=False)
    assert r.exit_code == 1
    assert SECRET not in r.output
    assert r.stderr.strip() == (
        "Error: FUNNEL_SMTP_URL: unknown option 'bogus' in 'smtp://apikey:***@relay.example:587?bogus=1'; "
        "known options are daily, hourly, rate, starttls, timeout"
    )


def test_reprs_of_settings_and_relay_hold_no_secret(cli_env, monkeypatch):
    monkeypatch.setenv("FUNNEL_SMTP_URL", f"smtp://apikey:{SECRET}@relay.example:587")
    settings = load_settings()
    relay = settings.relays[0]
    assert relay.password == SECRET  # still there for AUTH
    for shown in (repr(settings), repr(relay), str(relay)):
        assert SECRET not in shown
        assert cli_env["FUNNEL_SECRET_KEYS"] not in shown


def test_transport_error_and_worker_log_lines_hold_no_secret(cli_env, monkeypatch, settings):
    port = free_port()  # nothing listens here
    url = f"smtp://apikey:{SECRET}@127.0.0.1:{port}?timeout=2"
    with Relay(parse_smtp_url(url)) as relay:
        result = relay.send("news@clinic.example", "a@example.com", b"x")
    assert f"127.0.0.1:{port}" in result.message and SECRET not in result.message

    # the preflight that refuses to queue mail for a dead relay names it, without the password
    monkeypatch.setenv("FUNNEL_SMTP_URL", url)
    runner = CliRunner()
    r = runner.invoke(cli.main, ["subscribers", "add", "a@example.com"], catch_exceptions=False)
    assert r.exit_code == 1 and f"127.0.0.1:{port}" in r.stderr and SECRET not in r.output + r.stderr
    # the same failure through `funnel send` (dev mode skips the preflight): a queued confirmation
    monkeypatch.setenv("FUNNEL_DEV", "1")
    assert runner.invoke(cli.main, ["subscribers", "add", "a@example.com"]).exit_code == 0
    r = runner.invoke(cli.main, ["send"], catch_exceptions=False)
    assert f"127.0.0.1:{port}" in r.stderr
    assert SECRET not in r.output + r.stderr
