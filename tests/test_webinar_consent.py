"""Consent only by its owner (issue 10, items 2 and 5), at the domain level.

Real SQLite, the live aiosmtpd sink, a fake clock.  Registering an address
that unsubscribed, bounced, complained or was erased sends one verification
email and nothing else; only its owner's POST registers it, for that webinar
only.  Anonymous forms never change a known person's name, zone or state.
The same attacks against a real ``funnel serve`` are in test_consent_attacks.py.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from campaigns import webinars
from campaigns.sender import send_due
from funnel.errors import TokenError
from subscribers import io as sub_io
from subscribers import lifecycle, optin, tokens

VERIFY_RE = re.compile(r"https?://\S+/w/spine-health/verify/(\S+)")


def create(db, settings, clock, **extra):
    start = (clock() + timedelta(days=10)).astimezone(webinars.ZoneInfo("Europe/London"))
    values = {
        "slug": "spine-health",
        "title": "Spine Health Webinar",
        "start": start.strftime("%Y-%m-%d %H:%M"),
        "timezone": "Europe/London",
        "join_url": "https://meet.backinmotion-physio.co.uk/spine",
        **extra,
    }
    return webinars.create_webinar(db, settings, values, clock())


def active(db, settings, clock, email, name="Ana Original", tz="Europe/London"):
    sid = optin.signup(db, settings, email, clock(), name=name, timezone=tz).subscriber_id
    optin.activate_imported(db, settings, sid, clock(), "test fixture")
    return sid


def person_in(db, settings, clock, state: str, email: str) -> int:
    """An address in ``state``: unsubscribed, bounced, complained or erased."""
    sid = active(db, settings, clock, email)
    if state == "unsubscribed":
        lifecycle.unsubscribe(db, sid, clock())
    elif state == "erased":
        sub_io.erase(db, email, clock())
    else:
        lifecycle.suppress(db, sid, state, clock())
    return sid


def outbox_kinds(db, sid):
    return [
        k
        for (k,) in db.execute(
            "SELECT kind FROM outbox WHERE subscriber_id = ? ORDER BY id", (sid,)
        )
    ]


@pytest.mark.parametrize("state", ["unsubscribed", "bounced", "complained", "erased"])
def test_a_left_address_gets_one_verification_and_nothing_else_until_confirmed(
    db, settings, smtp_server, clock, state
):
    create(db, settings, clock)
    addr = f"{state}@example.com"
    sid = person_in(db, settings, clock, state, addr)
    before = db.execute(
        "SELECT status, name, timezone FROM subscribers WHERE id = ?", (sid,)
    ).fetchone()
    queued_before = outbox_kinds(db, sid)

    r = webinars.register(
        db, settings, "spine-health", clock(), email=addr, name="Mallory", timezone="Asia/Tokyo"
    )
    assert (r.status, r.subscriber_id) == ("verify", sid)
    # Nothing about them changed; only the verification is queued.
    assert (
        db.execute("SELECT status, name, timezone FROM subscribers WHERE id = ?", (sid,)).fetchone()
        == before
    )
    assert outbox_kinds(db, sid) == [*queued_before, "webinar_verify"]
    assert db.execute("SELECT COUNT(*) FROM registrations").fetchone()[0] == 0
    # Asking again within the throttle queues nothing more.
    clock.advance(hours=1)
    assert webinars.register(db, settings, "spine-health", clock(), email=addr).status == "verify"
    assert outbox_kinds(db, sid).count("webinar_verify") == 1

    send_due(db, settings, clock)
    (mail,) = smtp_server.to(addr)
    msg = mail.message
    assert msg["Subject"] == "Please confirm your place at Spine Health Webinar"
    # The stored name (none once erased): a stranger's "Mallory" was not stored.
    assert msg["To"] == (addr if state == "erased" else f"Ana Original <{addr}>")
    assert "List-Unsubscribe" not in msg  # one transactional email, not bulk
    assert not [p for p in msg.walk() if p.get_content_type() == "text/calendar"]
    token = VERIFY_RE.search(mail.part("plain")).group(1)

    # The page (a GET) changes nothing; the owner's POST registers them.
    assert (
        webinars.check_verification(db, settings, "spine-health", token, clock()).slug
        == "spine-health"
    )
    assert db.execute("SELECT COUNT(*) FROM registrations").fetchone()[0] == 0
    res = webinars.confirm_verification(
        db, settings, "spine-health", token, clock(), ip="203.0.113.7", user_agent="Firefox"
    )
    assert res.status == "registered"
    sub = lifecycle.get(db, sid)
    assert sub.email == addr and sub.status == ("unsubscribed" if state == "erased" else state)
    assert sub.name == ("" if state == "erased" else "Ana Original")
    streams = {k: v["status"] for k, v in lifecycle.subscriptions(db, sid).items()}
    assert streams["webinar:spine-health"] == "subscribed"
    assert {v for k, v in streams.items() if k != "webinar:spine-health"} <= {"unsubscribed"}
    assert db.execute(
        "SELECT action, source, ip, user_agent FROM consent WHERE subscriber_id = ? "
        "AND purpose = 'webinar:spine-health' ORDER BY id",
        (sid,),
    ).fetchall() == [("confirmed", "link", "203.0.113.7", "Firefox")]
    with pytest.raises(TokenError, match="already been used"):
        webinars.confirm_verification(db, settings, "spine-health", token, clock())

    smtp_server.clear()
    send_due(db, settings, clock)
    subjects = sorted(m.message["Subject"] for m in smtp_server.to(addr))
    assert subjects == ["You're registered: Spine Health Webinar"]  # no newsletter confirmation
    assert lifecycle.is_suppressed(db, addr) == (state != "unsubscribed")


def test_unknown_but_suppressed_hash_gets_a_hash_only_record_and_the_same_flow(
    db, settings, smtp_server, clock
):
    create(db, settings, clock)
    with pytest.raises(Exception, match="suppressed anyway"):
        sub_io.erase(db, "ghost@example.com", clock())  # never known: only the hash is kept
    r = webinars.register(
        db, settings, "spine-health", clock(), email="ghost@example.com", name="G"
    )
    assert r.status == "verify"
    row = db.execute(
        "SELECT email, name, timezone, status FROM subscribers WHERE id = ?", (r.subscriber_id,)
    ).fetchone()
    assert row == (None, "", None, "erased")
    send_due(db, settings, clock)
    (mail,) = smtp_server.to("ghost@example.com")
    token = VERIFY_RE.search(mail.part("plain")).group(1)
    assert (
        webinars.confirm_verification(db, settings, "spine-health", token, clock()).status
        == "registered"
    )
    assert lifecycle.get(db, r.subscriber_id).email == "ghost@example.com"


def test_a_newer_link_replaces_the_older_and_links_expire(db, settings, smtp_server, clock):
    create(db, settings, clock)
    sid = person_in(db, settings, clock, "unsubscribed", "u@example.com")
    webinars.register(db, settings, "spine-health", clock(), email="u@example.com")
    send_due(db, settings, clock)
    old = VERIFY_RE.search(smtp_server.to("u@example.com")[-1].part("plain")).group(1)
    clock.advance(hours=settings.confirm_resend_hours, minutes=1)
    webinars.register(db, settings, "spine-health", clock(), email="u@example.com")
    send_due(db, settings, clock)
    new = VERIFY_RE.search(smtp_server.to("u@example.com")[-1].part("plain")).group(1)
    assert new != old
    with pytest.raises(TokenError, match="replaced"):
        webinars.check_verification(db, settings, "spine-health", old, clock())
    # A token for another webinar, or a forged one, is refused.
    with pytest.raises(TokenError):
        webinars.confirm_verification(db, settings, "other-webinar", new, clock())
    with pytest.raises(TokenError):
        webinars.confirm_verification(db, settings, "spine-health", new[:-4] + "abcd", clock())
    clock.advance(days=settings.confirm_max_age_days, minutes=1)
    with pytest.raises(TokenError, match="expired"):
        webinars.confirm_verification(db, settings, "spine-health", new, clock())
    assert lifecycle.get(db, sid).status == "unsubscribed"
    assert db.execute("SELECT COUNT(*) FROM registrations").fetchone()[0] == 0


def test_a_full_webinar_waitlists_a_verified_owner_and_says_so_by_email(
    db, settings, smtp_server, clock
):
    create(db, settings, clock, capacity=1)
    webinars.register(db, settings, "spine-health", clock(), email="first@example.com")
    person_in(db, settings, clock, "bounced", "b@example.com")
    webinars.register(db, settings, "spine-health", clock(), email="b@example.com")
    send_due(db, settings, clock)
    token = VERIFY_RE.search(smtp_server.to("b@example.com")[-1].part("plain")).group(1)
    assert (
        webinars.confirm_verification(db, settings, "spine-health", token, clock()).status
        == "waitlisted"
    )
    smtp_server.clear()
    send_due(db, settings, clock)
    (mail,) = smtp_server.to("b@example.com")
    assert mail.message["Subject"] == "You're on the waitlist: Spine Health Webinar"
    assert "we will email you your join link" in " ".join(mail.part("plain").split())


def test_anonymous_forms_never_change_a_known_persons_details(db, settings, smtp_server, clock):
    create(db, settings, clock)
    ana = active(db, settings, clock, "ana@example.com", name="Ana Original", tz="Europe/London")
    bare = active(db, settings, clock, "bare@example.com", name="", tz=None)
    pend = optin.signup(
        db, settings, "pend@example.com", clock(), name="Pat", timezone="Europe/Paris"
    )
    gone = person_in(db, settings, clock, "unsubscribed", "gone@example.com")
    clock.advance(hours=settings.confirm_resend_hours + 1)  # outside the resend throttle
    details = "SELECT name, timezone, status FROM subscribers WHERE id = ?"
    before = {
        sid: db.execute(details, (sid,)).fetchone() for sid in (ana, bare, pend.subscriber_id, gone)
    }

    for addr in ("ana@example.com", "bare@example.com", "pend@example.com", "gone@example.com"):
        optin.signup(db, settings, addr, clock(), name="Mallory", timezone="America/New_York")
        webinars.register(
            db, settings, "spine-health", clock(), email=addr, name="Mallory", timezone="Asia/Tokyo"
        )
    after = {sid: db.execute(details, (sid,)).fetchone() for sid in before}
    assert after == before
    # The pending re-signup still got its fresh confirmation, to the stored name.
    send_due(db, settings, clock)
    confirms = [
        m for m in smtp_server.to("pend@example.com") if "confirm your" in m.message["Subject"]
    ]
    assert len(confirms) == 2  # the first signup's, and the re-signup's outside the throttle
    assert {m.message["To"] for m in confirms} == {"Pat <pend@example.com>"}
    (reg,) = [m for m in smtp_server.to("ana@example.com") if "registered" in m.message["Subject"]]
    assert reg.message["To"] == "Ana Original <ana@example.com>"
    # The unsubscribed re-signup is a confirmation only: still unsubscribed until used.
    sub = lifecycle.get(db, gone)
    assert sub.status == "unsubscribed" and sub.confirm_nonce
    assert (
        optin.confirm(
            db, settings, tokens.confirm_token(settings, gone, sub.confirm_nonce, clock()), clock()
        ).status
        == "active"
    )


def test_cli_register_of_an_unsubscribed_address_only_queues_the_verification(
    cli_env, settings, clock
):
    from click.testing import CliRunner

    import cli
    from funnel.db import connect

    db = connect(settings.db, migrate=True)
    create(db, settings, clock)  # the CLI reads the same injected clock
    sid = person_in(db, settings, clock, "unsubscribed", "gone@example.com")
    result = CliRunner().invoke(
        cli.main, ["webinar", "register", "spine-health", "gone@example.com", "--name", "Other"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip() == (
        "gone@example.com: unsubscribed or suppressed: only a verification email is queued; "
        "they are registered when they confirm it"
    )
    assert lifecycle.get(db, sid).status == "unsubscribed"
    assert outbox_kinds(db, sid)[-1] == "webinar_verify"
    assert db.execute("SELECT COUNT(*) FROM registrations").fetchone()[0] == 0


def test_an_old_invite_link_of_someone_who_left_only_sends_the_verification(db, settings, clock):
    create(db, settings, clock)
    sid = active(db, settings, clock, "inv@example.com")
    token = webinars.invite_token(settings, "spine-health", sid, clock())
    lifecycle.unsubscribe(db, sid, clock())
    r = webinars.register_with_token(db, settings, "spine-health", token, clock())
    assert r.status == "verify"
    assert lifecycle.get(db, sid).status == "unsubscribed"
    assert db.execute("SELECT COUNT(*) FROM registrations").fetchone()[0] == 0
    assert db.execute(
        "SELECT kind FROM outbox WHERE subscriber_id = ? AND status = 'queued'", (sid,)
    ).fetchall() == [("webinar_verify",)]
