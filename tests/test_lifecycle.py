"""The subscriber state machine and double opt-in, against a real SQLite file."""

from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from funnel.db import SUBSCRIBER_STATES, connect
from funnel.errors import InputError, TokenError, TransitionError
from funnel.settings import test_settings
from subscribers import lifecycle, optin, tokens


def queued_confirms(db, sid):
    return db.execute(
        "SELECT COUNT(*) FROM outbox WHERE subscriber_id = ? AND kind = 'confirm' AND status = 'queued'", (sid,)
    ).fetchone()[0]


def test_signup_creates_pending_record_consent_and_queues_confirmation(db, settings, clock):
    r = optin.signup(db, settings, "Reader@Example.com", clock(), name="Ana Silva", timezone="Europe/Lisbon",
                     source="form", ip="203.0.113.9", user_agent="Firefox")
    assert r.action == "created"
    sub = lifecycle.get(db, r.subscriber_id)
    assert (sub.status, sub.email, sub.name, sub.timezone) == ("pending", "Reader@example.com", "Ana Silva", "Europe/Lisbon")
    consent = db.execute("SELECT action, source, ip, user_agent, consent_text_version FROM consent").fetchall()
    assert consent == [("requested", "form", "203.0.113.9", "Firefox", settings.consent_version)]
    assert queued_confirms(db, sub.id) == 1
    assert [e[0] for e in db.execute("SELECT kind FROM events ORDER BY id")] == ["subscribed", "confirmation_queued"]


def test_repeat_signup_while_pending_resends_at_most_once_a_day(db, settings, clock):
    sid = optin.signup(db, settings, "a@example.com", clock()).subscriber_id
    clock.advance(hours=3)
    assert optin.signup(db, settings, "A@EXAMPLE.COM", clock()).action == "throttled"
    assert queued_confirms(db, sid) == 1
    clock.advance(hours=21, seconds=1)
    assert optin.signup(db, settings, "a@example.com", clock()).action == "resent"
    assert queued_confirms(db, sid) == 2
    assert db.execute("SELECT COUNT(*) FROM subscribers").fetchone()[0] == 1


def test_confirm_activates_once_and_records_consent(db, settings, clock):
    sid = optin.signup(db, settings, "a@example.com", clock()).subscriber_id
    nonce = lifecycle.get(db, sid).confirm_nonce
    token = tokens.confirm_token(settings, sid, nonce, clock())
    clock.advance(hours=5)
    sub = optin.confirm(db, settings, token, clock(), ip="198.51.100.1", user_agent="Safari")
    assert sub.status == "active" and sub.confirmed_at is not None
    assert db.execute("SELECT action, ip FROM consent ORDER BY id").fetchall() == [
        ("requested", None), ("confirmed", "198.51.100.1")]
    assert set(lifecycle.subscriptions(db, sid)) == {"broadcasts", "webinars", "series:importance-of-exercise"}
    with pytest.raises(TokenError, match="already been used"):
        optin.confirm(db, settings, token, clock())


def test_expired_and_tampered_confirm_tokens(db, settings, clock):
    sid = optin.signup(db, settings, "a@example.com", clock()).subscriber_id
    token = tokens.confirm_token(settings, sid, lifecycle.get(db, sid).confirm_nonce, clock())
    with pytest.raises(TokenError, match="not valid"):
        optin.confirm(db, settings, token[:-3] + "xyz", clock())
    clock.advance(days=3, minutes=1)
    with pytest.raises(TokenError, match="expired"):
        optin.confirm(db, settings, token, clock())
    assert lifecycle.get(db, sid).status == "pending"


def test_signup_after_unsubscribe_starts_a_fresh_opt_in(db, settings, clock):
    sid = optin.signup(db, settings, "a@example.com", clock()).subscriber_id
    old_token = tokens.confirm_token(settings, sid, lifecycle.get(db, sid).confirm_nonce, clock())
    optin.confirm(db, settings, old_token, clock())
    lifecycle.unsubscribe(db, sid, clock(), source="test")
    assert lifecycle.get(db, sid).status == "unsubscribed"
    with pytest.raises(TransitionError, match="must opt in again"):
        lifecycle.transition(db, sid, "active", clock())
    clock.advance(days=1)
    assert optin.signup(db, settings, "a@example.com", clock()).action == "restarted"
    sub = lifecycle.get(db, sid)
    # The form alone changes no state: they stay unsubscribed until the owner confirms.
    assert sub.status == "unsubscribed" and sub.confirm_nonce
    with pytest.raises(TokenError, match="already been used"):
        optin.confirm(db, settings, old_token, clock())
    new_token = tokens.confirm_token(settings, sid, sub.confirm_nonce, clock())
    assert optin.confirm(db, settings, new_token, clock()).status == "active"


def test_suppressed_addresses_get_nothing(db, settings, clock):
    sid = optin.signup(db, settings, "a@example.com", clock()).subscriber_id
    lifecycle.suppress(db, sid, "bounced", clock())
    assert optin.signup(db, settings, "a@example.com", clock() + timedelta(days=9)).action == "suppressed"
    assert queued_confirms(db, sid) == 0  # the bounce also cancelled the queued confirmation


