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
* ``programme``: the "Start the 28-day programme" button; never expires (the
  page it opens only starts the course on the reader's POST).
* ``click``: names an outbox row in a tracked link (``/c/TOKEN.N``, N the
  link's index, checked against that message's own links); never expires.
* ``attr``: the ``funnel_attr`` cookie naming a click (attribution, 30 days).

Signed addresses
----------------
Two email addresses carry a short signature instead of an itsdangerous token,
because an address's local part holds at most 64 octets and some MTAs
lower-case it:

* ``bounce+ROW-MAC@domain``: the VERP envelope sender of outbox row ROW;
  delivery reports mailed back to it name the row.
* ``unsubscribe+ROW-MAC@domain``: the ``mailto:`` of ``List-Unsubscribe``;
  a message sent to it unsubscribes the reader of row ROW from that row's
  stream, exactly like the one-click POST.

MAC is HMAC-SHA256 over the purpose and the row id, truncated to 80 bits and
written in lower-case base32 (16 characters), made with the newest secret key;
reading tries every key, so rotation works as for link tokens.  The longest
local part, ``unsubscribe+`` + 18 digits + ``-`` + 16, is 47 octets.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from datetime import datetime
from functools import lru_cache
from typing import Any

from itsdangerous import (
    BadData,
    BadSignature,
    SignatureExpired,
    TimestampSigner,
    URLSafeTimedSerializer,
)
from itsdangerous.encoding import int_to_bytes

from funnel.errors import TokenError
from funnel.settings import Settings

PURPOSES = ("confirm", "unsubscribe", "preferences", "view", "webinar", "programme", "click", "attr")


def _serializer(settings: Settings, purpose: str) -> URLSafeTimedSerializer:
    return _serializer_for(settings.secret_keys, purpose)


@lru_cache(maxsize=64)
def _serializer_for(keys: tuple[str, ...], purpose: str) -> URLSafeTimedSerializer:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}")
    return URLSafeTimedSerializer(list(reversed(keys)), salt=f"funnel.{purpose}.v1")


class _Signer(TimestampSigner):
    """A TimestampSigner that derives its key once and signs at a given time.

    Speed: every email carries three signed links, and itsdangerous builds a
    new signer and re-derives the HMAC key on every ``dumps`` (~115 us a
    token).  The bytes produced are exactly TimestampSigner.sign's, which
    tests/test_tokens.py checks; verifying still goes through the stock
    ``loads``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._key = super().derive_key()
        # itsdangerous's HMACAlgorithm calls hmac.new(key, digestmod=<a Python
        # function>) per signature, which takes hmac's pure-Python path (two
        # hash objects and a 64-byte XOR each time).  The same HMAC by the
        # digest's name runs in OpenSSL; the key is absorbed once here and the
        # object copied per signature.  Same bytes (tests/test_tokens.py).
        self._mac = hmac.new(self._key, digestmod=self.digest_method().name)

    def derive_key(self, secret_key=None):  # noqa: D102 - see class doc
        return self._key if secret_key is None else super().derive_key(secret_key)

    def get_signature(self, value: bytes) -> bytes:  # noqa: D102 - see class doc
        mac = self._mac.copy()
        mac.update(value)
        return _b64(mac.digest())

    def sign_at(self, value: bytes, timestamp: int) -> bytes:
        value = value + b"." + _b64(int_to_bytes(timestamp))
        return value + b"." + self.get_signature(value)


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64(data: bytes) -> bytes:
    """itsdangerous's ``base64_encode`` (URL-safe base64 without padding) for
    bytes, in the C calls ``base64.urlsafe_b64encode`` makes, without its
    Python layers: four calls a token."""
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=")


@lru_cache(maxsize=64)
def _signer_for(keys: tuple[str, ...], purpose: str) -> _Signer:
    s = _serializer_for(keys, purpose)
    return _Signer(s.secret_keys, salt=s.salt, **s.signer_kwargs)


#: itsdangerous's compact JSON (``_CompactJSON.dumps``: json.dumps with these
#: arguments) as one encoder object: json.dumps builds a new encoder on every
#: call with non-default arguments.  Same text (tests/test_tokens.py).
_COMPACT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def make_token(settings: Settings, purpose: str, payload: dict[str, Any], now: datetime) -> str:
    """Sign ``payload`` for ``purpose``; ``now`` is the issue time (fake clocks welcome)."""
    s = _serializer_for(settings.secret_keys, purpose)
    signer = _signer_for(settings.secret_keys, purpose)
    # URLSafeSerializer.dump_payload also tries zlib on every call, which only
    # wins for payloads far larger than ours; without it the bytes are the same.
    body = _COMPACT_JSON.encode(payload).encode("utf-8")
    if len(body) > 200:
        return signer.sign_at(s.dump_payload(payload), int(now.timestamp())).decode("ascii")
    return signer.sign_at(_b64(body), int(now.timestamp())).decode("ascii")


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


def programme_token(settings: Settings, subscriber_id: int, now: datetime) -> str:
    """The reader's "Start the 28-day programme" link token (``/programme/start/TOKEN``)."""
    return subscriber_token(settings, "programme", subscriber_id, now)


def read_programme_token(settings: Settings, token: str, now: datetime) -> int:
    """The subscriber a programme token names; TokenError when tampered with."""
    return read_subscriber_token(settings, "programme", token, now)["s"]


# ----------------------------------------------------------------- signed addresses
ADDRESS_PURPOSES = ("bounce", "unsubscribe")
_MAC_BYTES = 10  # 80 bits; 16 base32 characters


@lru_cache(maxsize=16)
def _keyed(key: str) -> hmac.HMAC:
    """An HMAC-SHA256 with the key already absorbed (copied per use: two signed
    addresses go into every email)."""
    return hmac.new(key.encode("utf-8"), digestmod=hashlib.sha256)


def _address_mac(key: str, purpose: str, row_id: int) -> str:
    mac = _keyed(key).copy()
    mac.update(f"funnel.{purpose}-address.v1:{row_id}".encode("ascii"))
    return base64.b32encode(mac.digest()[:_MAC_BYTES]).decode("ascii").lower()


def signed_local_part(settings: Settings, purpose: str, row_id: int) -> str:
    """``PURPOSE+ROW-MAC``: the local part of a signed address (module docstring)."""
    if purpose not in ADDRESS_PURPOSES:
        raise ValueError(f"unknown address purpose {purpose!r}")
    return f"{purpose}+{int(row_id)}-{_address_mac(settings.secret_keys[0], purpose, row_id)}"


def signed_address(settings: Settings, purpose: str, row_id: int) -> str:
    return f"{signed_local_part(settings, purpose, row_id)}@{settings.sender_domain}"


_LOCAL = {p: re.compile(rf"{p}\+(\d{{1,18}})-([a-z2-7]{{16}})") for p in ADDRESS_PURPOSES}


def read_local_part(settings: Settings, purpose: str, local: str) -> int:
    """The row id a signed local part names; TokenError when it is not ours.

    Case-insensitive: the signature survives an MTA that lower- or upper-cases
    the local part.  An unsigned ``bounce+ROW`` is refused.
    """
    m = _LOCAL[purpose].fullmatch(local.strip().lower())
    if not m:
        raise TokenError(f"{local!r} is not a signed {purpose} address")
    row_id, mac = int(m.group(1)), m.group(2)
    for key in settings.secret_keys:
        if hmac.compare_digest(_address_mac(key, purpose, row_id), mac):
            return row_id
    raise TokenError(f"{local!r}: the signature does not match any secret key")
