"""The inbox that mail comes back to: signed VERP, forged reports, mailto unsubscribe.

Every message here starts from a real one: our sender delivers to the live
SMTP sink, and the reports and unsubscribe requests are built from what the
sink received (its envelope sender, its List-Unsubscribe header), then read
through a real Maildir with ``funnel inbox process`` / ``funnel bounces process``.
"""

from __future__ import annotations

import mailbox
import re

import pytest
from click.testing import CliRunner

import cli
from campaigns import sender
from funnel.settings import test_settings
from subscribers import lifecycle, tokens


@pytest.fixture
def settings(tmp_path, smtp_server):
    """The hand-written reports below are addressed to @clinic.example: our sender domain here."""
    return test_settings(tmp_path, smtp_urls=(smtp_server.url,), from_addr="news@clinic.example")


@pytest.fixture
def box(tmp_path):
    return mailbox.Maildir(tmp_path / "Maildir", create=True)


def deliver(db, settings, clock, smtp_server, mailings, address, stream="broadcasts"):
    """Queue and send one bulk email to ``address``; returns (row id, what the sink received)."""
    sid = lifecycle.find(db, address).id if lifecycle.find(db, address) else mailings.subscriber(address)
    rid = mailings.queue(sid, address, stream=stream)
    smtp_server.clear()
    sender.send_due(db, settings, clock)
    (received,) = smtp_server.to(address)
    return rid, received


def dsn(to: str, final_recipient: str, message_id: str = "<unknown@example.net>") -> bytes:
    """A Postfix-style hard bounce mailed to ``to`` about ``final_recipient``."""
    return (
        f"Return-Path: <>\r\nDelivered-To: {to}\r\nTo: {to}\r\n"
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: <{abs(hash((to, final_recipient, message_id)))}@mx.example.net>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nCould not deliver.\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.net\r\n\r\n"
        f"Final-Recipient: rfc822; {final_recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n"
        "--b\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"To: {final_recipient}\r\nMessage-ID: {message_id}\r\n"
        "--b--\r\n"
    ).encode()


def arf(mail_from: str, rcpt_to: str, message_id: str = "<unknown@example.net>") -> bytes:
    """An ARF abuse report from a feedback loop about a message from ``mail_from``."""
    return (
        "From: fbl@isp.example\r\nTo: fbl@clinic.example\r\nSubject: Abuse report\r\n"
        f"Message-ID: <{abs(hash((mail_from, rcpt_to, message_id)))}@isp.example>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="a"\r\n\r\n'
        "--a\r\nContent-Type: text/plain\r\n\r\nAn abuse report.\r\n"
        "--a\r\nContent-Type: message/feedback-report\r\n\r\n"
        f"Feedback-Type: abuse\r\nVersion: 1\r\nOriginal-Mail-From: <{mail_from}>\r\n"
        f"Original-Rcpt-To: <{rcpt_to}>\r\n"
        "--a\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"To: {rcpt_to}\r\nMessage-ID: {message_id}\r\n"
        "--a--\r\n"
    ).encode()


def process(box, *, command="inbox"):
    r = CliRunner().invoke(cli.main, [command, "process", box._path])
    assert r.exit_code == 0, r.output
    return r


def statuses(db) -> dict[str, str]:
    return dict(db.execute("SELECT email, status FROM subscribers").fetchall())


def _victim_and_attacker(db, settings, clock, smtp_server, mailings):
    victim_row, _ = deliver(db, settings, clock, smtp_server, mailings, "victim@example.com")
    _, mine = deliver(db, settings, clock, smtp_server, mailings, "attacker@example.net")
    assert re.fullmatch(r"bounce\+\d+-[a-z2-7]{16}@clinic\.example", mine.mail_from)
    return victim_row, mine


