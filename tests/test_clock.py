"""One clock: every door reads "now" from funnel.clock, which a test can replace.

The autouse fixture in conftest installs the test's FakeClock; these tests
check that a CLI command, a page of an app made with create_app's default
clock, and a nested override all see the fake instant, never the real one.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

import cli
import web
from funnel import clock as clocks
from funnel.db import connect, iso, parse_iso, utcnow
from subscribers import lifecycle, optin, tokens


def test_the_installed_source_is_now_for_everyone_and_use_restores_it(clock):
    assert clocks.now() == utcnow() == clock() == cli.App().now()
    clock.advance(days=1000)
    assert clocks.now() == clock()  # the fixture installed the clock itself, not a copy
    other = datetime(2040, 2, 29, 23, 59, tzinfo=UTC)
    with clocks.use(lambda: other):
        assert clocks.now() == utcnow() == other
        with clocks.use(lambda: other + timedelta(hours=1)):
            assert clocks.now() == other + timedelta(hours=1)
        assert clocks.now() == other  # nested blocks restore the outer source
    assert clocks.now() == clock()


def test_a_naive_source_is_refused(clock):
    with clocks.use(lambda: datetime(2030, 1, 1)), pytest.raises(ValueError, match="naive"):
        clocks.now()


def test_cli_commands_stamp_rows_with_the_injected_clock(cli_env, settings, clock):
    clock.advance(days=2000)  # years away from the real date: a real-clock read shows
    first = clock()
    r = CliRunner().invoke(cli.main, ["subscribers", "add", "one@example.com"])
    assert r.exit_code == 0, r.output
    clock.advance(days=3, minutes=7)
    r = CliRunner().invoke(cli.main, ["subscribers", "add", "two@example.com"])
    assert r.exit_code == 0, r.output
    db = connect(settings.db)
    stamps = dict(db.execute("SELECT email, created_at FROM subscribers").fetchall())
    due = dict(db.execute("SELECT to_addr, due_at FROM outbox WHERE kind = 'confirm'").fetchall())
    db.close()
    assert stamps == {"one@example.com": iso(first), "two@example.com": iso(clock())}
    assert parse_iso(due["two@example.com"]) == clock()


def test_default_app_clock_judges_link_expiry_by_the_injected_now(settings, clock):
    db = connect(settings.db, migrate=True)
    sid = optin.signup(db, settings, "c@example.com", clock()).subscriber_id
    token = tokens.confirm_token(settings, sid, lifecycle.get(db, sid).confirm_nonce, clock())
    app = web.create_app(settings)  # no clock passed: the default reads funnel.clock
    client = app.test_client()
    assert client.get(f"/confirm/{token}").status_code == 200
    clock.advance(days=settings.confirm_max_age_days + 0.01)  # only the fake clock moves
    r = client.get(f"/confirm/{token}")
    assert r.status_code == 400 and "doesn't work any more" in r.get_data(as_text=True)
    assert lifecycle.get(db, sid).status == "pending"
    app.extensions["funnel"].close()
    db.close()
