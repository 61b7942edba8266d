"""Bounce reports we wrote ourselves (tests/data/dsn/): parsing, row lookup, Mailman scoring."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from funnel.errors import InputError
from funnel.settings import test_settings
from subscribers import bounces, lifecycle, tokens

DSN = Path(__file__).parent / "data" / "dsn"


def signed(name: str, settings) -> bytes:
    """A sample report whose unsigned bounce+ROW@ addresses are signed as we send them."""
    return re.sub(
        rb"bounce\+(\d+)@",
        lambda m: tokens.signed_local_part(settings, "bounce", int(m.group(1))).encode() + b"@",
        (DSN / f"{name}.eml").read_bytes(),
    )


@pytest.fixture
def settings(tmp_path, smtp_server):
    """The sample reports were sent to bounce+N@clinic.example: the sender domain they name."""
    return test_settings(tmp_path, smtp_urls=(smtp_server.url,), from_addr="news@clinic.example")


@pytest.fixture
def rows(db, mailings):
    """Rows 1-3 with the Message-IDs the sample reports quote."""
    made = {}
    for name, addr in (
        ("hard", "gone@example.com"),
        ("soft", "full@example.org"),
        ("complaint", "angry@isp.example"),
    ):
        rid = mailings.queue(mailings.subscriber(addr), addr)
        db.execute(
            "UPDATE outbox SET message_id = ? WHERE id = ?",
            (f"<{name}-original@clinic.example>", rid),
        )
        made[name] = rid
    assert list(made.values()) == [1, 2, 3]
    return made


def test_samples_parse_and_classify(settings):
    hard = bounces.parse_report((DSN / "hard.eml").read_bytes(), settings)
    assert (hard.kind, hard.status, hard.recipient, hard.verp) == (
        "hard",
        "5.1.1",
        "gone@example.com",
        "bounce+1",
    )
    assert hard.message_id == "<hard-original@clinic.example>" and "User unknown" in hard.diagnostic
    soft = bounces.parse_report((DSN / "soft.eml").read_bytes(), settings)
    assert (soft.kind, soft.status, soft.verp, soft.message_id) == (
        "soft",
        "4.2.2",
        None,
        "<soft-original@clinic.example>",
    )
    arf = bounces.parse_report((DSN / "complaint.eml").read_bytes(), settings)
    assert (arf.kind, arf.recipient, arf.message_id) == (
        "complaint",
        "angry@isp.example",
        "<complaint-original@clinic.example>",
    )
    assert arf.diagnostic == "feedback; abuse"
    assert arf.verp == "bounce+3"  # from Original-Mail-From
    assert arf.recipients == ("angry@isp.example", "angry@isp.example")
    with pytest.raises(InputError, match="not a delivery report: Content-Type is text/plain"):
        bounces.parse_report((DSN / "unparseable.eml").read_bytes(), settings)


@pytest.mark.parametrize("data, reason", [
    (b"", "the file is empty"),
    (b"Content-Type: multipart/report; report-type=disposition-notification; boundary=x\n\n--x--\n",
     "report-type 'disposition-notification'"),
    (b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\n\n--x\n"
     b"Content-Type: text/plain\n\nhi\n--x--\n", "without a message/delivery-status part"),
    (b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\n\n--x\n"
     b"Content-Type: message/delivery-status\n\nReporting-MTA: dns; a\n\nAction: failed\nStatus: bogus\n--x--\n",
     "no valid Status field"),
])  # fmt: skip
def test_bad_reports_say_why(settings, data, reason):
    with pytest.raises(InputError, match=reason):
        bounces.parse_report(data, settings)


def test_lookup_by_signed_verp_then_message_id(db, settings, rows):
    hard = bounces.parse_report(signed("hard", settings), settings)
    soft = bounces.parse_report((DSN / "soft.eml").read_bytes(), settings)
    assert bounces.find_row(db, settings, hard)[0] == rows["hard"]
    assert bounces.find_row(db, settings, soft)[0] == rows["soft"]
    # A signed VERP wins over a quoted Message-ID that names another row
    mixed = signed("hard", settings).replace(b"hard-original", b"soft-original")
    assert bounces.find_row(db, settings, bounces.parse_report(mixed, settings))[0] == rows["hard"]
    # The signature survives an MTA that upper-cases the local part
    shouted = re.sub(rb"bounce\+[^@]+", lambda m: m.group(0).upper(), signed("hard", settings))
    assert b"BOUNCE+1-" in shouted
    assert bounces.find_row(db, settings, bounces.parse_report(shouted, settings))[0] == rows["hard"]
    # An unsigned address in To does not hide the signed one Postfix put in X-Original-To
    both = (DSN / "hard.eml").read_bytes().replace(
        b"Delivered-To: bounce+1@clinic.example",
        b"X-Original-To: " + tokens.signed_address(settings, "bounce", 1).encode(),
    )
    parsed = bounces.parse_report(both, settings)
    assert parsed.verp == "bounce+1" and len(parsed.verps) == 2
    assert bounces.find_row(db, settings, parsed)[0] == rows["hard"]
    # no VERP, no known Message-ID: no row
    orphan = (DSN / "soft.eml").read_bytes().replace(b"soft-original", b"unknown")
    with pytest.raises(bounces.Unmatched, match="no outbox row matches"):
        bounces.find_row(db, settings, bounces.parse_report(orphan, settings))
    # the old unsigned bounce+ROW@ is no longer trusted, even with a known Message-ID
    with pytest.raises(bounces.Unmatched, match="the bounce address is not ours"):
        bounces.find_row(db, settings, bounces.parse_report((DSN / "hard.eml").read_bytes(), settings))


def test_maildir_processing_via_cli(db, settings, cli_env, rows, tmp_path):
    box = tmp_path / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (box / sub).mkdir(parents=True)
    for i, name in enumerate(("hard", "soft", "complaint", "unparseable")):
        (box / "new" / f"17000000{i}.M{i}P1.host").write_bytes(signed(name, settings))
    r = CliRunner().invoke(cli.main, ["bounces", "process", str(box)])
    assert r.exit_code == 0, r.output
    assert r.stderr.splitlines() == [
        f"{box / 'new' / '170000003.M3P1.host'}: not a delivery report: Content-Type is "
        "text/plain, expected multipart/report"
    ]
    assert r.stdout.strip() == (
        "3 report(s) recorded (1 hard, 1 soft, 1 complaint); 2 subscriber(s) suppressed; "
        "1 left in place (see above)"
    )
    assert sorted(p.name for p in (box / "cur").iterdir()) == [
        "170000000.M0P1.host:2,S",
        "170000001.M1P1.host:2,S",
        "170000002.M2P1.host:2,S",
    ]
    assert [p.name for p in (box / "new").iterdir()] == ["170000003.M3P1.host"]

    assert lifecycle.find(db, "gone@example.com").status == "bounced"
    assert lifecycle.find(db, "angry@isp.example").status == "complained"
    assert lifecycle.find(db, "full@example.org").status == "active"
    assert db.execute(
        "SELECT outbox_id, kind, status_code FROM bounces ORDER BY outbox_id"
    ).fetchall() == [(1, "hard", "5.1.1"), (2, "soft", "4.2.2"), (3, "complaint", None)]
    assert (
        db.execute(
            "SELECT bounce_score FROM subscribers WHERE email = 'full@example.org'"
        ).fetchone()[0]
        == 0.5
    )

    # A second run skips the seen messages and reports the bad one again.
    r = CliRunner().invoke(cli.main, ["bounces", "process", str(box)])
    assert r.stdout.startswith("0 report(s) recorded") and len(r.stderr.splitlines()) == 1
    # Plain files are never moved; the same report twice is recorded once.
    r = CliRunner().invoke(cli.main, ["bounces", "process", str(DSN / "soft.eml")])
    assert "1 already recorded" in r.stdout
    assert (DSN / "soft.eml").exists()
    assert db.execute("SELECT COUNT(*) FROM bounces").fetchone()[0] == 3


def test_bad_paths(cli_env, tmp_path):
    r = CliRunner().invoke(cli.main, ["bounces", "process", str(tmp_path)])
    assert r.exit_code == 1 and "a folder that is not a Maildir" in r.output
    r = CliRunner().invoke(cli.main, ["bounces", "process", str(tmp_path / "nope.eml")])
    assert r.exit_code == 1 and "no such file or folder" in r.output


def _soft(db, settings, sid, now):
    return bounces.record(
        db,
        settings,
        subscriber_id=sid,
        outbox_id=None,
        kind="soft",
        status_code="4.2.2",
        diagnostic="mailbox full",
        source="test",
        now=now,
    )


def test_soft_bounces_score_once_a_day_and_suppress_at_five(db, settings, clock, mailings):
    sid = mailings.subscriber("full@example.org")
    assert _soft(db, settings, sid, clock()).score == 0.5
    assert (
        _soft(db, settings, sid, clock.advance(hours=3)).score == 0.5
    )  # same day: not counted again
    scores = []
    for _ in range(9):
        clock.advance(days=1)
        result = _soft(db, settings, sid, clock())
        scores.append(result.score)
    assert scores[-1] == 5.0 and result.suppressed == "bounced"
    assert lifecycle.find(db, "full@example.org").status == "bounced"
    assert (
        db.execute("SELECT COUNT(*) FROM bounces WHERE subscriber_id = ?", (sid,)).fetchone()[0]
        == 11
    )


def test_score_resets_after_a_quiet_week(db, settings, clock, mailings):
    sid = mailings.subscriber("full@example.org")
    for _ in range(4):
        _soft(db, settings, sid, clock.advance(days=1))
    assert (
        db.execute("SELECT bounce_score FROM subscribers WHERE id = ?", (sid,)).fetchone()[0] == 2.0
    )
    clock.advance(days=settings.bounce_reset_days)
    assert _soft(db, settings, sid, clock()).score == 0.5


def test_every_hard_bounce_suppresses_at_once_by_default(db, settings, clock, mailings):
    blocked = mailings.subscriber("blocked@example.com")
    r = bounces.record(
        db, settings, subscriber_id=blocked, outbox_id=None, kind="hard", status_code="5.7.1",
        diagnostic="spam", source="t", now=clock(),
    )  # fmt: skip
    assert r.suppressed == "bounced" and lifecycle.is_suppressed(db, "blocked@example.com")


def test_hard_bounces_suppress_at_once_unless_policy(db, settings, clock, mailings):
    settings = settings.replace(suppress_policy_bounces=False)
    gone = mailings.subscriber("gone@example.com")
    blocked = mailings.subscriber("blocked@example.com")
    r = bounces.record(
        db,
        settings,
        subscriber_id=gone,
        outbox_id=None,
        kind="hard",
        status_code="5.1.1",
        diagnostic="no such user",
        source="t",
        now=clock(),
    )
    assert r.suppressed == "bounced" and lifecycle.is_suppressed(db, "gone@example.com")
    r = bounces.record(
        db,
        settings,
        subscriber_id=blocked,
        outbox_id=None,
        kind="hard",
        status_code="5.7.1",
        diagnostic="spam",
        source="t",
        now=clock(),
    )
    assert (r.suppressed, r.score) == (None, 1.0)
    for _ in range(4):
        r = bounces.record(
            db,
            settings,
            subscriber_id=blocked,
            outbox_id=None,
            kind="hard",
            status_code="5.7.1",
            diagnostic="spam",
            source="t",
            now=clock.advance(days=1),
        )
    assert r.suppressed == "bounced"  # five days of policy blocks reach the threshold
