"""`funnel check`, the preflight before sending, and mail held by a configuration error.

Real parts: the CLI (CliRunner, or a subprocess for `serve`), a SQLite file,
the live aiosmtpd sink whose received bytes are parsed, and real TCP probes.
"""

from __future__ import annotations

import email.policy
import os
import shutil
import subprocess
import sys
from datetime import timedelta
from email import message_from_bytes
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import free_port

import cli
from campaigns import check, sender
from campaigns.webinars import ensure_demo_webinar, webinar_files
from funnel import outbox
from funnel.db import connect
from funnel.errors import SettingsError
from funnel.settings import REPO_ROOT, load_settings, test_settings

BUNDLED_STEP = REPO_ROOT / "content" / "series" / "importance-of-exercise" / "01-therapy-before-fitness.md"


def invoke(*args):
    return CliRunner().invoke(cli.main, list(args))


@pytest.fixture
def bare_env(tmp_path, monkeypatch):
    """No settings at all beyond a database path and a relay nobody listens on:
    what a new production install runs with before it is configured."""
    for key in list(os.environ):
        if key.startswith("FUNNEL_"):
            monkeypatch.delenv(key)
    env = {
        "FUNNEL_DB": str(tmp_path / "funnel.db"),
        "FUNNEL_CONFIG": str(tmp_path / "absent.toml"),
        "FUNNEL_SMTP_URL": f"smtp://127.0.0.1:{free_port()}",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


# ----------------------------------------------------------------- funnel check
def test_check_on_default_settings_lists_every_placeholder(bare_env):
    r = invoke("check")
    assert r.exit_code == 1
    out = lines(r.stdout)
    by_setting = {}
    for line in out:
        by_setting.setdefault(line.split(":", 1)[0], []).append(line)
    assert "'newsletter@clinic.example' is a placeholder" in by_setting["FUNNEL_FROM"][0]
    assert "'1 Example Street, London, UK' is the example address" in by_setting["FUNNEL_POSTAL_ADDRESS"][0]
    base = " | ".join(by_setting["FUNNEL_BASE_URL"])
    assert "'http://127.0.0.1:8000' is on loopback" in base and "is plain http://" in base
    assert "no secret key is set" in by_setting["FUNNEL_SECRET_KEYS"][0]
    assert "refuses connections" in by_setting["FUNNEL_SMTP_URL"][0]
    # Five bundled steps carry an appointment button: with no URL set it goes to our own
    # /appointment page, so that is no problem.
    assert not [line for line in out if "appointment" in line.lower()]
    assert len(out) == 1 + 1 + 2 + 1 + 1  # every problem, one line each, nothing else
    assert lines(r.stderr)[-1] == f"{len(out)} problem(s) found"
    assert lines(r.stderr)[0].startswith("warning: FUNNEL_CLINIC_EMAIL: not set")
    assert not Path(bare_env["FUNNEL_DB"]).exists()  # checking creates nothing


def test_check_passes_on_production_settings_and_no_network_skips_the_relays(cli_env, monkeypatch):
    r = invoke("check")
    assert r.exit_code == 0 and r.stdout == "no problems found\n", r.output
    dead = f"smtp://127.0.0.1:{free_port()}"
    monkeypatch.setenv("FUNNEL_SMTP_URL", dead)
    r = invoke("check")
    assert r.exit_code == 1
    assert lines(r.stdout) == [
        f"FUNNEL_SMTP_URL: the relay 127.0.0.1:{dead.rsplit(':', 1)[1]} refuses connections "
        "(Connection refused); start it or fix the URL"
    ]
    assert invoke("check", "--no-network").exit_code == 0


def test_trusted_proxies_with_a_loopback_base_url(settings, clock):
    s = settings.replace(trusted_proxies=1, base_url="https://localhost:8443")
    found = check.problems(s, clock(), network=False)
    assert any(line.startswith("FUNNEL_TRUSTED_PROXIES: 1 proxies are trusted while") for line in found)
    assert any(line.startswith("FUNNEL_BASE_URL: 'https://localhost:8443' is on loopback") for line in found)
    assert check.problems(settings.replace(trusted_proxies=1), clock(), network=False) == []


def test_placeholder_names():
    for host in ("clinic.example", "meet.clinic.example", "example.com", "www.example.org",
                 "shop.example.net", "news.test", "x.invalid", "localhost"):
        assert check.reserved_name(host), host
    for host in ("backinmotion-physio.co.uk", "examples.com", "example.co.uk", "myexample.com"):
        assert check.reserved_name(host) is None, host


def test_database_that_cannot_be_written(settings, tmp_path, clock):
    missing = settings.replace(db=str(tmp_path / "nowhere" / "funnel.db"))
    assert check.problems(missing, clock(), network=False) == [
        f"FUNNEL_DB: the folder {tmp_path / 'nowhere'} does not exist; create it, then run `funnel init`"
    ]
    (tmp_path / "adir").mkdir()
    folder = settings.replace(db=str(tmp_path / "adir"))
    assert check.problems(folder, clock(), network=False) == [
        f"FUNNEL_DB: {tmp_path / 'adir'} is a folder, not a database file"
    ]


def test_bundled_webinar_in_the_past_and_its_placeholder_join_url(db, settings, clock):
    (path,) = [p for p in webinar_files(settings) if p.stem == "spine-health"]
    w = ensure_demo_webinar(db, settings, clock(), path)
    found = check.problems(settings, clock(), network=False)
    assert found == [
        "webinar spine-health: join URL: 'https://meet.clinic.example/spine-health' is a placeholder "
        "(clinic.example is reserved for examples); set the real URL with "
        "`funnel webinar edit spine-health --join-url URL`"
    ]
    later = w.ends_at + timedelta(days=1)
    (line,) = check.problems(settings, later, network=False)
    local = w.starts_at.astimezone(w.zone)
    assert line.startswith(f"{path}: webinar spine-health was loaded with the date {local:%Y-%m-%d %H:%M}")
    assert "which has passed" in line


# ----------------------------------------------------------------- preflight
def test_send_refuses_to_start_with_placeholders_and_sends_nothing(cli_env, monkeypatch, smtp_server):
    assert invoke("subscribers", "add", "sam@example.com").exit_code == 0  # queued with good settings
    monkeypatch.setenv("FUNNEL_FROM", "newsletter@clinic.example")
    monkeypatch.delenv("FUNNEL_POSTAL_ADDRESS")
    r = invoke("send", "-q")
    assert r.exit_code == 1
    err = lines(r.stderr)
    assert err[0].startswith("FUNNEL_FROM: 'newsletter@clinic.example' is a placeholder")
    assert err[1].startswith("FUNNEL_POSTAL_ADDRESS: '1 Example Street, London, UK' is the example")
    assert err[2] == "Error: 2 problem(s) above (see `funnel check`); nothing was sent or queued"
    assert r.stdout == ""
    assert smtp_server.messages == []
    db = connect(cli_env["FUNNEL_DB"])
    assert db.execute("SELECT status, attempts FROM outbox").fetchall() == [("queued", 0)]

    monkeypatch.setenv("FUNNEL_FROM", cli_env["FUNNEL_FROM"])
    monkeypatch.setenv("FUNNEL_POSTAL_ADDRESS", cli_env["FUNNEL_POSTAL_ADDRESS"])
    r = invoke("send", "-q")
    assert r.exit_code == 0 and r.stdout.startswith("1 sent"), r.output
    (got,) = smtp_server.messages
    assert got.rcpt_tos == ["sam@example.com"]


@pytest.mark.parametrize(
    "args",
    [
        ("subscribers", "add", "a@example.com"),
        ("series", "enroll", "importance-of-exercise", "--segment", "all"),
        ("worker", "--interval", "0.1"),
    ],
)
def test_commands_that_queue_mail_refuse_with_a_placeholder(cli_env, monkeypatch, args):
    monkeypatch.setenv("FUNNEL_BASE_URL", "https://news.example.com")
    r = invoke(*args)
    assert r.exit_code == 1
    assert lines(r.stderr) == [  # one problem: one line
        "Error: FUNNEL_BASE_URL: 'https://news.example.com' is a placeholder (example.com is reserved "
        "for examples); set the real URL; nothing was sent or queued"
    ]
    db = connect(cli_env["FUNNEL_DB"], migrate=True)
    assert db.execute("SELECT COUNT(*) FROM subscribers").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0


def programme_series(tmp_path) -> Path:
    """A copy of the bundled series whose part 1 has a programme button instead."""
    content = tmp_path / "content"
    shutil.copytree(BUNDLED_STEP.parent, content / "series" / BUNDLED_STEP.parent.name)
    step = content / "series" / BUNDLED_STEP.parent.name / BUNDLED_STEP.name
    step.write_text(step.read_text(encoding="utf-8").replace("kind: appointment", "kind: programme"),
                    encoding="utf-8")
    return content


NO_COURSE = ("FUNNEL_PROGRAMME_SERIES: the programme buttons start the series 'no-such-course', "
             "which is in no content folder; set FUNNEL_PROGRAMME_SERIES to a series slug or "
             "FUNNEL_PROGRAMME_URL to a page")  # fmt: skip


def test_programme_buttons_that_lead_nowhere_block_send_in_one_line(cli_env, monkeypatch, smtp_server,
                                                                     tmp_path):
    monkeypatch.delenv("FUNNEL_APPOINTMENT_URL")  # appointment buttons have our own page
    monkeypatch.delenv("FUNNEL_PROGRAMME_URL")  # programme buttons start the course...
    monkeypatch.setenv("FUNNEL_PROGRAMME_SERIES", "no-such-course")  # ...which isn't there
    monkeypatch.setenv("FUNNEL_CONTENT_DIR", str(programme_series(tmp_path)))
    r = invoke("send")
    assert r.exit_code == 1
    assert [line for line in lines(r.stderr) if "FUNNEL_PROGRAMME" in line] == [
        f"Error: {NO_COURSE}; nothing was sent or queued"
    ]
    assert smtp_server.messages == []


def test_serve_refuses_trusted_proxies_with_loopback_base_url(cli_env):
    env = {**os.environ, **cli_env, "FUNNEL_TRUSTED_PROXIES": "1",
           "FUNNEL_BASE_URL": "https://127.0.0.1:8000"}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "serve", "--port", str(free_port())],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    err = proc.stderr.splitlines()
    assert err[0].startswith("FUNNEL_BASE_URL: 'https://127.0.0.1:8000' is on loopback")
    assert err[1].startswith("FUNNEL_TRUSTED_PROXIES: 1 proxies are trusted while FUNNEL_BASE_URL")
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_dev_mode_does_not_block(bare_env, monkeypatch):
    monkeypatch.setenv("FUNNEL_DEV", "1")
    r = invoke("subscribers", "add", "a@example.com")
    assert r.exit_code == 0 and "confirmation email is queued" in r.output, r.output