def test_unsubscribe_cancels_queued_sends_for_the_stream_or_all(db, settings, clock):
    from funnel import outbox

    sid = optin.signup(db, settings, "a@example.com", clock()).subscriber_id
    optin.confirm(db, settings, tokens.confirm_token(settings, sid, lifecycle.get(db, sid).confirm_nonce, clock()), clock())
    for key, stream in (("b1", "broadcasts"), ("s1", "series:importance-of-exercise")):
        outbox.enqueue(db, settings, dedupe_key=key, kind="broadcast", subscriber_id=sid, to_addr="a@example.com",
                       due_at=clock() + timedelta(days=1), now=clock(), stream=stream)
    lifecycle.set_subscription(db, sid, "broadcasts", "unsubscribed", clock())
    status = dict(db.execute("SELECT dedupe_key, status FROM outbox WHERE kind = 'broadcast'").fetchall())
    assert status == {"b1": "cancelled", "s1": "queued"}
    lifecycle.unsubscribe(db, sid, clock())
    assert db.execute("SELECT status FROM outbox WHERE dedupe_key = 's1'").fetchone()[0] == "cancelled"
    assert lifecycle.unsubscribe(db, sid, clock()).status == "unsubscribed"  # repeat is harmless


@pytest.mark.parametrize(
    "field, kwargs, message",
    [
        ("email", {"email": "not an address"}, "^email: 'not an address' is not a valid"),
        ("email", {"email": ""}, "^email: an email address is required"),
        ("name", {"name": "Eve\r\nBcc: x@y.z"}, "^name: the name contains a line break"),
        ("name", {"name": "=?utf-8?q?Eve=0ABcc:_x@y.z?="}, "^name: the name contains an encoded line break"),
        ("name", {"name": "=?utf-8?b?YQ0KQmNjOiB4QHk=?="}, "^name: the name contains an encoded line break"),
        ("name", {"name": "x" * 101}, "^name: the name is longer than 100"),
        ("name", {"name": "Eve\u2028Bcc: x@y.z"}, "^name: the name contains a line break"),
        ("name", {"name": "Eve\x00"}, "^name: the name contains a line break"),
        ("timezone", {"timezone": "Europe/Atlantis"}, "^timezone: unknown time zone 'Europe/Atlantis'"),
    ],
)
def test_bad_signup_input_changes_nothing(db, settings, clock, field, kwargs, message):
    args = {"email": "ok@example.com", **kwargs}
    email = args.pop("email")
    with pytest.raises(InputError, match=message):
        optin.signup(db, settings, email, clock(), **args)
    assert db.execute("SELECT COUNT(*) FROM subscribers").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0


# ----------------------------------------------------------------- state machine property
EVENTS = ["signup", "confirm", "unsubscribe", "bounce", "complain", "erase", "transition"]


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.sampled_from(EVENTS), st.sampled_from(SUBSCRIBER_STATES)), max_size=12))
def test_no_event_sequence_reaches_an_illegal_state(tmp_path_factory, steps):
    from datetime import UTC, datetime

    tmp = tmp_path_factory.mktemp("sm")
    s = test_settings(tmp)
    db = connect(s.db, migrate=True)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    sid = None
    history = []
    for event, target in steps:
        now += timedelta(days=1)
        before = lifecycle.get(db, sid).status if sid else None
        try:
            if event == "signup" or sid is None:
                r = optin.signup(db, s, "p@example.com", now)
                sid = sid or r.subscriber_id
            elif event == "confirm":
                sub = lifecycle.get(db, sid)
                optin.confirm(db, s, tokens.confirm_token(s, sid, sub.confirm_nonce or "x", now), now)
            elif event == "unsubscribe":
                lifecycle.unsubscribe(db, sid, now)
            elif event in ("bounce", "complain"):
                lifecycle.suppress(db, sid, "bounced" if event == "bounce" else "complained", now)
            elif event == "erase":
                from subscribers.io import erase

                if lifecycle.get(db, sid).email:
                    erase(db, "p@example.com", now)
            else:
                lifecycle.transition(db, sid, target, now)
        except (TransitionError, TokenError, InputError):
            pass
        if sid is None:
            continue
        after = lifecycle.get(db, sid).status
        history.append((event, before, after))
        assert after in SUBSCRIBER_STATES
        if before is not None and before != after:
            # Confirming a re-signup after an unsubscribe passes through pending.
            via_pending = event == "confirm" and lifecycle.can_transition(before, "pending")
            assert lifecycle.can_transition(before, after) or (
                via_pending and lifecycle.can_transition("pending", after)
            ), history
        if after == "erased":
            row = db.execute("SELECT email, name FROM subscribers WHERE id = ?", (sid,)).fetchone()
            assert row == (None, "")
        if after in ("bounced", "complained", "erased"):
            assert lifecycle.is_suppressed(db, "p@example.com")
            assert db.execute(
                "SELECT COUNT(*) FROM outbox WHERE subscriber_id = ? AND status IN ('queued','retry')", (sid,)
            ).fetchone()[0] == 0
    db.close()