FORGERIES = {
    # the old unsigned address, naming the victim's row
    "unsigned-dsn": lambda row, mid, mine: dsn(f"bounce+{row}@clinic.example", "victim@example.com"),
    # unsigned address, even with the victim's real Message-ID quoted
    "unsigned-dsn-with-real-message-id": lambda row, mid, mine: dsn(
        f"bounce+{row}@clinic.example", "victim@example.com", mid),
    # a guessed signature
    "bad-mac-dsn": lambda row, mid, mine: dsn(
        f"bounce+{row}-aaaaaaaaaaaaaaaa@clinic.example", "victim@example.com"),
    # a valid signature from the attacker's own email, about the victim
    "signed-dsn-wrong-final-recipient": lambda row, mid, mine: dsn(mine.mail_from,
                                                                   "victim@example.com"),
    # ARF complaints: unsigned, and signed-but-about-someone-else
    "unsigned-arf": lambda row, mid, mine: arf(f"bounce+{row}@clinic.example", "victim@example.com"),
    "signed-arf-wrong-recipient": lambda row, mid, mine: arf(mine.mail_from, "victim@example.com"),
}


@pytest.mark.parametrize("forgery", FORGERIES)
def test_forged_report_changes_nothing(db, settings, clock, smtp_server, mailings, cli_env, box,
                                       forgery):
    victim_row, mine = _victim_and_attacker(db, settings, clock, smtp_server, mailings)
    key = box.add(FORGERIES[forgery](victim_row, mailings.row(victim_row)["message_id"], mine))
    r = process(box, command="bounces")
    assert r.stdout.strip() == (
        "0 report(s) recorded (0 hard, 0 soft, 0 complaint); 0 subscriber(s) suppressed; "
        "1 unmatched (nothing changed)"
    )
    (note,) = r.stderr.splitlines()
    assert "unmatched: " in note and (
        "the bounce address is not ours" in note or "not the recipient of row" in note
    ), note
    assert statuses(db) == {"victim@example.com": "active", "attacker@example.net": "active"}
    assert db.execute("SELECT COUNT(*) FROM bounces").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM suppressions").fetchone()[0] == 0
    assert db.execute("SELECT bounce_score FROM subscribers").fetchall() == [(0.0,), (0.0,)]
    # handled: marked seen, so the next run neither counts it nor reports it again
    assert "S" in box.get_message(key).get_flags()
    again = process(box)
    assert "unmatched" not in again.stdout and again.stderr == ""


def test_genuine_dsn_and_arf_from_real_envelopes_work(db, settings, clock, smtp_server, mailings,
                                                       cli_env, box):
    _, gone = deliver(db, settings, clock, smtp_server, mailings, "Gone@Example.com")
    _, angry = deliver(db, settings, clock, smtp_server, mailings, "angry@isp.example")
    # Some MTAs lower-case the local part; Final-Recipient compares without case, rfc822; prefix.
    box.add(dsn(gone.mail_from.lower(), "gone@example.COM"))
    box.add(arf(angry.mail_from, "angry@isp.example"))
    r = process(box)
    assert r.stdout.strip() == (
        "2 report(s) recorded (1 hard, 0 soft, 1 complaint); 2 subscriber(s) suppressed"
    ), r.output
    assert statuses(db) == {"Gone@Example.com": "bounced", "angry@isp.example": "complained"}
    # Forwarded: Final-Recipient is where it was forwarded, Original-Recipient is ours
    _, fwd = deliver(db, settings, clock, smtp_server, mailings, "fwd@example.com")
    box.add(dsn(fwd.mail_from, "elsewhere@example.org").replace(
        b"Action: failed", b"Original-Recipient: rfc822;fwd@example.com\r\nAction: failed"))
    assert process(box).stdout.startswith("1 report(s) recorded (1 hard")
    assert lifecycle.find(db, "fwd@example.com").status == "bounced"
    # No VERP at all (a report sent to a plain address) still matches by our random Message-ID
    _, late = deliver(db, settings, clock, smtp_server, mailings, "late@example.org")
    box.add(dsn("postmaster@clinic.example", "late@example.org", late.message["Message-ID"]))
    assert process(box).stdout.startswith("1 report(s) recorded (1 hard")
    assert lifecycle.find(db, "late@example.org").status == "bounced"


