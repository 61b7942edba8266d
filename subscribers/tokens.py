"""Signed link tokens (itsdangerous), one salt per purpose, with key rotation.

Links carry these tokens, never raw ids (DESIGN.md rule 7).  Settings list the
secret keys newest first; itsdangerous signs with the *last* key of its list
and tries them all when verifying, so we hand it the list reversed.  After a
rotation (a new key prepended) old links keep working until the old key is
dropped from the list.

Purposes and lifetimes:

* ``confirm``: expires (``confirm_max_age_days``, default 3 days); works once,
  because it carries the subscriber's current confirm nonce, which confirming
  clears.
* ``unsubscribe``, ``preferences``, ``view``: never expire.  Unsubscribe links
  in old emails must keep working for ever (RFC 8058 one-click).
* ``webinar``: one-click webinar registration from an invite.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from itsdangerous import BadData, BadSignature, SignatureExpired, URLSafeTimedSerializer

from funnel.errors import TokenError
from funnel.settings import Settings

PURPOSES = ("confirm", "unsubscribe", "preferences", "view", "webinar")


def _serializer(settings: Settings, purpose: str) -> URLSafeTimedSerializer:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}")
    return URLSafeTimedSerializer(
        list(reversed(settings.secret_keys)), salt=f"funnel.{purpose}.v1"
    )


def make_token(settings: Settings, purpose: str, payload: dict[str, Any], now: datetime) -> str:
    """Sign ``payload`` for ``purpose``; ``now`` is the issue time (fake clocks welcome)."""
    s = _serializer(settings, purpose)
    # itsdangerous reads the clock through Signer.get_timestamp; pin it to `now`.
    signer = s.make_signer(s.salt)
    signer.get_timestamp = lambda: int(now.timestamp())  # type: ignore[method-assign]
    return signer.sign(s.dump_payload(payload)).decode("ascii")


def read_token(
    settings: Settings,
    purpose: str,
    token: str,
    now: datetime,
    max_age_seconds: float | None = None,
) -> dict[str, Any]:
    """Verify a token for ``purpose`` and return its payload.

    Raises :class:`TokenError` with a sentence fit for a person: expired,
    tampered with, or meant for something else.
    """
    s = _serializer(settings, purpose)
    try:
        payload, issued = s.loads(token, return_timestamp=True)
    except SignatureExpired as exc:  # pragma: no cover - we check age ourselves below
        raise TokenError("This link has expired.") from exc
    except BadSignature as exc:
        # A token for another purpose fails here too: the salt differs.
        raise TokenError("This link is not valid: it was changed or cut short.") from exc
    except BadData as exc:
        raise TokenError("This link is not valid.") from exc
    if max_age_seconds is not None:
        age = now.timestamp() - issued.timestamp()
        if age > max_age_seconds:
            raise TokenError("This link has expired.")
    if not isinstance(payload, dict):
        raise TokenError("This link is not valid.")
    return payload


# Convenience wrappers: keep the payload shapes in one place.
def confirm_token(settings: Settings, subscriber_id: int, nonce: str, now: datetime) -> str:
    return make_token(settings, "confirm", {"s": subscriber_id, "n": nonce}, now)


def read_confirm_token(settings: Settings, token: str, now: datetime) -> tuple[int, str]:
    data = read_token(
        settings, "confirm", token, now, max_age_seconds=settings.confirm_max_age_days * 86400
    )
    try:
        return int(data["s"]), str(data["n"])
    except (KeyError, TypeError, ValueError) as exc:
        raise TokenError("This link is not valid.") from exc


def subscriber_token(settings: Settings, purpose: str, subscriber_id: int, now: datetime, **extra) -> str:
    """Tokens that only name a subscriber (unsubscribe, preferences, view, webinar)."""
    return make_token(settings, purpose, {"s": subscriber_id, **extra}, now)


def read_subscriber_token(settings: Settings, purpose: str, token: str, now: datetime) -> dict[str, Any]:
    data = read_token(settings, purpose, token, now)
    if not isinstance(data.get("s"), int):
        raise TokenError("This link is not valid.")
    return data
