"""DKIM signing of composed messages on OpenSSL (``cryptography``), relaxed/relaxed.

One RSA-SHA256 signature always, and a second Ed25519-SHA256 signature
(RFC 8463) when an Ed25519 key is set too.  Receivers that know Ed25519 may
use it; the others ignore it and check the RSA one.

Which headers are signed, and why
---------------------------------
Every header in :data:`SIGNED_HEADERS` that is present in the message is
signed (each occurrence).  On top of that the headers in :data:`OVERSIGNED`
are listed once more in ``h=`` than they occur.  DKIM verifiers treat a listed
header that is missing as empty, so this extra entry "locks" the header: a
relay or replayer that *adds* another ``From``, ``Subject``, ``Reply-To``,
``Cc``, ``List-Id``, ``Content-Type`` or ``List-Unsubscribe`` (or adds one to
a confirmation email that had none)
breaks the signature instead of getting a free ride on our reputation.
Gmail and Yahoo require the two List-Unsubscribe headers to be covered by the
signature for one-click unsubscribe; both are always in ``h=``.

Signing a header that is absent is legal (RFC 6376 5.4.2); it only means the
header can never be added later, which is what we want for these.

How a signature is made (RFC 6376 3.4.2, 3.4.4, 3.7)
----------------------------------------------------
The body is canonicalised and hashed once per message; both signatures carry
the same ``bh=``.  The headers named in ``h=`` are picked bottom-up (the last
unused occurrence of each name), canonicalised (lower-case name, unfolded
value, runs of blanks made one space, blanks trimmed), followed by our own
``DKIM-Signature`` field with an empty ``b=`` and no line end.  RSA signs
those bytes with PKCS#1 v1.5 over SHA-256; Ed25519 signs their SHA-256
digest, as RFC 8463 says.  No ``t=`` tag: the signature depends only on the
message, so the same message always gets the same signature.

Speed: an RSA-2048 signature costs about a quarter of a millisecond in
OpenSSL, an Ed25519 one a few tens of microseconds (``bench/send.py`` prints
the send rate with and without signing, in the same run).
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from funnel.errors import FunnelError

from .mime import relaxed_lines

__all__ = [
    "OVERSIGNED", "SIGNED_HEADERS", "DkimSigner", "Signing", "canonical_body", "canonical_header",
]

SIGNED_HEADERS = (
    b"from",
    b"to",
    b"cc",
    b"reply-to",
    b"subject",
    b"date",
    b"message-id",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"list-id",
    b"mime-version",
    b"content-type",
)

#: Listed one extra time in h= so that nobody can add another instance.
OVERSIGNED = (
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"reply-to",  # a second Reply-To would redirect replies
    b"cc",  # we never send Cc; adding one later breaks the signature
    b"list-id",
    b"content-type",  # a second Content-Type could make clients show another body
)

_SIGNED = frozenset(SIGNED_HEADERS)
#: The bytes a header field name may hold (RFC 5322 2.2: printable ASCII but ":").
_NAME_BYTES = bytes(range(0x21, 0x7F))
_BLANKS = re.compile(rb"[\t ]+")
_LINE_END = re.compile(rb"\r?\n")
_WIDTH = 72


def _split(message: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """(name, raw value) pairs of the header, continuations kept, and the body."""
    end = message.find(b"\r\n\r\n")
    if end == -1:
        head, body = message, b""
    else:
        head, body = message[:end], message[end + 4 :]
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n"):
        first = line[:1]
        if (first == b" " or first == b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\r\n" + line)
            continue
        # partition at the first ":" is what the _NAME regex matched (a
        # non-greedy run of printable characters), in a third of the time.
        name, colon, value = line.partition(b":")
        if colon and name and not name.translate(None, _NAME_BYTES):
            fields.append((name, value))
    return fields, body


def canonical_header(name: bytes, value: bytes) -> bytes:
    """One header field in relaxed form, with its CRLF (RFC 6376 3.4.2).

    Most of our values are one line with single spaces: for those, unfolding
    and squeezing blanks change nothing, so two regex passes (3-4 µs a field)
    are skipped after three substring tests.
    """
    if b"\n" not in value and b"\t" not in value and b"  " not in value:
        return name.lower().rstrip() + b":" + value.strip() + b"\r\n"
    unfolded = _LINE_END.sub(b"", value)
    return name.lower().rstrip() + b":" + _BLANKS.sub(b" ", unfolded).strip() + b"\r\n"


def canonical_body(body: bytes) -> bytes:
    """The body in relaxed form (RFC 6376 3.4.4): an empty body stays empty."""
    body = relaxed_lines(body)
    end = len(body)
    while body.endswith(b"\r\n", 0, end):  # empty lines at the end don't count
        end -= 2
    return body[:end] + b"\r\n" if end else b""


def include_headers(message: bytes) -> list[bytes]:
    """The h= list for *message*: present signed headers, then the oversigned ones."""
    fields, _ = _split(message)
    return _include([name.lower() for name, _ in fields])


def _include(present: list[bytes]) -> list[bytes]:
    if present.count(b"from") != 1:
        # Oversigning would otherwise hide a missing From from a verifier.
        raise FunnelError(
            f"dkim: cannot sign a message with {present.count(b'from')} From headers; it needs one"
        )
    return [name for name in present if name in _SIGNED] + list(OVERSIGNED)


def _selected(fields: list[tuple[bytes, bytes]], names: list[bytes]) -> bytes:
    """The canonical bytes of the fields named in h=, each picked bottom-up.

    Each name's occurrences are listed top-down once; every use of the name
    in h= takes the last one left (a name listed more often than it occurs,
    as oversigning does, then adds nothing).
    """
    where: dict[bytes, list[int]] = {}
    for i, (name, _) in enumerate(fields):
        where.setdefault(name.lower(), []).append(i)
    out = []
    for name in names:
        left = where.get(name)
        if left:
            out.append(canonical_header(*fields[left.pop()]))
    return b"".join(out)


def _fold_list(names: list[bytes], first: int) -> bytes:
    """``a:b:c`` folded before a name when a line would pass the width."""
    lines, line, width = [], b"", first
    for name in names:
        piece = name if not line else b":" + name
        if line and width + len(line) + len(piece) > _WIDTH:
            lines.append(line + b":")
            line, width, piece = b"", 1, name
        line += piece
    lines.append(line)
    return b"\r\n ".join(lines)


def _fold_b64(value: bytes, first: int) -> bytes:
    chunks = [value[: _WIDTH - first]]
    rest = value[_WIDTH - first :]
    chunks += [rest[i : i + _WIDTH - 1] for i in range(0, len(rest), _WIDTH - 1)]
    return b"\r\n ".join(chunk for chunk in chunks if chunk)


def _load(path: Path, kind: str, setting: str):
    try:
        pem = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise FunnelError(f"{setting} {path}: cannot read the DKIM key ({reason})") from None
    try:
        key = serialization.load_pem_private_key(pem.replace(b"\r\n", b"\n"), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise FunnelError(
            f"{setting} {path}: not a PEM {kind} private key (PKCS#1 or PKCS#8): {first}"
        ) from None
    wanted = rsa.RSAPrivateKey if kind == "RSA" else ed25519.Ed25519PrivateKey
    if not isinstance(key, wanted):
        raise FunnelError(
            f"{setting} {path}: not a PEM {kind} private key (PKCS#1 or PKCS#8): "
            f"it holds another kind of key"
        )
    return key


class DkimSigner:
    """Signs messages for one selector and domain with an RSA key, and
    optionally an Ed25519 key (same selector unless *ed25519_selector* is given).

    Keys are read and parsed once, here, so a bad key file is reported when
    the transport starts rather than on the first message.
    """

    def __init__(
        self,
        selector: str,
        domain: str,
        key_path: str | Path,
        ed25519_key_path: str | Path = "",
        ed25519_selector: str = "",
    ) -> None:
        self.key_path = Path(key_path)
        self._rsa = _load(self.key_path, "RSA", "dkim_key_file")
        self._ed25519 = None
        if ed25519_key_path:
            self._ed25519 = _load(Path(ed25519_key_path), "Ed25519", "dkim_ed25519_key_file")
        if not selector or not domain:
            raise FunnelError("dkim_selector: DKIM signing needs both a selector and a domain")
        self.selector = selector
        self.domain = domain
        self.ed25519_selector = ed25519_selector or selector
        self._last_body: bytes | None = None
        self._last_bh = b""

    def _body_hash(self, body: bytes) -> bytes:
        if body != self._last_body:
            digest = hashlib.sha256(canonical_body(body)).digest()
            self._last_body, self._last_bh = body, base64.b64encode(digest)
        return self._last_bh

    def _field(self, algorithm: bytes, selector: str, h: list[bytes], bh: bytes) -> bytes:
        """The DKIM-Signature field up to and including the empty ``b=``."""
        start = (
            b"DKIM-Signature: v=1; a=" + algorithm + b"; c=relaxed/relaxed; d="
            + self.domain.encode("ascii") + b"; s=" + selector.encode("ascii") + b";"
        )  # fmt: skip
        return start + b"\r\n h=" + _fold_list(h, 3) + b";\r\n bh=" + bh + b";\r\n b="

    def sign(self, message: bytes) -> bytes:
        """Return *message* with its DKIM-Signature header(s) prepended (RSA on top).

        Sign the final bytes, just before sending: any later change to a
        signed header or to the body invalidates the signature.
        """
        return self.prepare(message).headers() + message

    def prepare(self, message: bytes, canonical_body: bytes | None = None) -> Signing:
        """Everything but the private-key operations: parse, canonicalise, hash.

        Raises FunnelError for a message that cannot be signed, here, in the
        caller's thread.  :meth:`Signing.headers` then does the RSA (and
        Ed25519) operation, which ``cryptography`` runs with the GIL released,
        so the sender calls it on its SMTP thread while the main thread builds
        the next message (campaigns/sender.py).

        *canonical_body*, when given, is the body already in relaxed form
        (mime.compose_signable builds it from pieces canonicalised once per
        content): only its hash is left, and :meth:`Signing.headers` does it
        (hashlib releases the GIL on data this size, so on the SMTP thread it
        runs beside the building).
        """
        fields, body = _split(message)
        h = _include([name.lower() for name, _ in fields])
        if canonical_body is None:
            return Signing(self, _selected(fields, h), h, self._body_hash(body))
        return Signing(self, _selected(fields, h), h, b"", canonical_body)

    def _rsa_field(self, signed: bytes, h: list[bytes], bh: bytes) -> bytes:
        field = self._field(b"rsa-sha256", self.selector, h, bh)
        data = signed + _own(field)
        b = self._rsa.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return field + _fold_b64(base64.b64encode(b), 3) + b"\r\n"

    def _ed25519_field(self, signed: bytes, h: list[bytes], bh: bytes) -> bytes:
        field = self._field(b"ed25519-sha256", self.ed25519_selector, h, bh)
        digest = hashlib.sha256(signed + _own(field)).digest()
        b = self._ed25519.sign(digest)
        return field + _fold_b64(base64.b64encode(b), 3) + b"\r\n"


class Signing:
    """A message's signature(s), prepared by :meth:`DkimSigner.prepare`, made by :meth:`headers`."""

    __slots__ = ("_bh", "_canonical", "_h", "_signed", "_signer")

    def __init__(self, signer: DkimSigner, signed: bytes, h: list[bytes], bh: bytes,
                 canonical_body: bytes = b"") -> None:
        self._signer, self._signed, self._h, self._bh = signer, signed, h, bh
        self._canonical = canonical_body  # hashed by headers() when bh is not known yet

    def headers(self) -> bytes:
        """The DKIM-Signature header field(s) to put in front of the message (RSA first)."""
        signer = self._signer
        if not self._bh:
            self._bh = base64.b64encode(hashlib.sha256(self._canonical).digest())
        out = signer._rsa_field(self._signed, self._h, self._bh)
        if signer._ed25519 is not None:
            out += signer._ed25519_field(self._signed, self._h, self._bh)
        return out


def _own(field: bytes) -> bytes:
    """Our own DKIM-Signature field as hashed: relaxed, empty b=, no line end."""
    name, value = field.split(b":", 1)
    return canonical_header(name, value)[:-2]
