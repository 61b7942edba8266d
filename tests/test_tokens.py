"""Signed tokens: purpose salts, expiry, tamper, rotation."""

from datetime import UTC, datetime, timedelta

import pytest

from funnel.errors import TokenError
from funnel.settings import test_settings
from subscribers import tokens

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


@pytest.fixture
def s(tmp_path):
    return test_settings(tmp_path)


def test_round_trip(s):
    t = tokens.confirm_token(s, 42, "nonce", NOW)
    assert tokens.read_confirm_token(s, t, NOW + timedelta(days=2)) == (42, "nonce")


def test_confirm_tokens_expire_after_three_days(s):
    t = tokens.confirm_token(s, 42, "nonce", NOW)
    tokens.read_confirm_token(s, t, NOW + timedelta(days=3) - timedelta(seconds=1))
    with pytest.raises(TokenError, match="expired"):
        tokens.read_confirm_token(s, t, NOW + timedelta(days=3, seconds=1))


def test_unsubscribe_tokens_never_expire(s):
    t = tokens.subscriber_token(s, "unsubscribe", 7, NOW)
    assert tokens.read_subscriber_token(s, "unsubscribe", t, NOW + timedelta(days=3650))["s"] == 7


def test_tampered_token_is_refused(s):
    t = tokens.subscriber_token(s, "unsubscribe", 7, NOW)
    payload, rest = t.split(".", 1)
    forged = tokens.subscriber_token(s, "unsubscribe", 8, NOW).split(".", 1)[0] + "." + rest
    for bad in (t[:-2] + ("AA" if not t.endswith("AA") else "BB"), forged, t[: len(t) // 2], "", "garbage"):
        with pytest.raises(TokenError, match="not valid"):
            tokens.read_subscriber_token(s, "unsubscribe", bad, NOW)


def test_wrong_purpose_is_refused(s):
    t = tokens.subscriber_token(s, "unsubscribe", 7, NOW)
    with pytest.raises(TokenError):
        tokens.read_subscriber_token(s, "preferences", t, NOW)
    with pytest.raises(TokenError):
        tokens.read_confirm_token(s, t, NOW)


def test_old_keys_still_verify_after_rotation(tmp_path, s):
    old = tokens.subscriber_token(s, "unsubscribe", 7, NOW)
    rotated = s.replace(secret_keys=("a-brand-new-key-0123456789", *s.secret_keys))
    assert tokens.read_subscriber_token(rotated, "unsubscribe", old, NOW)["s"] == 7
    new = tokens.subscriber_token(rotated, "unsubscribe", 7, NOW)
    # New tokens are signed with the newest key: the old settings cannot read them.
    with pytest.raises(TokenError):
        tokens.read_subscriber_token(s, "unsubscribe", new, NOW)
    dropped = s.replace(secret_keys=("a-brand-new-key-0123456789",))
    with pytest.raises(TokenError):
        tokens.read_subscriber_token(dropped, "unsubscribe", old, NOW)


def test_fast_signing_matches_itsdangerous_byte_for_byte(s, monkeypatch):
    """make_token's cached signer must produce exactly what itsdangerous would."""
    import itsdangerous.timed

    payloads = [{"s": 1}, {"s": 123456, "st": "series:importance-of-exercise"}, {"s": 9, "r": 77},
                {"s": 5, "n": "x" * 300}, {"s": 2, "w": "spine-health", "note": "é ü 中"}]
    monkeypatch.setattr(itsdangerous.timed.TimestampSigner, "get_timestamp", lambda self: int(NOW.timestamp()))
    for purpose in tokens.PURPOSES:
        reference = tokens._serializer(s, purpose)
        for payload in payloads:
            assert tokens.make_token(s, purpose, payload, NOW) == reference.dumps(payload)
