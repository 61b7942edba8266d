"""DKIM signing of composed messages (dkimpy, relaxed/relaxed, rsa-sha256).

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

Speed: dkimpy signs in pure Python (CRT exponentiation with Python ints), a
few milliseconds per message for a 2048-bit key -- more than composing the
message.  ``bench/mime.py`` prints the figure.
"""

from __future__ import annotations

from pathlib import Path

import dkim
from dkim.crypto import UnparsableKeyError, parse_pem_private_key

from funnel.errors import FunnelError

__all__ = ["OVERSIGNED", "SIGNED_HEADERS", "DkimSigner"]

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


def _header_names(message: bytes) -> list[bytes]:
    """Lower-cased names of the header fields, in order (continuations skipped)."""
    end = message.find(b"\r\n\r\n")
    head = message if end == -1 else message[:end]
    names = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") or b":" not in line:
            continue
        names.append(line.split(b":", 1)[0].strip().lower())
    return names


def include_headers(message: bytes) -> list[bytes]:
    """The h= list for *message*: present signed headers, then the oversigned ones."""
    present = _header_names(message)
    if present.count(b"from") != 1:
        # Oversigning would otherwise hide a missing From from dkimpy's check.
        raise FunnelError(
            f"dkim: cannot sign a message with {present.count(b'from')} From headers; it needs one"
        )
    return [name for name in present if name in SIGNED_HEADERS] + list(OVERSIGNED)


class DkimSigner:
    """Signs messages for one selector and domain with one RSA key.

    The key is read and parsed once, here, so a bad key file is reported when
    the transport starts rather than on the first message.
    """

    def __init__(self, selector: str, domain: str, key_path: str | Path) -> None:
        path = Path(key_path)
        try:
            pem = path.read_bytes()
        except OSError as exc:
            reason = exc.strerror or exc.__class__.__name__
            raise FunnelError(
                f"dkim_key_file {path}: cannot read the DKIM key ({reason})"
            ) from None
        # dkimpy's PEM reader only understands LF line ends.
        pem = pem.replace(b"\r\n", b"\n")
        try:
            parse_pem_private_key(pem)
        except (UnparsableKeyError, ValueError, IndexError, TypeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            raise FunnelError(
                f"dkim_key_file {path}: not a PEM RSA private key (PKCS#1 or PKCS#8): {first}"
            ) from None
        if not selector or not domain:
            raise FunnelError("dkim_selector: DKIM signing needs both a selector and a domain")
        self.selector = selector
        self.domain = domain
        self.key_path = path
        self._pem = pem

    def sign(self, message: bytes) -> bytes:
        """Return *message* with a DKIM-Signature header prepended.

        Sign the final bytes, just before sending: any later change to a
        signed header or to the body invalidates the signature.
        """
        try:
            signature = dkim.sign(
                message,
                self.selector.encode("ascii"),
                self.domain.encode("ascii"),
                self._pem,
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=include_headers(message),
                linesep=b"\r\n",
            )
        except dkim.DKIMException as exc:
            raise FunnelError(f"dkim: cannot sign the message for {self.domain} ({exc})") from None
        return signature + message
