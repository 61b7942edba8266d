"""Message assembly: safe header values and a fast, hand-built MIME path.

Why MIME is assembled by hand
-----------------------------
Building a message with :class:`email.message.EmailMessage` and ``as_bytes()``
costs about 1.7 ms, 93% of the CPU spent on one outgoing message (see
DESIGN.md, "Performance facts").  The bytes we need are simple and always have
the same shape, so :func:`compose` joins them by hand: ``binascii.b2a_qp`` (C)
for the text and HTML parts, ``base64.encodebytes`` for attachments, CRLF line
ends everywhere.  That takes roughly a tenth of the time (``bench/mime.py``).

Hand-written MIME is easy to get subtly wrong, so :func:`compose_stdlib` builds
the same message with the standard library and ``tests/test_mime.py`` parses
both with the stdlib parser and compares them header by header and part by part
over many generated inputs.  ``compose_stdlib`` is also the "naive pipeline" in
the benchmark.  (The stdlib is also wrong for us in one place: with the SMTP
policy it turns a List-Unsubscribe URL longer than a line into RFC 2047
encoded words, which mail clients do not decode in that header.)

Why header values go through one function
-----------------------------------------
A CR or LF that reaches a header lets the author of a name or subject add
headers (``"\\r\\nBcc: x@y"``).  Python 3.11.7 has CVE-2024-6923: the email
package can serialise a newline hidden in an RFC 2047 encoded word
(``=?utf-8?q?a=0Ab?=``) as a real line break.  So :func:`header_value` is the
single door for user data into a header: it rejects line breaks and other
control characters, also *inside* anything that looks like an encoded word, and
encodes the rest itself.  We do not rely on the email package for this.

Dot-stuffing (a body line starting with ".") is the transport's job:
``smtplib.SMTP.data``/``sendmail`` doubles leading dots; a raw-socket sender
must do the same.  ``b2a_qp`` already encodes a line consisting of a lone ".".
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import functools
import hashlib
import hmac
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from urllib.parse import quote

from email_validator import EmailNotValidError, validate_email

from funnel.errors import InputError
from funnel.validate import check_header_text

__all__ = [
    "Attachment",
    "compose",
    "compose_stdlib",
    "format_address",
    "header_value",
    "make_message_id",
]

CRLF = b"\r\n"
#: Folding target (RFC 5322 2.1.1: lines SHOULD be <= 78 characters).
MAX_LINE = 78
#: RFC 2047: an encoded word is at most 75 characters.
MAX_ENCODED_WORD = 75
#: When the caller does not say which header the value follows, assume a name
#: this long (len("List-Unsubscribe-Post: ") == 23) for the first line.
DEFAULT_OFFSET = 25

# Characters that may appear literally inside a Q encoded word in *any*
# context, including a display name (RFC 2047 section 5 rule 3).
_Q_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")


# --------------------------------------------------------------------------
# Header values


def _q_char(ch: str) -> str:
    if ch == " ":
        return "_"
    return "".join(chr(b) if b in _Q_SAFE else f"={b:02X}" for b in ch.encode("utf-8"))


def _encoded_words(value: str, first_budget: int) -> list[str]:
    """Split *value* into RFC 2047 utf-8 encoded words, whole characters each.

    The first word is at most *first_budget* characters long (so the first line
    stays within 78), the others at most 75.  Q is used when it is shorter than
    B (mostly-Latin text), B otherwise (CJK, emoji).  A word preferably ends
    just after a space: CPython's address parser inserts a space between
    adjacent encoded words in a display name (RFC 2047 says to drop the
    whitespace), so splitting where the text already has a space makes both
    readings agree modulo whitespace.
    """
    q_chars = [_q_char(ch) for ch in value]
    sizes = [len(ch.encode("utf-8")) for ch in value]
    use_q = sum(map(len, q_chars)) <= (sum(sizes) + 2) // 3 * 4
    if use_q:
        sizes = [len(q) for q in q_chars]
    words: list[str] = []
    budget = first_budget - 12  # 12 == len("=?utf-8?q?") + len("?=")
    start, n = 0, len(value)
    while start < n:
        end, size, last_space = start, 0, -1
        while end < n:
            grown = size + sizes[end]
            if end > start and (grown if use_q else (grown + 2) // 3 * 4) > budget:
                break
            size = grown
            if value[end] == " ":
                last_space = end
            end += 1
        if end < n and last_space >= start + (end - start) // 2:
            end = last_space + 1
        if use_q:
            words.append("=?utf-8?q?" + "".join(q_chars[start:end]) + "?=")
        else:
            words.append(
                "=?utf-8?b?" + base64.b64encode(value[start:end].encode("utf-8")).decode() + "?="
            )
        start, budget = end, MAX_ENCODED_WORD - 12
    return words


def _fold(pieces: list[str], offset: int) -> str:
    """Join pieces, breaking the line (CRLF) before a piece that would pass 78.

    Every piece but the first starts with whitespace, so each continuation
    line begins with WSP and unfolding (deleting the CRLFs) restores the value.
    """
    out: list[str] = []
    length = offset
    for i, piece in enumerate(pieces):
        if i and length + len(piece) > MAX_LINE and piece.strip():
            out.append("\r\n")
            length = 0
        out.append(piece)
        length += len(piece)
    return "".join(out)


def _needs_encoding(value: str) -> bool:
    # Non-ASCII must be encoded; ASCII that merely *looks* like an encoded word
    # is encoded too, so no client decodes it; a word too long to fold within
    # 78 characters is encoded so it can be split across lines.
    return (
        not value.isascii()
        or "=?" in value
        or any(len(word) > MAX_LINE - 2 for word in value.split())
    )


@functools.lru_cache(maxsize=4096)
def _header_value(value: str, field: str, offset: int) -> str:
    check_header_text(value, field)
    if _needs_encoding(value):
        words = _encoded_words(value, max(MAX_LINE - offset, 24))
        return "\r\n ".join(words)
    return _fold(re.findall(r"[ \t]*[^ \t]+|[ \t]+$", value), offset)


def header_value(value: str, field: str, *, header_name: str = "") -> str:
    """Return *value* ready to follow ``"Name: "`` in a message header.

    Raises InputError naming *field* when the value contains CR, LF, NUL or any
    other control character except TAB, or U+0085/U+2028/U+2029 — also when
    such a character hides inside something a client could decode as an RFC
    2047 encoded word, e.g. ``=?utf-8?q?a=0Ab?=`` (CVE-2024-6923).  Printable
    ASCII passes through, folded at whitespace; anything else (non-ASCII, text
    that looks like an encoded word, words too long to fold) becomes utf-8
    encoded words of at most 75 characters, one per line.  The result contains
    CRLF + space folds, so it is meant for hand-assembled messages; give
    *header_name* so the first line is measured correctly.
    """
    offset = len(header_name) + 2 if header_name else DEFAULT_OFFSET
    return _header_value(value, field, offset)


# --------------------------------------------------------------------------
# Addresses

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# A conservative subset of RFC 5321 syntax (dot-atom local part, host name with
# an alphabetic TLD) accepted without calling email-validator, which costs
# ~40 us per address -- a third of the whole message budget.  Anything else
# goes through email-validator.
_SIMPLE_ADDR_RE = re.compile(
    rf"{_ATEXT}+(?:\.{_ATEXT}+)*@(?:{_LABEL}\.)+[A-Za-z](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
)


@functools.lru_cache(maxsize=4096)
def _checked_address(addr: str, field: str) -> str:
    check_header_text(addr, field)
    if len(addr) <= 254 and _SIMPLE_ADDR_RE.fullmatch(addr) and len(addr.split("@")[0]) <= 64:
        return addr
    try:
        # Syntax only: deliverability was checked (or not) when the address was
        # collected; .test domains are allowed so tests and demos can use them.
        result = validate_email(
            addr, check_deliverability=False, allow_smtputf8=False, test_environment=True
        )
    except EmailNotValidError as exc:
        raise InputError(f"{field}: {addr!r} is not a valid email address ({exc})") from None
    return result.ascii_email or result.normalized


def _display_name(name: str, field: str, offset: int) -> str:
    check_header_text(name, field)
    name = name.strip()  # as the stdlib does; outer whitespace is never shown
    if not name:
        return ""
    if name.isascii() and "=?" not in name and len(name) + offset < MAX_LINE - 10:
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    # Encoded words are never placed inside a quoted string (RFC 2047 5.3).
    return "\r\n ".join(_encoded_words(name, max(MAX_LINE - offset, 24)))


def format_address(
    name: str,
    addr: str,
    field: str = "address",
    *,
    name_field: str | None = None,
    header_name: str = "",
) -> str:
    """Return ``"Display Name" <addr>`` (or just ``addr``) safe for a header.

    The address is checked for line breaks, then for syntax only
    (email-validator, no DNS; IDN domains become punycode so the message stays
    7-bit).  The name goes through the same checks as :func:`header_value`; a
    printable ASCII name is quoted, anything else is RFC 2047 encoded.
    """
    offset = len(header_name) + 2 if header_name else DEFAULT_OFFSET
    ascii_addr = _checked_address(addr, field)
    shown = _display_name(name, name_field or f"{field} name", offset)
    if not shown:
        return ascii_addr
    last_line = shown.rsplit("\r\n", 1)[-1]
    start = offset if "\r\n" not in shown else 0
    sep = "\r\n " if start + len(last_line) + len(ascii_addr) + 3 > MAX_LINE else " "
    return f"{shown}{sep}<{ascii_addr}>"


# --------------------------------------------------------------------------
# Structured values that are never encoded

_MSGID_RE = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]+@[\x21-\x3b\x3d\x3f-\x7e]+>")
_DOMAIN_RE = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}")
_LIST_ID_RE = re.compile(r"(?:(.*?)\s*)?<([A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+)>|([A-Za-z0-9.-]+)")
_URL_RE = re.compile(r"[\x21-\x3b\x3d\x3f-\x7e]+")  # printable ASCII without < > and space
_FIELD_NAME_RE = re.compile(r"[\x21-\x39\x3b-\x7e]+")  # RFC 5322 ftext
#: Headers compose() writes itself; extra_headers may not repeat them.
_OWN_HEADERS = frozenset(
    h.lower()
    for h in (
        "From To Cc Bcc Subject Date Message-ID Reply-To List-Id List-Unsubscribe "
        "List-Unsubscribe-Post MIME-Version Content-Type Content-Transfer-Encoding "
        "Content-Disposition Sender Return-Path DKIM-Signature"
    ).split()
)


def _message_id(value: str) -> str:
    check_header_text(value, "message_id")
    if not _MSGID_RE.fullmatch(value):
        raise InputError(f"message_id: {value!r} is not of the form <left@right>")
    return value


# The values that are the same for every message of a send (sender, subject,
# list): checked and encoded once, not per message.  Pure functions of their
# arguments; an InputError is raised again on every call (exceptions are not cached).
@functools.lru_cache(maxsize=256)
def _from_value(from_name: str, from_addr: str) -> str:
    return format_address(from_name, from_addr, "from_addr", name_field="from_name",
                          header_name="From")  # fmt: skip


@functools.lru_cache(maxsize=256)
def _subject_value(subject: str) -> str:
    return header_value(subject, "subject", header_name="Subject")


@functools.lru_cache(maxsize=256)
def _list_id(value: str) -> str:
    check_header_text(value, "list_id")
    m = _LIST_ID_RE.fullmatch(value.strip())
    if not m:
        raise InputError(f"list_id: {value!r} is not a list id like 'Name <list.example.org>'")
    phrase, ident, bare = m.groups()
    ident = ident or bare
    shown = _display_name(phrase or "", "list_id", len("List-Id: "))
    return f"{shown}\r\n <{ident}>" if "\r\n" in shown else f"{shown} <{ident}>".lstrip()


def _url(value: str, field: str, schemes: tuple[str, ...]) -> str:
    check_header_text(value, field)
    if not value.lower().startswith(schemes) or not _URL_RE.fullmatch(value):
        raise InputError(
            f"{field}: {value[:80]!r} must be an ASCII {' or '.join(schemes)} URL without spaces"
        )
    if len(value) > 900:  # one URL cannot be folded; keep its line under 998
        raise InputError(f"{field}: the URL is {len(value)} characters long; the limit is 900")
    return value


def _unsubscribe_values(url: str | None, mailto: str | None) -> tuple[str | None, bool]:
    items = []
    if url:
        items.append(_url(url, "unsubscribe_url", ("https://", "http://")))
    if mailto:
        if not mailto.lower().startswith("mailto:"):
            mailto = "mailto:" + _checked_address(mailto, "unsubscribe_mailto")
        items.append(_url(mailto, "unsubscribe_mailto", ("mailto:",)))
    if not items:
        return None, False
    return ",\r\n ".join(f"<{item}>" for item in items), bool(url)


# --------------------------------------------------------------------------
# Bodies


@dataclass(frozen=True)
class Attachment:
    """A file attached after the text/HTML alternative part."""

    filename: str
    content_type: str  # e.g. "text/calendar; method=REQUEST; charset=utf-8"
    data: bytes


_TOKEN = r"[A-Za-z0-9!#$&^_.+-]+"
_CONTENT_TYPE_RE = re.compile(
    rf"({_TOKEN})/({_TOKEN})((?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|\"[\x20\x21\x23-\x5b\x5d-\x7e]*\"))*)"
    r"[ \t]*;?[ \t]*"
)
_PARAM_RE = re.compile(rf"({_TOKEN})=({_TOKEN}|\"[\x20\x21\x23-\x5b\x5d-\x7e]*\")")


def _parse_content_type(value: str) -> tuple[str, str, dict[str, str]]:
    m = _CONTENT_TYPE_RE.fullmatch(value.strip())
    if not m:
        raise InputError(f"attachment content_type: {value!r} is not a MIME type like 'text/plain'")
    params = {k.lower(): v.strip('"') for k, v in _PARAM_RE.findall(m.group(3))}
    return m.group(1).lower(), m.group(2).lower(), params


def _disposition(filename: str) -> str:
    check_header_text(filename, "attachment filename")
    if filename.isascii() and '"' not in filename and "\\" not in filename:
        param = f'filename="{filename}"'
    else:  # RFC 2231, as the stdlib writes it
        param = "filename*=utf-8''" + quote(filename, safe="")
    if len(param) > 900:
        raise InputError(f"attachment filename: {filename[:40]!r}... is too long")
    return "attachment; " + param


def _qp(text: str) -> bytes:
    """Quoted-printable body with CRLF line ends, <= 76 characters a line.

    Line ends are normalised first: b2a_qp picks LF or CRLF from the *first*
    line end it sees, so mixed input would come out mixed.  The body always
    ends with a line break (as the stdlib writes it).  "From " at the start of
    a line is written as "=46rom " so an mbox hop cannot mangle it to ">From "
    (which would also break the DKIM body hash).

    Speed: ``b2a_qp`` costs about 8 ns a character, and an email's HTML is
    mostly the same for every recipient.  So each line is encoded once and
    cached (:func:`_qp_line`); a long line (MJML writes whole tables on one
    line, the recipient's links among them) goes through :func:`_qp_long`.
    """
    if "\r" in text:  # one memchr; a replace costs about 1 ns a character
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.endswith("\n"):
        text += "\n"
    lines = [
        _qp_line(line) if len(line) <= 76 else _qp_long(line)
        for line in text[:-1].split("\n")
    ]
    return b"\n".join(lines).replace(b"\n", CRLF) + CRLF


# --------------------------------------------------------------------------
# Spliced bodies: static segments encoded once per content
#
# A compiled email's text and HTML are literal segments around per-recipient
# islands (campaigns/render.py, Splice).  Each segment is put in
# quoted-printable once, with a soft line break ("=" CRLF) where it stops in
# the middle of a line, and its DKIM relaxed form is kept beside it; per
# recipient only the islands are encoded, the same way, and everything is
# joined.  Decoding gives exactly the full render's text (only the soft line
# breaks sit elsewhere); every line stays <= 76 characters.  Each piece ends
# with CRLF, and relaxed body canonicalisation works line by line, so the
# canonical body is the canonical pieces joined (tests/test_mime_splice.py
# checks both against the standard library and campaigns/dkim.py).


def relaxed_lines(data: bytes) -> bytes:
    """DKIM relaxed canonicalisation of whole CRLF lines (RFC 6376 3.4.4),
    without the rule for empty lines at the end of the body.

    Speed (a 16 KB message): each pass costs 10-20 µs, so a pass runs only
    when a cheap test says it has work: tabs become spaces, runs of spaces
    become one (one regular expression pass), and, once runs are single, one
    space before a line end is dropped.
    """
    if b"\t" in data:
        data = data.replace(b"\t", b" ")
    if b"  " in data:
        data = _RUNS.sub(b" ", data)
    if _BLANK_EOL.search(data):  # a regex finds a 3-byte needle 3x faster than `in`
        data = data.replace(b" \r\n", b"\r\n")
    return data


_RUNS = re.compile(rb"  +")
_BLANK_EOL = re.compile(rb" \r\n")


@dataclass(frozen=True, slots=True)
class Encoded:
    """A text part already in quoted-printable (CRLF, ends with a line break),
    with its DKIM relaxed form."""

    qp: bytes
    canonical: bytes


def _qp_piece(text: str, cached: bool) -> bytes:
    """*text*, which may start and end inside a line, as QP ending with CRLF:
    a soft line break closes it when it does not end with a line break."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    # Islands bypass the caches: their values are the recipient's, used once.
    short, long = (_qp_line, _qp_long) if cached else (_qp_encode, _qp_long.__wrapped__)
    lines = [short(line) if len(line) <= 76 else long(line) for line in text.split("\n")]
    last = lines[-1]
    if last:  # ends inside a line: room for the "=" of the soft break
        cut = last.rfind(b"\n") + 1
        if len(last) - cut > 75:
            lines[-1] = last[:cut] + _rewrap(last[cut:], 75)
        lines[-1] += b"="
        lines.append(b"")
    return b"\n".join(lines).replace(b"\n", CRLF) if len(lines) > 1 else b""


def _qp_island(text: str) -> bytes:
    """:func:`_qp_piece` for an island; most are one line (a name, a link),
    which skips the splitting and joining."""
    if "\n" in text or "\r" in text:
        return _qp_piece(text, cached=False)
    enc = _qp_encode(text) if len(text) <= 76 else _qp_long.__wrapped__(text)
    cut = enc.rfind(b"\n") + 1
    if len(enc) - cut > 75:
        enc = enc[:cut] + _rewrap(enc[cut:], 75)
    return (enc + b"=\n").replace(b"\n", CRLF) if cut else enc + b"=\r\n"


@functools.lru_cache(maxsize=64)
def _island_piece(text: str) -> tuple[bytes, bytes]:
    """An island's QP and relaxed form.  Cached for a few messages' worth: the
    same values (the click link, unsubscribe, view) recur in the text and the
    HTML of one message."""
    qp = _qp_island(text)
    return qp, relaxed_lines(qp)


@functools.lru_cache(maxsize=64)
def _static_pieces(static: tuple[str, ...]) -> tuple[tuple[bytes, bytes], ...] | None:
    """Each static segment's QP and its relaxed form, once per compiled content
    (None when a segment holds a CR: left to the full path).  The text ends
    with a line break, as :func:`_qp` makes it."""
    if any("\r" in segment for segment in static):
        return None
    out = []
    last = len(static) - 1
    for i, segment in enumerate(static):
        if i == last and segment and not segment.endswith("\n"):
            segment += "\n"
        qp = _qp_piece(segment, cached=False)
        out.append((qp, relaxed_lines(qp)))
    return tuple(out)


def encode_spliced(static: tuple[str, ...], islands: tuple[str, ...]) -> Encoded:
    """The QP body of static segments interleaved with rendered islands.

    Like :func:`_qp`, the text gets a line break at the end if it has none.
    A CR anywhere sends the text to :func:`_qp`, which normalises line ends
    over the whole text.
    """
    pieces = _static_pieces(static)
    ends_in_island = not static[-1]
    if (
        pieces is None
        or (ends_in_island and not islands[-1])  # where the text ends is further back
        or any("\r" in island for island in islands)
    ):
        return _encoded(interleave(static, islands))
    if ends_in_island and not islands[-1].endswith("\n"):
        islands = (*islands[:-1], islands[-1] + "\n")
    qp, canon = [pieces[0][0]], [pieces[0][1]]
    for island, (static_qp, static_canon) in zip(islands, pieces[1:], strict=True):
        if island:
            island_qp, island_canon = _island_piece(island)
            qp.append(island_qp)
            canon.append(island_canon)
        qp.append(static_qp)
        canon.append(static_canon)
    return Encoded(b"".join(qp), b"".join(canon))


def interleave(static: tuple[str, ...], islands: tuple[str, ...]) -> str:
    """The static segments with the islands between them: the whole text."""
    out = [static[0]]
    for island, after in zip(islands, static[1:], strict=True):
        out += (island, after)
    return "".join(out)


def _encoded(text: str) -> Encoded:
    qp = _qp(text)
    return Encoded(qp, relaxed_lines(qp))


#: ASCII control characters (tab included): a line with one goes to b2a_qp.
_CONTROLS = bytes(range(0x20)) + b"\x7f"
#: Maps every byte >= 0x80 to NUL (which a line reaching that step cannot hold).
_HIGH_TO_NUL = bytes(range(0x80)) + b"\0" * 0x80
#: Up to this many non-ASCII bytes are escaped one by one; more go to b2a_qp.
_FEW_HIGH_BYTES = 48


def _escape_high(raw: bytes) -> bytes | None:
    """*raw* with each byte >= 0x80 as =XX, or None when there are many.

    ``find`` on a translated copy is a memchr per byte escaped, where a
    regular expression looking for them costs ~8 ns per byte of the line.
    """
    marked = raw.translate(_HIGH_TO_NUL)
    if marked.count(b"\0") > _FEW_HIGH_BYTES:
        return None
    out, start = [], 0
    i = marked.find(b"\0")
    while i != -1:
        out += (raw[start:i], b"=%02X" % raw[i])
        start = i + 1
        i = marked.find(b"\0", start)
    out.append(raw[start:])
    return b"".join(out)


#: Up to 75 characters that do not end inside an "=XX" escape (the soft break's
#: "=" makes 76); greedy, so each line is as long as it may be.
_QP_CHUNK = re.compile(rb".{1,75}(?<!=)(?<!=.)", re.DOTALL)


@functools.lru_cache(maxsize=64)
def _qp_long(line: str) -> bytes:
    """A line longer than 76 characters, in quoted-printable.

    A hand-written fast path for lines without control characters and with
    few non-ASCII characters (b2a_qp takes the others): "=" and the UTF-8
    bytes of non-ASCII characters become =XX, a space at the end and "From " at the start are escaped, and soft
    line breaks are put in; a few C-level passes, about 2 ns a character
    against b2a_qp's 8 or more.  ``tests/test_mime_long_lines.py``
    decodes the result with the standard library and checks line lengths.

    Cached, but only a few dozen lines: the long lines without recipient data
    recur in every message and stay in the cache; the few with a recipient's
    links are used once and soon pushed out (they can be kilobytes each).
    """
    raw = line.encode("utf-8")
    if len(raw.translate(None, _CONTROLS)) != len(raw):
        return _qp_encode(line)
    enc = raw.replace(b"=", b"=3D")
    if not line.isascii() and (enc := _escape_high(enc)) is None:
        return _qp_encode(line)  # mostly non-Latin text: b2a_qp is as quick
    if enc.endswith(b" "):  # a blank at a line end would be dropped in transit
        enc = enc[:-1] + b"=20"
    if enc.startswith(b"From "):
        enc = b"=46" + enc[1:]
    return b"=\n".join(_QP_CHUNK.findall(enc))


def _qp_encode(text: str) -> bytes:
    """One line encoded with b2a_qp, no line longer than 76 characters."""
    body = binascii.b2a_qp(text.encode("utf-8"), quotetabs=False, istext=True)
    # Cheap substring tests first: a line needs fixing only if it starts with
    # "From ", or ends in an encoded space or tab, which is where b2a_qp can
    # overshoot 76 characters.
    if (
        b"\nFrom " in body
        or body.startswith(b"From ")
        or b"=20\n" in body
        or b"=09\n" in body
    ):
        body = b"\n".join(_rewrap(_escape_from(line)) for line in body.split(b"\n"))
    return body


#: The short lines, most of them the same for every recipient.
_qp_line = functools.lru_cache(maxsize=8192)(_qp_encode)


def _escape_from(line: bytes) -> bytes:
    """Write a leading "From " as "=46rom "; _rewrap fixes the length."""
    return b"=46" + line[1:] if line.startswith(b"From ") else line


def _rewrap(line: bytes, width: int = 76) -> bytes:
    """Split a quoted-printable line over *width* characters with soft line breaks.

    b2a_qp itself can emit 77 characters when a line ends in an encoded
    space after escapes (found by the hypothesis test), and _escape_from adds
    two; never split an =XX escape.
    """
    out = []
    while len(line) > width:
        cut = width - 1
        while b"=" in line[cut - 2 : cut]:
            cut -= 1
        out.append(line[:cut] + b"=")
        line = line[cut:]
    out.append(line)
    return b"\n".join(out)


def _b64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", CRLF)


def _boundary() -> str:
    # "=_" can never occur in quoted-printable or base64 output ("=" is only
    # followed by hex digits, a line break or padding), so the boundary cannot
    # collide with any body line.  So it needs no secrecy either: random's
    # generator (reseeded in a forked sender) instead of a getrandom() system
    # call, two of which a message made while the wire thread waited for the GIL.
    return f"=_{random.getrandbits(96):024x}"


# --------------------------------------------------------------------------
# Composition


def _check_date(date: datetime) -> datetime:
    if not isinstance(date, datetime) or date.tzinfo is None or date.utcoffset() is None:
        raise InputError(f"date: {date!r} must be a timezone-aware datetime")
    return date


def _headers(
    *,
    from_name: str,
    from_addr: str,
    to_name: str,
    to_addr: str,
    subject: str,
    date: datetime,
    message_id: str,
    list_id: str | None,
    unsubscribe_url: str | None,
    unsubscribe_mailto: str | None,
    reply_to: str | None,
    extra_headers: Sequence[tuple[str, str]],
) -> list[tuple[str, str]]:
    """Validate every header input and return (name, folded value) pairs."""
    headers = [
        ("From", _from_value(from_name, from_addr)),
        ("To", format_address(to_name, to_addr, "to_addr", name_field="to_name", header_name="To")),
        ("Subject", _subject_value(subject)),
        ("Date", format_datetime(_check_date(date))),
        ("Message-ID", _message_id(message_id)),
    ]  # fmt: skip
    if reply_to:
        headers.append(("Reply-To", _checked_address(reply_to, "reply_to")))
    if list_id:
        headers.append(("List-Id", _list_id(list_id)))
    unsubscribe, one_click = _unsubscribe_values(unsubscribe_url, unsubscribe_mailto)
    if unsubscribe:
        headers.append(("List-Unsubscribe", unsubscribe))
    if one_click:
        headers.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    for name, value in extra_headers:
        if not isinstance(name, str) or not _FIELD_NAME_RE.fullmatch(name) or len(name) > 76:
            raise InputError(f"extra_headers: {name!r} is not a valid header name")
        if name.lower() in _OWN_HEADERS:
            raise InputError(f"extra_headers: {name} is set by compose and cannot be added again")
        headers.append((name, header_value(value, f"extra_headers {name}", header_name=name)))
    return headers


def compose(
    *,
    from_name: str,
    from_addr: str,
    to_name: str,
    to_addr: str,
    subject: str,
    date: datetime,
    message_id: str,
    text: str,
    html: str,
    list_id: str | None = None,
    unsubscribe_url: str | None = None,
    unsubscribe_mailto: str | None = None,
    reply_to: str | None = None,
    extra_headers: Sequence[tuple[str, str]] = (),
    attachments: Sequence[Attachment] = (),
) -> bytes:
    """Return the complete message as 7-bit bytes with CRLF line ends.

    multipart/alternative (text/plain then text/html, both utf-8 and
    quoted-printable); with attachments, multipart/mixed wrapping that
    alternative part followed by each attachment (base64).  Raises InputError
    naming the argument for any unsafe or malformed input.
    """
    return compose_signable(
        from_name=from_name, from_addr=from_addr, to_name=to_name, to_addr=to_addr,
        subject=subject, date=date, message_id=message_id, text=text, html=html,
        list_id=list_id, unsubscribe_url=unsubscribe_url,
        unsubscribe_mailto=unsubscribe_mailto, reply_to=reply_to,
        extra_headers=extra_headers, attachments=attachments,
    )[0]  # fmt: skip


def compose_signable(
    *,
    from_name: str,
    from_addr: str,
    to_name: str,
    to_addr: str,
    subject: str,
    date: datetime,
    message_id: str,
    text: str | Encoded,
    html: str | Encoded,
    list_id: str | None = None,
    unsubscribe_url: str | None = None,
    unsubscribe_mailto: str | None = None,
    reply_to: str | None = None,
    extra_headers: Sequence[tuple[str, str]] = (),
    attachments: Sequence[Attachment] = (),
) -> tuple[bytes, bytes | None]:
    """:func:`compose`, with the text and HTML parts either as text or already
    encoded (:func:`encode_spliced`), and the message's DKIM relaxed body
    alongside when both parts were given encoded and nothing is attached
    (else None): campaigns/dkim.py then hashes it without parsing the body.
    """
    headers = _headers(
        from_name=from_name, from_addr=from_addr, to_name=to_name, to_addr=to_addr,
        subject=subject, date=date, message_id=message_id, list_id=list_id,
        unsubscribe_url=unsubscribe_url, unsubscribe_mailto=unsubscribe_mailto,
        reply_to=reply_to, extra_headers=extra_headers,
    )  # fmt: skip
    alt = _boundary()
    alt_b = alt.encode()
    text_qp = text.qp if isinstance(text, Encoded) else _qp(text)
    html_qp = html.qp if isinstance(html, Encoded) else _qp(html)
    # The MIME lines around the parts have no blanks to canonicalise.
    frame = (
        b"--" + alt_b + b"\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
        b"\r\n--" + alt_b + b"\r\nContent-Type: text/html; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
        b"\r\n--" + alt_b + b"--\r\n",
    )  # fmt: skip
    alternative = b"".join((frame[0], text_qp, frame[1], html_qp, frame[2]))
    canonical = None
    if isinstance(text, Encoded) and isinstance(html, Encoded) and not attachments:
        canonical = b"".join((frame[0], text.canonical, frame[1], html.canonical, frame[2]))
    if attachments:
        mixed = _boundary()
        mixed_b = mixed.encode()
        parts = [
            b"--", mixed_b, b'\r\nContent-Type: multipart/alternative; boundary="', alt_b,
            b'"\r\n\r\n', alternative,
        ]  # fmt: skip
        for att in attachments:
            _parse_content_type(att.content_type)  # validates; raises InputError
            ctype = att.content_type.strip().rstrip(";").strip()
            parts += [
                b"\r\n--", mixed_b, b"\r\nContent-Type: ", ctype.encode("ascii"),
                b"\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: ",
                _disposition(att.filename).encode("ascii"), b"\r\n\r\n", _b64(att.data),
            ]  # fmt: skip
        parts += [b"\r\n--", mixed_b, b"--\r\n"]
        body = b"".join(parts)
        headers.append(("Content-Type", f'multipart/mixed; boundary="{mixed}"'))
    else:
        body = alternative
        headers.append(("Content-Type", f'multipart/alternative; boundary="{alt}"'))
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    # .encode("ascii") doubles as the 7-bit guarantee: every value above has
    # been encoded, so a non-ASCII character here is a bug and fails loudly.
    return b"".join((head.encode("ascii"), b"MIME-Version: 1.0\r\n\r\n", body)), canonical


def compose_stdlib(
    *,
    from_name: str,
    from_addr: str,
    to_name: str,
    to_addr: str,
    subject: str,
    date: datetime,
    message_id: str,
    text: str,
    html: str,
    list_id: str | None = None,
    unsubscribe_url: str | None = None,
    unsubscribe_mailto: str | None = None,
    reply_to: str | None = None,
    extra_headers: Sequence[tuple[str, str]] = (),
    attachments: Sequence[Attachment] = (),
) -> bytes:
    """The same message as :func:`compose`, built with ``EmailMessage``.

    The reference for tests and the naive pipeline for ``bench/mime.py``.  It
    runs the same input checks first (the stdlib alone is not safe against
    CVE-2024-6923), then lets the email package encode names, subject and
    bodies itself, so the comparison tests are meaningful.
    """
    headers = dict(
        _headers(
            from_name=from_name, from_addr=from_addr, to_name=to_name, to_addr=to_addr,
            subject=subject, date=date, message_id=message_id, list_id=list_id,
            unsubscribe_url=unsubscribe_url, unsubscribe_mailto=unsubscribe_mailto,
            reply_to=reply_to, extra_headers=extra_headers,
        )
    )  # fmt: skip
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = Address(from_name.strip(), addr_spec=_checked_address(from_addr, "from_addr"))
    msg["To"] = Address(to_name.strip(), addr_spec=_checked_address(to_addr, "to_addr"))
    msg["Subject"] = subject
    msg["Date"] = date
    msg["Message-ID"] = message_id
    for name in ("Reply-To", "List-Id", "List-Unsubscribe", "List-Unsubscribe-Post"):
        if name in headers:  # already ASCII and validated; unfold for the stdlib
            msg[name] = headers[name].replace("\r\n", "")
    for name, value in extra_headers:
        msg[name] = value
    msg.set_content(text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(html, subtype="html", charset="utf-8", cte="quoted-printable")
    for att in attachments:
        maintype, subtype, params = _parse_content_type(att.content_type)
        msg.add_attachment(
            att.data, maintype=maintype, subtype=subtype, filename=att.filename, params=params
        )
    return msg.as_bytes()


def make_message_id(row_id: int, domain: str, salt: str = "") -> str:
    """Return ``<ROW.HASH@domain>``, the same for the same inputs.

    Stable per outbox row, so a message resent after a crash keeps its
    Message-ID and receivers can de-duplicate it.  The keyed hash means ids
    don't reveal a bare, guessable sequence when *salt* is secret.
    """
    if not isinstance(row_id, int) or isinstance(row_id, bool) or row_id < 0:
        raise InputError(f"row_id: {row_id!r} must be a non-negative integer")
    if not _DOMAIN_RE.fullmatch(domain or ""):
        raise InputError(f"domain: {domain!r} is not a host name for a Message-ID")
    digest = hmac.new(salt.encode("utf-8"), str(row_id).encode(), hashlib.sha256).hexdigest()
    return f"<{row_id}.{digest[:16]}@{domain}>"