def test_init_needs_no_secret_key(bare_env):
    r = invoke("init")
    assert r.exit_code == 0 and "applied" in r.stdout, r.output
    db = connect(bare_env["FUNNEL_DB"])
    assert "outbox" in db.table_names()
    assert invoke("subscribers", "list").exit_code == 1  # other commands still need one


# ----------------------------------------------------------------- held for configuration
def test_missing_cta_url_holds_the_row_until_the_setting_is_fixed(tmp_path, smtp_server, clock, db, mailings,
                                                                  cli_env, monkeypatch):
    broken = test_settings(tmp_path, smtp_urls=(smtp_server.url,), programme_url="",
                           programme_series="no-such-course", content_dir=str(programme_series(tmp_path)))
    sid = mailings.subscriber("sam@example.com", "Sam Lee")
    rid = outbox.enqueue(
        db, broken, dedupe_key="series:importance-of-exercise:01:1", kind="series",
        subscriber_id=sid, to_addr="sam@example.com", due_at=clock(), now=clock(),
        stream="series:importance-of-exercise", ref="series:importance-of-exercise:01-therapy-before-fitness",
        expires_at=clock() + timedelta(hours=96),
        data={"series": "importance-of-exercise", "step": "01-therapy-before-fitness", "part": 1},
    )  # fmt: skip
    reason = NO_COURSE

    summary = sender.send_due(db, broken, clock)
    assert smtp_server.messages == []
    assert summary.held == 1 and summary.failed == 0 and summary.errors == [f"held: {reason}"]
    row = mailings.row(rid)
    assert (row["status"], row["attempts"], row["last_error"]) == ("queued", 0, reason)
    assert row["held_config"] == sender.config_fingerprint(broken)

    # The same configuration does not claim it again (a worker tick costs nothing)...
    again = sender.send_due(db, broken, clock)
    assert again.claimed == 0 and mailings.row(rid)["attempts"] == 0
    # ...nor does time expire it: four days later it is still waiting.
    clock.advance(days=5)
    assert sender.send_due(db, broken, clock).claimed == 0
    assert mailings.row(rid)["status"] == "queued"

    # The reason is visible in `funnel check` and the series timeline.
    r = invoke("check", "--no-network")
    assert r.exit_code == 1 and lines(r.stdout) == [f"1 message(s) held: {reason}"]
    r = invoke("series", "show", "importance-of-exercise", "--timeline")
    assert f"held: 1 message(s) of this series wait in the queue: {reason}" in r.stdout

    # Fixing the setting: the next send delivers it.
    fixed = broken.replace(programme_url="https://backinmotion-physio.co.uk/book")
    summary = sender.send_due(db, fixed, clock)
    assert summary.sent == 1 and summary.held == 0
    (got,) = smtp_server.messages
    msg = message_from_bytes(got.data, policy=email.policy.default)
    assert msg["Message-ID"] == row["message_id"]
    assert "https://backinmotion-physio.co.uk/book" in got.followed_links(db, fixed, clock())
    row = mailings.row(rid)
    assert (row["status"], row["attempts"], row["held_config"]) == ("sent", 1, None)
    assert invoke("check", "--no-network").exit_code == 0


