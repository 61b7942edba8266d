"""One check for each kind of value, wherever it enters.

Every door (web form, CLI option, CSV row, TOML file, settings) and the
sender use the same functions, so a value that is accepted at entry can
always be sent, and a value refused at send time is refused at entry:

* :func:`check_header_text` - text that will reach an email header (names,
  subjects, webinar titles): no CR, LF, NUL or other controls, also not
  inside anything a client could decode as an RFC 2047 encoded word.
* :func:`check_visible` - names: no bidi controls or zero-width characters,
  which can make a ``To:`` display or CLI output read differently from what
  is stored.
* :func:`zone_name` - an IANA time zone name from
  ``zoneinfo.available_timezones()``; not ``localtime``, ``posixrules``,
  ``right/UTC`` or ``Factory``, which ``ZoneInfo()`` also opens.
"""

from __future__ import annotations

import base64
import binascii
import re
from functools import lru_cache
from zoneinfo import available_timezones

from funnel.errors import InputError

__all__ = ["check_header_text", "check_visible", "zone_name"]

# Characters that never reach a header.  CR, LF and NUL are the injection
# vectors; the other C0 controls and DEL are not allowed in RFC 5322 text
# either.  TAB is allowed: it is ordinary folding whitespace.  U+0085, U+2028
# and U+2029 are not controls in the header grammar, but Python's
# str.splitlines() treats them (and \x0b, \x0c, \x1c-\x1e) as line breaks, and
# the email package has split headers on them before; rejecting them costs
# nothing a real name or subject needs.
_FORBIDDEN = "".join(chr(c) for c in range(32) if c != 9) + "\x7f\x85\u2028\u2029"
_FORBIDDEN_RE = re.compile("[" + re.escape(_FORBIDDEN) + "]")
_FORBIDDEN_BYTES_RE = re.compile(b"[\x00-\x08\x0a-\x1f\x7f]")

# Anything a liberal decoder might take for an RFC 2047 encoded word: any
# charset (with or without *language), B or Q in either case, and a payload
# that may contain spaces (the stdlib's own email.header.ecre accepts those).
_ENCODED_WORD_RE = re.compile(r"=\?([^?]*)\?([bBqQ])\?(.*?)\?=", re.DOTALL)
_Q_HEX_RE = re.compile(rb"=([0-9a-fA-F]{2})")
_B64_JUNK_RE = re.compile(rb"[^A-Za-z0-9+/]")

_LINE_BREAK_MESSAGE = "contains a line break, which is not allowed in an email header"
_CONTROL_MESSAGE = "contains a control character, which is not allowed in an email header"


def _reject_controls(text: str, field: str) -> None:
    m = _FORBIDDEN_RE.search(text)
    if m:
        message = _LINE_BREAK_MESSAGE if m.group() in "\r\n\x0b\x0c\x85\u2028\u2029" else None
        raise InputError(f"{field}: {message or _CONTROL_MESSAGE}")


def _decode_liberally(encoding: str, payload: str) -> bytes:
    """Decode an encoded word's payload the way the most forgiving client would."""
    raw = payload.encode("latin-1", "replace")
    if encoding in "qQ":
        return _Q_HEX_RE.sub(lambda m: bytes.fromhex(m.group(1).decode()), raw.replace(b"_", b" "))
    data = _B64_JUNK_RE.sub(b"", raw)
    if len(data) % 4 == 1:  # a lone trailing character carries no whole byte
        data = data[:-1]
    try:
        return base64.b64decode(data + b"=" * (-len(data) % 4))
    except binascii.Error:  # pragma: no cover - cleaned input always decodes
        return b""


def _check_encoded_words(text: str, field: str, depth: int = 0) -> None:
    """Reject controls hidden in anything that a client could decode as RFC 2047.

    Matches are tried at every "=?" so overlapping candidates are covered, and
    decoded text is checked again (a client might decode twice).
    """
    start = text.find("=?")
    while start != -1:
        m = _ENCODED_WORD_RE.match(text, start)
        if m:
            charset, encoding, payload = m.groups()
            decoded = _decode_liberally(encoding, payload)
            if _FORBIDDEN_BYTES_RE.search(decoded):
                hit = _FORBIDDEN_BYTES_RE.search(decoded).group()
                kind = _LINE_BREAK_MESSAGE if hit in b"\r\n\x0b\x0c" else _CONTROL_MESSAGE
                raise InputError(f"{field}: {kind} (inside the encoded word {m.group()[:40]!r})")
            try:
                as_text = decoded.decode(charset.split("*")[0] or "ascii", "replace")
            except LookupError:
                as_text = decoded.decode("latin-1")
            _reject_controls(as_text, field)
            if depth < 2 and "=?" in as_text:
                _check_encoded_words(as_text, field, depth + 1)
        start = text.find("=?", start + 1)


def check_header_text(value: str, field: str) -> None:
    """Raise InputError naming *field* if *value* must never reach a header."""
    if not isinstance(value, str):
        raise InputError(f"{field}: expected text, got {type(value).__name__}")
    _reject_controls(value, field)
    if "=?" in value:
        _check_encoded_words(value, field)


# --------------------------------------------------------------------------
# Invisible characters in names

# Bidi embeddings/overrides/isolates and marks, and zero-width characters.
_INVISIBLE = {
    **{
        c: "a bidi control"
        for c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
    },
    **{c: "a zero-width character" for c in "\u200b\u200c\u200d\u2060\ufeff"},
}
_INVISIBLE_RE = re.compile("[" + "".join(_INVISIBLE) + "]")


def check_visible(value: str, field: str) -> None:
    """Raise InputError naming *field* if *value* holds a bidi control or zero-width character."""
    m = _INVISIBLE_RE.search(value)
    if m:
        ch = m.group()
        raise InputError(
            f"{field}: the name contains {_INVISIBLE[ch]} (U+{ord(ch):04X}), which can disguise "
            "how it reads; please remove it"
        )


# --------------------------------------------------------------------------
# Time zone names


# Files in a system zoneinfo tree that are not zones a person lives in.  On
# Debian available_timezones() itself lists "localtime" (a link to the host's
# zone, which changes with the host) and "Factory"; "posixrules", "posix/..."
# and "right/..." (leap-second clocks) appear on other systems.
_NOT_ZONES = frozenset({"localtime", "Factory", "posixrules"})


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(
        z
        for z in available_timezones()
        if z not in _NOT_ZONES and not z.startswith(("posix/", "right/"))
    )


def zone_name(raw: object, field: str) -> str:
    """Return *raw* stripped if it is an IANA zone name, else raise InputError naming *field*.

    Only names listed by ``zoneinfo.available_timezones()`` are accepted:
    ``ZoneInfo()`` also opens files such as ``localtime``, ``posixrules``,
    ``right/UTC`` and ``Factory``, which are not zones a reader lives in.
    """
    name = raw.strip() if isinstance(raw, str) else ""
    if name not in _zones():
        shown = raw if isinstance(raw, str) else repr(raw)
        raise InputError(
            f"{field}: unknown time zone {shown!r} (use an IANA name like Europe/London)"
        )
    return name