def _mailto(received) -> str:
    header = received.message["List-Unsubscribe"]
    (mailto,) = re.findall(r"<mailto:([^>?]+)", header)
    return mailto


def _request(to: str, sender_addr: str = "reader@example.com", via: str = "To") -> bytes:
    return (
        f"From: {sender_addr}\r\n{via}: {to}\r\nSubject: unsubscribe\r\n"
        "Content-Type: text/plain\r\n\r\nunsubscribe\r\n"
    ).encode()


def test_mailto_unsubscribe_through_a_maildir(db, settings, clock, smtp_server, mailings, cli_env,
                                              box):
    reader = "reader@example.com"
    rid, received = deliver(db, settings, clock, smtp_server, mailings, reader)
    sid = lifecycle.find(db, reader).id
    queued_same = mailings.queue(sid, reader, kind="test_bulk2", stream="broadcasts",
                                 due_at=clock.advance(days=1))
    queued_other = mailings.queue(sid, reader, kind="test_bulk3", stream="webinars",
                                  due_at=clock())
    address = _mailto(received)
    local = address.split("@")[0]
    assert address.endswith("@clinic.example") and len(local.encode()) <= 64
    assert re.fullmatch(rf"unsubscribe\+{rid}-[a-z2-7]{{16}}", local)

    # Tampered: another row's id with this signature, and a changed signature
    other = f"unsubscribe+{queued_other}-{local.rsplit('-', 1)[1]}@clinic.example"
    flipped = local[:-1] + ("a" if local[-1] != "a" else "b") + "@clinic.example"
    box.add(_request(other))
    box.add(_request(flipped, via="Delivered-To"))
    box.add(_request(f"unsubscribe+{rid}@clinic.example"))  # the old unsigned form
    r = process(box)
    assert "3 unmatched (nothing changed)" in r.stdout and "unsubscribed by mail" not in r.stdout
    assert lifecycle.subscriptions(db, sid) == {}
    assert {mailings.row(i)["status"] for i in (queued_same, queued_other)} == {"queued"}

    # The real address, as the reader's mail client sends it (Delivered-To from Postfix)
    box.add(_request(address) .replace(b"To: ", b"Delivered-To: " + address.encode() + b"\r\nTo: ", 1))
    r = process(box)
    assert r.stdout.strip() == (
        "0 report(s) recorded (0 hard, 0 soft, 0 complaint); 0 subscriber(s) suppressed; "
        "1 unsubscribed by mail"
    ), r.output
    # Exactly the one-click scope: the stream this email came from, its queue cancelled.
    assert lifecycle.subscriptions(db, sid)["broadcasts"]["status"] == "unsubscribed"
    assert mailings.row(queued_same)["status"] == "cancelled"
    assert mailings.row(queued_other)["status"] == "queued"
    assert db.execute(
        "SELECT ref, data FROM events WHERE kind = 'unsubscribed' AND subscriber_id = ?", (sid,)
    ).fetchall() == [("broadcasts", '{"source": "mailto"}')]
    # Sending it twice is harmless and counted once more, nothing else changes
    box.add(_request(address.upper()))
    assert "1 unsubscribed by mail" in process(box).stdout
    assert mailings.row(queued_other)["status"] == "queued"


def test_signed_addresses_rotate_with_the_keys(settings):
    old = tokens.signed_local_part(settings, "unsubscribe", 42)
    rotated = settings.replace(secret_keys=("a-new-key-0123456789abcdef", *settings.secret_keys))
    assert tokens.signed_local_part(rotated, "unsubscribe", 42) != old
    assert tokens.read_local_part(rotated, "unsubscribe", old) == 42
    dropped = settings.replace(secret_keys=("a-new-key-0123456789abcdef",))
    with pytest.raises(tokens.TokenError, match="signature does not match"):
        tokens.read_local_part(dropped, "unsubscribe", old)
    # a bounce signature is not an unsubscribe signature
    bounce = tokens.signed_local_part(settings, "bounce", 42).replace("bounce", "unsubscribe")
    with pytest.raises(tokens.TokenError):
        tokens.read_local_part(settings, "unsubscribe", bounce)