def test_a_recipient_problem_still_fails_the_row(db, settings, clock, smtp_server, mailings):
    sid = mailings.subscriber("sam@example.com", "Sam Lee")
    rid = mailings.queue(sid, "bad\r\nBcc: x@example.com")
    summary = sender.send_due(db, settings, clock)
    assert summary.failed == 1 and summary.held == 0 and smtp_server.messages == []
    row = mailings.row(rid)
    assert row["status"] == "failed" and row["held_config"] is None


# ----------------------------------------------------------------- From with a display name
def test_from_with_a_display_name(cli_env, monkeypatch, smtp_server):
    monkeypatch.setenv("FUNNEL_FROM", "Back in Motion <news@backinmotion-physio.co.uk>")
    s = load_settings()
    assert (s.from_name, s.from_addr) == ("Back in Motion", "news@backinmotion-physio.co.uk")
    assert invoke("subscribers", "add", "sam@example.com").exit_code == 0
    r = invoke("send", "-q")
    assert r.exit_code == 0, r.output
    (got,) = smtp_server.messages
    msg = got.message
    (sender_addr,) = msg["From"].addresses
    assert (sender_addr.display_name, sender_addr.addr_spec) == ("Back in Motion", "news@backinmotion-physio.co.uk")
    assert msg["Message-ID"].endswith("@backinmotion-physio.co.uk>")
    assert got.mail_from.startswith("bounce+") and got.mail_from.endswith("@backinmotion-physio.co.uk")


