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
the send rate with and without signing, in the same run).  For a large send
the sender moves those operations to a child process (:meth:`DkimSigner.offload`,
:class:`_Helper`): the sending process is bound to one core by the GIL, and
the child signs on the other one (:meth:`DkimSigner.keep_apart` keeps them
apart for each batch).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
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
        rsa_key = _load(self.key_path, "RSA", "dkim_key_file")
        ed_key = None
        if ed25519_key_path:
            ed_key = _load(Path(ed25519_key_path), "Ed25519", "dkim_ed25519_key_file")
        if not selector or not domain:
            raise FunnelError("dkim_selector: DKIM signing needs both a selector and a domain")
        self._keys(selector, domain, ed25519_selector, rsa_key, ed_key)

    def _keys(self, selector: str, domain: str, ed25519_selector: str, rsa_key, ed_key) -> None:
        self._rsa, self._ed25519 = rsa_key, ed_key
        self.selector = selector
        self.domain = domain
        self.ed25519_selector = ed25519_selector or selector
        self._last_body: bytes | None = None
        self._last_bh = b""
        self._helper: _Helper | None = None
        #: Whether :meth:`keep_apart` may give the sending threads and the signing
        #: child separate CPUs: yes for a lone sender, no when several sender
        #: processes share the machine (campaigns/worker.py).
        self.apart = True

    def offload(self) -> None:
        """Make the private-key operations in a child process from now on (until :meth:`close`).

        An RSA-2048 signature is about a quarter of a millisecond of CPU.  In a thread
        of the sending process it competes with the building for the one core
        the process can use (and for the GIL); a child process signs on the
        other core.  ``prepare`` hands the child the canonical bytes at once,
        so the signature is made while the message waits for the wire.  If the
        child cannot start or dies, signing goes on here, with the same result
        (PKCS#1 v1.5 and Ed25519 signatures are deterministic).
        """
        if self._helper is None or self._helper.dead:
            self._helper = _Helper(self)

    def keep_apart(self, threads: Iterable[int] = ()) -> Callable[[], None]:
        """Keep the calling thread (and *threads*, by native id) on the CPU it runs on now,
        and the signing child on the other CPUs, until the returned function is called.

        The sender's two threads (the builder and the wire thread) take turns
        under the GIL; each turn handed to a thread on the other core has to
        wake that core, and the signing child, when the scheduler puts it beside
        them, takes the CPU from whichever holds the GIL while the other one
        waits for it.  Kept apart, they stop getting in each other's way.
        Measured with ``bench/send.py --dkim --n 20000`` and a harness around
        ``send_due`` (three rounds of 6,000 recipients into smtp-sink): signed
        2,400-2,580 msg/s against 1,830-2,120 unpinned, the unsigned rate in the
        same runs 2,870-3,010; the child pinned alone, with the sending threads
        free, gained nothing (1,924-2,013).

        Only for a lone sender (:attr:`apart`) with a signing child and at least
        two CPUs; otherwise, or if the system refuses, nothing changes and the
        function returned does nothing.  The sender keeps its threads together
        for one batch (campaigns/sender.py), so the scheduler places each batch
        afresh; the child keeps its CPUs until the next batch sets them.
        """
        helper = self._helper
        if (not self.apart or helper is None or helper.dead
                or not hasattr(os, "sched_setaffinity")):  # fmt: skip
            return _nothing
        try:
            allowed = os.sched_getaffinity(0)
            here = _current_cpu()
            if len(allowed) < 2 or here not in allowed:
                return _nothing
            before = [(tid, os.sched_getaffinity(tid)) for tid in (0, *threads)]
            os.sched_setaffinity(helper._proc.pid, allowed - {here})
        except OSError:
            return _nothing

        def undo() -> None:
            for tid, cpus in before:
                try:
                    os.sched_setaffinity(tid, cpus)
                except OSError:  # a thread that has ended since
                    pass

        try:
            for tid, _ in before:
                os.sched_setaffinity(tid, {here})
        except OSError:  # no thread is left pinned halfway
            undo()
            return _nothing
        return undo

    def close(self) -> None:
        """Stop the signing child process, if one runs (signing goes on in-process)."""
        helper, self._helper = self._helper, None
        if helper is not None:
            helper.close()

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
        caller's thread.  After :meth:`offload` the signing child is asked for
        the signature at once; :meth:`Signing.headers` then takes it (or, with
        no child, does the RSA and Ed25519 operations itself; the sender calls
        it on its SMTP thread, campaigns/sender.py).

        *canonical_body*, when given, is the body already in relaxed form
        (mime.compose_signable builds it from pieces canonicalised once per
        content): only its hash is left, and :meth:`Signing.headers` does it
        (hashlib releases the GIL on data this size, so on the SMTP thread it
        runs beside the building).
        """
        fields, body = _split(message)
        h = _include([name.lower() for name, _ in fields])
        bh = b"" if canonical_body is not None else self._body_hash(body)
        helper = self._helper
        if helper is None or helper.dead:
            return Signing(self, _selected(fields, h), h, bh, canonical_body or b"")
        # The child picks and canonicalises the signed fields itself, from the raw
        # header block: 15-20 µs a message off the building thread.
        end = message.find(b"\r\n\r\n")
        signing = Signing(self, b"", h, bh, canonical_body or b"")
        signing._head = message if end == -1 else message[:end]
        signing._ticket = helper.request(signing)
        return signing

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

    __slots__ = ("_bh", "_canonical", "_h", "_head", "_made", "_signed", "_signer", "_ticket")

    def __init__(self, signer: DkimSigner, signed: bytes, h: list[bytes], bh: bytes,
                 canonical_body: bytes = b"") -> None:
        self._signer, self._signed, self._h, self._bh = signer, signed, h, bh
        self._canonical = canonical_body  # hashed by headers() when bh is not known yet
        self._ticket: tuple[_Helper, int] | None = None  # asked of a signing child process
        self._made = b""
        self._head = b""  # the raw header block, when the signed fields are left to pick

    def headers(self) -> bytes:
        """The DKIM-Signature header field(s) to put in front of the message (RSA first);
        made once, so a second call (a retry on another relay) returns the same bytes."""
        if self._made:
            return self._made
        if self._ticket is not None:
            helper, seq = self._ticket
            self._ticket = None
            self._made = helper.result(seq)
        if not self._made:
            self._made = self._make()
        return self._made

    def _make(self) -> bytes:
        signer = self._signer
        if self._head and not self._signed:
            self._signed = _selected(_split(self._head)[0], self._h)
        if not self._bh:
            self._bh = base64.b64encode(hashlib.sha256(self._canonical).digest())
        out = signer._rsa_field(self._signed, self._h, self._bh)
        if signer._ed25519 is not None:
            out += signer._ed25519_field(self._signed, self._h, self._bh)
        return out


def _nothing() -> None:
    """What :meth:`DkimSigner.keep_apart` returns when it changed nothing."""


def _current_cpu() -> int | None:
    """The CPU the calling thread runs on (field 39 of /proc/thread-self/stat), or None."""
    try:
        stat = Path("/proc/thread-self/stat").read_bytes()
        return int(stat.rsplit(b")", 1)[1].split()[36])
    except (OSError, IndexError, ValueError):
        return None


def _own(field: bytes) -> bytes:
    """Our own DKIM-Signature field as hashed: relaxed, empty b=, no line end."""
    name, value = field.split(b":", 1)
    return canonical_header(name, value)[:-2]


#: A request to the signing child: its number, its kind (bit 1: the last part is
#: the canonical body, not its hash; bit 2: the first part is the raw header
#: block, not the signed fields already picked), and the three parts' lengths.
_ASK = struct.Struct("!IBIII")
#: Its answer: the number, and the length of the header field(s) that follow
#: (0 when the child could not sign; the parent then signs itself).
_ANSWER = struct.Struct("!II")
#: The keys, sent once when the child starts: the two PEMs' and three names' lengths.
_KEYS = struct.Struct("!IIIII")


class _Helper:
    """A child process that makes the DKIM-Signature fields for :class:`DkimSigner`.

    Requests go down its stdin and answers come back on its stdout in the
    same order, numbered, so a request whose answer nobody takes (a message
    built and then not sent) costs nothing but a skipped answer.  The parent
    never waits for the child unless it needs an answer: at most
    :attr:`AHEAD` requests are unanswered, so neither pipe can fill up and
    block both sides.  Private keys go to the child through the pipe, never
    on its command line.

    The child runs at the lowest priority (nice 19) and ignores Ctrl-C (it
    ends when the pipe from its parent closes, so when the parent ends).
    At its normal priority it kept the second core busy while the relay's
    replies waited to be handled: ``bench/send.py --dkim`` ran at about
    990 msg/s against about 1,300 at nice 19 (6,000 messages a round).
    """

    #: At most this many answers wait in the pipe: 16 of the largest (RSA and
    #: Ed25519 fields, about 1.2 KB) stay well under a pipe's 64 KB, so the
    #: child never blocks writing while the parent blocks writing to it.
    AHEAD = 16

    def __init__(self, signer: DkimSigner) -> None:
        self.dead = False
        self._asked = 0
        self._read = 0
        self._kept: dict[int, bytes] = {}
        self._buf = bytearray()
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        root = str(Path(__file__).resolve().parents[1])
        code = f"import sys; sys.path.insert(0, {root!r}); from campaigns.dkim import _serve; _serve()"
        none = serialization.NoEncryption()
        pem = serialization.Encoding.PEM
        pkcs8 = serialization.PrivateFormat.PKCS8
        rsa_pem = signer._rsa.private_bytes(pem, pkcs8, none)
        ed_pem = signer._ed25519.private_bytes(pem, pkcs8, none) if signer._ed25519 else b""
        names = [n.encode() for n in (signer.selector, signer.domain, signer.ed25519_selector)]
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                close_fds=True,
            )
            self._out = self._proc.stdin.fileno()
            self._in = self._proc.stdout.fileno()
            self._send(_KEYS.pack(len(rsa_pem), len(ed_pem), *map(len, names))
                       + rsa_pem + ed_pem + b"".join(names))
        except OSError:
            self.dead = True

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._out, view):]

    def request(self, signing: Signing) -> tuple[_Helper, int] | None:
        """Ask for *signing*'s fields; the ticket to take them with, or None if the child is gone."""
        kind, last = (0, signing._bh) if signing._bh else (1, signing._canonical)
        first = signing._signed
        if signing._head and not first:
            kind, first = kind | 2, signing._head
        h = b":".join(signing._h)
        with self._write_lock:
            if self._asked - self._read >= self.AHEAD:
                with self._read_lock:  # nobody took the oldest answers: keep them aside
                    self._take_one()
            if self.dead:
                return None
            seq = self._asked = self._asked + 1
            try:
                self._send(_ASK.pack(seq, kind, len(first), len(h), len(last)) + first + h + last)
            except OSError:
                self.dead = True
                return None
        return self, seq

    def result(self, seq: int) -> bytes:
        """The fields asked for under *seq*; empty when the child could not make them."""
        with self._read_lock:
            while seq not in self._kept and self._read < seq and not self.dead:
                self._take_one()
            for old in [n for n in self._kept if n < seq - self.AHEAD]:
                del self._kept[old]  # answers to requests nobody will take
            return self._kept.pop(seq, b"")

    def _take_one(self) -> None:
        """Wait for the next answer (or the child's end) and keep it.

        One read takes whatever the pipe holds, so answers that arrived
        together cost one system call (each one lets go of the GIL, and
        getting it back can mean waiting for the other thread's turn).
        """
        while not self._parse() and not self.dead:
            try:
                chunk = os.read(self._in, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                self.dead = True
            self._buf += chunk

    def _parse(self) -> bool:
        """Keep one whole answer from the buffer; False when none is there yet."""
        buf = self._buf
        if len(buf) < _ANSWER.size:
            return False
        seq, size = _ANSWER.unpack_from(buf)
        end = _ANSWER.size + size
        if len(buf) < end:
            return False
        self._kept[seq] = bytes(buf[_ANSWER.size:end])
        del buf[:end]
        self._read = seq
        if len(self._kept) > 4 * self.AHEAD:
            for old in [n for n in self._kept if n < seq - self.AHEAD]:
                del self._kept[old]
        return True

    def close(self) -> None:
        self.dead = True
        try:
            self._proc.stdin.close()
            self._proc.wait(timeout=5)
            self._proc.stdout.close()
        except (OSError, subprocess.TimeoutExpired, AttributeError):
            try:
                self._proc.kill()
            except (OSError, AttributeError):
                pass


def _serve() -> None:
    """The signing child's loop (see :class:`_Helper`): until its stdin closes."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the parent, which closes the pipe
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    os.nice(19)  # see _Helper: the sending process and the relay come first
    sizes = _KEYS.unpack(inp.read(_KEYS.size))
    rsa_pem, ed_pem, *names = (inp.read(n) for n in sizes)
    selector, domain, ed_selector = (n.decode() for n in names)
    signer = DkimSigner.__new__(DkimSigner)
    ed_key = serialization.load_pem_private_key(ed_pem, None) if ed_pem else None
    signer._keys(selector, domain, ed_selector,
                 serialization.load_pem_private_key(rsa_pem, None), ed_key)
    while len(head := inp.read(_ASK.size)) == _ASK.size:
        seq, kind, a, b, c = _ASK.unpack(head)
        first, h, last = inp.read(a), inp.read(b).split(b":"), inp.read(c)
        try:
            signed = _selected(_split(first)[0], h) if kind & 2 else first
            made = (Signing(signer, signed, h, b"", last) if kind & 1
                    else Signing(signer, signed, h, last))._make()
        except Exception:  # the parent signs this one itself
            made = b""
        out.write(_ANSWER.pack(seq, len(made)) + made)
        out.flush()