def test_from_with_a_broken_display_name_is_one_line(cli_env, monkeypatch):
    monkeypatch.setenv("FUNNEL_FROM", "Back in Motion <news@")
    r = invoke("check")
    assert r.exit_code == 1
    assert lines(r.output) == [
        "Error: FUNNEL_FROM: 'Back in Motion <news@' is not of the form 'Name <address@domain>'"
    ]


def test_settings_without_a_secret_never_fall_back_to_the_dev_key(bare_env):
    lenient = load_settings(require_secret=False)
    assert lenient.secret_keys == ()
    with pytest.raises(SettingsError, match="^FUNNEL_SECRET_KEYS: no secret key is set"):
        load_settings()


def test_held_broadcast_shows_in_campaign_status_and_check(tmp_path, smtp_server, clock, db, cli_env,
                                                           monkeypatch):
    from test_broadcasts import add_active

    from campaigns import broadcasts

    good = test_settings(tmp_path, smtp_urls=(smtp_server.url,))
    add_active(db, "q@example.com")
    cid = broadcasts.create(db, good, clock(), subject="Winter hours", body_md="Open late.",
                            ctas=[{"kind": "programme", "text": "Start"}])  # fmt: skip
    broadcasts.schedule_campaign(db, good, cid, clock(), send_now=True)
    broadcasts.queue(db, good, cid, clock())
    broken = good.replace(programme_series="no-such-course")  # e.g. the course was renamed after scheduling
    reason = NO_COURSE

    assert sender.send_due(db, broken, clock).held == 1 and smtp_server.messages == []
    found = check.problems(broken, clock(), network=False)
    bundled = str(REPO_ROOT / "content") + "/"
    assert [line for line in found if not line.startswith(bundled)] == [NO_COURSE, f"1 message(s) held: {reason}"]
    monkeypatch.setattr(cli.App, "now", lambda self: clock())
    r = invoke("campaign", "status", str(cid))
    assert f"  held       1  {reason}" in r.stdout.splitlines(), r.output
    assert "  queued     1" in r.stdout.splitlines()
    assert sender.send_due(db, good, clock).sent == 1
    assert smtp_server.messages[0].message["Subject"] == "Winter hours"


def test_unknown_cta_kind_in_loaded_content_names_the_file(tmp_path, settings, clock):
    folder = tmp_path / "content" / "series" / "odd"
    folder.mkdir(parents=True)
    (folder / "series.toml").write_text('title = "Odd"\ncadence = "weekly"\nsteps = ["01-a.md"]\n')
    (folder / "01-a.md").write_text(
        "---\ntitle: A\npart: 1\nsubject: A\nctas:\n  - kind: coupon\n    text: Save\n---\nHello.\n"
    )
    found = check.content_problems(settings.replace(content_dir=str(tmp_path / "content")))
    assert found[0].startswith(f"{folder / '01-a.md'}:")
    assert "unknown kind 'coupon'" in found[0]


def test_database_check_changes_nothing_and_copes_with_odd_paths(tmp_path, smtp_server, clock):
    odd = tmp_path / "a dir?#%"
    odd.mkdir()
    s = test_settings(odd, smtp_urls=(smtp_server.url,))
    db = connect(s.db, migrate=True)
    db.execute("CREATE TABLE marker (x)")
    before = Path(s.db).read_bytes()
    assert check.problems(s, clock()) == []
    assert db.execute("SELECT COUNT(*) FROM marker").fetchone() == (0,)
    assert Path(s.db).read_bytes() == before
