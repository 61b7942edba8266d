"""SMTP transport: the only code that opens a network connection.

:class:`Relay` keeps one SMTP connection open and reuses it for message
after message (a new connection per message costs a TCP + EHLO + TLS round
trip).  :class:`RelayPool` spreads mail over the relays in
``settings.relays`` (round-robin over the healthy ones) and enforces each
relay's limits:

* ``rate`` messages per second: a token bucket (short bursts, then pacing);
* ``hourly`` / ``daily``: sliding windows counted from the outbox ledger
  (rows sent via the relay in the last hour/day), so they survive restarts
  and include what other workers sent;
* a relay that refuses connections is skipped for ``down_for`` (60 s);
* a 421 reply drops the connection, rests the relay for ``rest_after_421``
  and halves its rate for ``slow_for`` (10 min).

Envelope recipients are always passed explicitly, never read from headers.

Reply-code policy (:func:`classify`):

* 2xx: sent.
* 4xx, and connection errors: retry later with backoff.
* 5xx: failed permanently, with a bounce record, except 552 at RCPT, which
  RFC 5321 section 4.5.3.1.10 says clients should treat as temporary.
* 421: the server is shutting the channel; retry, and slow the relay down.
* 5xx at connect or MAIL FROM: the relay refuses *us* (auth, sender policy),
  not the recipient; the row is retried and the relay rested ("relay").

The transaction itself (MAIL, RCPT, DATA) is written straight to the socket
smtplib opened, instead of through ``smtplib.SMTP.mail/rcpt/data``; when the
server advertises PIPELINING (RFC 2920; Postfix does) the three commands go in
one write and their replies are read in order, saving two round trips a
message, otherwise one command at a time.  Measured against Postfix's smtp-sink
(``bench/send.py``), smtplib's per-command Python overhead and its two regex
passes over every message cap a prebuilt-message loop near 60% of
smtp-source; the raw path reaches about the same rate as smtp-source, which
leaves room for rendering.  It does what ``smtplib.SMTP.data`` does to the
bytes: a leading "." is doubled (dot-stuffing) and the message ends with
CRLF "." CRLF; ``tests/test_sender.py`` checks the server receives
byte-identical messages either way.  One deliberate difference: bare CR or LF
become CRLF (smtplib does that only for str, and sends bytes as they are;
bare LF is forbidden on the wire and is the raw material of SMTP smuggling).
Our composer writes CRLF only, so this costs two ``bytes.count`` calls.
``Relay(raw=False)`` uses plain smtplib.
"""

from __future__ import annotations

import re
import smtplib
import socket
import ssl
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from funnel.policy import policy
from funnel.settings import RelayConfig, redact

_MAXLINE = 8192
_CRLF = b"\r\n"
#: A message to send: its bytes, or a function that makes them (see Relay.send).
Message = bytes | Callable[[], bytes]
_BARE_EOL = re.compile(rb"\r\n|\n|\r(?!\n)")
_DOT_LINE = re.compile(rb"\r\n\.")


@dataclass(frozen=True)
class SendResult:
    """The server's answer for one message to one recipient."""

    code: int | None  # None: no answer (connection error)
    message: str
    stage: str  # connect | mail | rcpt | data | ok | local

    @property
    def verdict(self) -> str:
        return classify(self.code, self.stage)


def classify(code: int | None, stage: str) -> str:
    """'sent', 'retry', 'failed', 'slowdown' (retry + throttle) or 'relay' (retry + rest relay).

    The rules are data: ``[reply_codes]`` in ``funnel/policy.toml``.
    """
    return policy().verdict(code, stage)


def stuff(data: bytes) -> bytes:
    """The DATA payload exactly as ``smtplib.SMTP.data`` sends it, terminator included."""
    n_lf = data.count(b"\n")
    if n_lf != data.count(b"\r\n") or data.count(b"\r") != n_lf:
        data = _BARE_EOL.sub(_CRLF, data)  # rare: our composer writes CRLF only
    if data[:1] == b".":
        data = b"." + data
    if _DOT_LINE.search(data):  # a regex finds the 3-byte needle several times faster than replace
        data = data.replace(b"\r\n.", b"\r\n..")
    if data[-2:] != _CRLF:
        data += _CRLF
    return data + b".\r\n"


def _address(addr: str, smtputf8: bool) -> bytes | None:
    """``<addr>`` as bytes, or None if it cannot go into an SMTP command."""
    if any(c in addr for c in "\r\n<> \t\0"):
        return None
    try:
        return b"<" + addr.encode("ascii") + b">"
    except UnicodeEncodeError:
        return b"<" + addr.encode("utf-8") + b">" if smtputf8 else None


class Relay:
    """One SMTP relay with a reusable connection."""

    def __init__(self, config: RelayConfig, local_hostname: str | None = None, *, raw: bool = True):
        self.config = config
        self.local_hostname = local_hostname
        self.raw = raw
        self._conn: smtplib.SMTP | None = None
        self._used = 0  # messages sent over the current connection
        self.sent = 0
        self.connections = 0

    @property
    def label(self) -> str:
        return self.config.label

    # -------------------------------------------------------------- connection
    def connect(self) -> smtplib.SMTP:
        if self._conn is not None:
            return self._conn
        c = self.config
        context = ssl.create_default_context()
        if c.tls:
            conn: smtplib.SMTP = smtplib.SMTP_SSL(
                c.host,
                c.port,
                local_hostname=self.local_hostname,
                timeout=c.timeout,
                context=context,
            )
        else:
            conn = smtplib.SMTP(
                c.host, c.port, local_hostname=self.local_hostname, timeout=c.timeout
            )
        try:
            conn.ehlo_or_helo_if_needed()
            if c.starttls:
                conn.starttls(context=context)
                conn.ehlo()
            if c.username:
                conn.login(c.username, c.password or "")
        except BaseException:
            _quietly_close(conn)
            raise
        if not isinstance(conn.sock, ssl.SSLSocket):  # TLS keeps Python's timeout (see below)
            _kernel_timeouts(conn.sock, c.timeout)
        self._conn = conn
        self._used = 0
        self.connections += 1
        return conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.quit()
            except (smtplib.SMTPException, OSError):
                pass
            _quietly_close(self._conn)
            self._conn = None

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -------------------------------------------------------------- sending
    def send(self, envelope_from: str, recipient: str, data: Message) -> SendResult:
        """Send one message to one recipient; never raises for SMTP or socket errors.

        *data* is the message's bytes, or a function returning them that is
        called once the envelope is accepted (and may be called again for a
        retry, so it must return the same bytes each time).

        After any error the connection is reset (RSET, or reconnect next time).
        A kept-open connection the server has meanwhile closed is reopened once
        without counting as a failure.
        """
        for _ in range(2):
            try:
                conn = self.connect()
            except smtplib.SMTPResponseException as exc:
                return SendResult(exc.smtp_code, _text(exc.smtp_error), "connect")
            except (TimeoutError, smtplib.SMTPException, OSError) as exc:
                return SendResult(None, redact(f"cannot connect to {self.label}: {exc}"), "connect")
            reused = self._used > 0
            result = (self._send_raw if self.raw else self._send_smtplib)(
                conn, envelope_from, recipient, data
            )
            if result.code is None and result.stage == "mail" and reused:
                continue  # the server dropped the idle connection: reconnect once
            if result.stage == "ok":
                self._used += 1
                self.sent += 1
            return result
        return result

    def _send_raw(
        self, conn: smtplib.SMTP, envelope_from: str, recipient: str, data: Message
    ) -> SendResult:
        smtputf8 = conn.has_extn("smtputf8")
        sender, rcpt = _address(envelope_from, smtputf8), _address(recipient, smtputf8)
        if sender is None or rcpt is None:
            return SendResult(
                553, f"{recipient!r}: address unusable in SMTP (needs SMTPUTF8?)", "local"
            )
        mail_opts = b" SMTPUTF8" if smtputf8 and not (sender + rcpt).isascii() else b""
        started = time.monotonic()
        sock = conn.sock
        if conn.file is None:
            conn.file = sock.makefile("rb")
        read = conn.file.readline
        stage = "mail"
        try:
            if conn.has_extn("pipelining"):
                failed = self._pipelined_envelope(
                    sock, read, b"MAIL FROM:" + sender + mail_opts + _CRLF, b"RCPT TO:" + rcpt + _CRLF
                )
                if failed is not None:
                    return failed
                stage = "data"
                return self._send_data(sock, read, data)
            sock.sendall(b"MAIL FROM:" + sender + mail_opts + _CRLF)
            code, msg = _reply(read)
            if code != 250:
                self._reset(code)
                return SendResult(code, msg, "mail")
            stage = "rcpt"
            sock.sendall(b"RCPT TO:" + rcpt + _CRLF)
            code, msg = _reply(read)
            if code not in (250, 251):
                self._reset(code)
                return SendResult(code, msg, "rcpt")
            stage = "data"
            sock.sendall(b"DATA\r\n")
            code, msg = _reply(read)
            if code != 354:
                self._reset(code)
                return SendResult(code, msg, "data")
            return self._send_data(sock, read, data)
        except (TimeoutError, smtplib.SMTPException, OSError) as exc:
            return self._failure(exc, stage, started)

    def _send_data(self, sock, read, data: Message) -> SendResult:
        """After DATA's 354: the dot-stuffed message, then the server's verdict.

        Shared by the pipelined and the step-by-step envelope; a 421 means
        the server is closing, so the connection is dropped.  A callable
        *data* is called here, after the envelope's round trip: a message
        whose DKIM signature is still being made elsewhere gets those
        microseconds for free.
        """
        sock.sendall(stuff(data() if callable(data) else data))
        code, msg = _reply(read)
        if code == 421:
            self._drop()
        return SendResult(code, msg, "ok" if code == 250 else "data")

    def _pipelined_envelope(self, sock, read, mail: bytes, rcpt: bytes) -> SendResult | None:
        """MAIL, RCPT and DATA in one write (RFC 2920), then their three replies.

        Saves two round trips a message when the server advertises PIPELINING.
        Returns None when DATA may start, else the first failure.  If the
        server accepted DATA although MAIL or RCPT failed, the empty message
        is ended at once with "." so the connection stays in step.
        """
        sock.sendall(mail + rcpt + b"DATA\r\n")
        replies = []
        for stage in ("mail", "rcpt", "data"):
            code, msg = _reply(read)
            replies.append((stage, code, msg))
            if code == 421:  # the server is closing: no more replies will come
                break
        expected = {"mail": (250,), "rcpt": (250, 251), "data": (354,)}
        failure = next(((s, c, m) for s, c, m in replies if c not in expected[s]), None)
        if failure is None:
            return None
        stage, code, msg = failure
        if replies[-1][0] == "data" and replies[-1][1] == 354:
            sock.sendall(b".\r\n")
            _reply(read)
        self._reset(code)
        return SendResult(code, msg, stage)

    def _send_smtplib(
        self, conn: smtplib.SMTP, envelope_from: str, recipient: str, data: Message
    ) -> SendResult:
        stage = "mail"
        started = time.monotonic()
        try:
            code, msg = conn.mail(envelope_from)
            if code != 250:
                self._reset(code)
                return SendResult(code, _text(msg), "mail")
            stage = "rcpt"
            code, msg = conn.rcpt(recipient)
            if code not in (250, 251):
                self._reset(code)
                return SendResult(code, _text(msg), "rcpt")
            stage = "data"
            code, msg = conn.data(data() if callable(data) else data)
            if code != 250:
                self._reset(code)
                return SendResult(code, _text(msg), "data")
        except smtplib.SMTPResponseException as exc:
            # smtplib raises for DATA's 354 step and for 421 closures.
            self._drop()
            return SendResult(exc.smtp_code, _text(exc.smtp_error), stage)
        except (TimeoutError, smtplib.SMTPException, OSError) as exc:
            return self._failure(exc, stage, started)
        return SendResult(250, _text(msg), "ok")

    def _failure(self, exc: Exception, stage: str, started: float) -> SendResult:
        """A dropped connection's result; a silent server is named as a timeout (a kernel
        timeout reads as a closed connection or EAGAIN, see :func:`_kernel_timeouts`)."""
        self._drop()
        if time.monotonic() - started >= self.config.timeout * 0.9:
            exc = f"no reply within {self.config.timeout:g} s"
        return SendResult(None, redact(f"connection to {self.label} failed: {exc}"), stage)

    def _reset(self, code: int | None) -> None:
        if code == 421 or self._conn is None:
            self._drop()
            return
        try:
            self._conn.rset()
        except (smtplib.SMTPException, OSError):
            self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            _quietly_close(self._conn)
            self._conn = None


def _kernel_timeouts(sock: socket.socket, seconds: float) -> None:
    """Make the socket blocking, with the relay's timeout kept by the kernel.

    With a Python-level timeout every send and receive is a poll() and then
    the call, each leaving and retaking the GIL; the wire thread does about
    eight of them a message while the main thread builds the next one, and
    each retake waits for the builder.  SO_RCVTIMEO/SO_SNDTIMEO give the same
    bound with one system call per operation.  A read that times out then
    looks like a closed connection to smtplib's reader, and a write fails
    with EAGAIN; both are connection failures (the row is retried), and
    :meth:`Relay._failure` names the timeout.  Only for plain connections (a
    relay on loopback or the local network): under TLS a kernel timeout
    surfaces from OpenSSL as a want-read error mid-record, a path no test here
    exercises, so TLS sockets keep the timeout Python enforces.
    """
    whole = int(seconds)
    value = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    sock.settimeout(None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


def _reply(readline) -> tuple[int, str]:
    """One (possibly multi-line) SMTP reply, as smtplib's getreply parses it."""
    lines = []
    while True:
        line = readline(_MAXLINE + 1)
        if not line:
            raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
        if len(line) > _MAXLINE:
            raise smtplib.SMTPServerDisconnected("reply line too long")
        lines.append(line[4:].strip(b" \t\r\n"))
        try:
            code = int(line[:3])
        except ValueError:
            code = -1
            break
        if line[3:4] != b"-":
            break
    return code, b"\n".join(lines).decode("utf-8", "replace")


def _quietly_close(conn: smtplib.SMTP) -> None:
    try:
        conn.close()
    except OSError:
        pass


def _text(msg: bytes | str) -> str:
    if isinstance(msg, bytes):
        return msg.decode("utf-8", "replace")
    return str(msg)


# ----------------------------------------------------------------- rate limits
class TokenBucket:
    """``rate`` tokens per second, bursts of up to ``burst``; ``rate`` 0 = unlimited."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate / 10)
        self.tokens = self.burst
        self.monotonic = monotonic
        self.last = monotonic()

    def wait_time(self, factor: float = 1.0) -> float:
        """Seconds until a token is available at ``rate * factor`` (0: now)."""
        if self.rate <= 0:
            return 0.0
        rate = self.rate * factor
        now = self.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * rate)
        self.last = now
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / rate

    def take(self) -> None:
        if self.rate > 0:
            self.tokens -= 1


@dataclass
class RelayState:
    """A relay plus what the pool knows about its health and limits."""

    relay: Relay
    bucket: TokenBucket
    down_until: datetime | None = None
    down_reason: str = ""
    slow_until: datetime | None = None
    hour_count: int = 0
    day_count: int = 0

    @property
    def label(self) -> str:
        return self.relay.label

    @property
    def config(self) -> RelayConfig:
        return self.relay.config

    def factor(self, now: datetime) -> float:
        return 0.5 if self.slow_until and now < self.slow_until else 1.0

    def unavailable(self, now: datetime) -> str | None:
        """Why this relay can't take a message now, or None."""
        c = self.config
        if self.down_until and now < self.down_until:
            return f"relay {self.label} is resting until {self.down_until:%H:%M:%S} UTC ({self.down_reason})"
        if c.max_per_hour and self.hour_count >= c.max_per_hour:
            return f"relay {self.label} reached its hourly limit ({c.max_per_hour} per hour)"
        if c.max_per_day and self.day_count >= c.max_per_day:
            return f"relay {self.label} reached its daily limit ({c.max_per_day} per day)"
        return None


@dataclass(frozen=True)
class PoolResult:
    """What happened to one message handed to the pool."""

    result: SendResult | None  # None: not attempted, no relay could take it
    relay: str | None = None
    blocked: str | None = None  # why no relay could take it


@dataclass
class RelayPool:
    """Round-robin over healthy relays, with per-relay rate limits (module docstring)."""

    relays: Sequence[Relay]
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    down_for: timedelta = timedelta(seconds=60)
    rest_after_421: timedelta = timedelta(seconds=30)
    slow_for: timedelta = timedelta(minutes=10)
    states: list[RelayState] = field(init=False)
    _next: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.states = [
            RelayState(r, TokenBucket(r.config.rate_per_second, monotonic=self.monotonic))
            for r in self.relays
        ]

    @classmethod
    def from_configs(cls, configs: Sequence[RelayConfig], **kwargs) -> RelayPool:
        return cls([Relay(c) for c in configs], **kwargs)

    # -------------------------------------------------------------- limits
    def refresh(self, now: datetime, counter: Callable[[str, datetime], int]) -> None:
        """Reload the hourly/daily windows from the ledger: ``counter(label, since)``."""
        for st in self.states:
            if st.config.max_per_hour:
                st.hour_count = counter(st.label, now - timedelta(hours=1))
            if st.config.max_per_day:
                st.day_count = counter(st.label, now - timedelta(days=1))

    def blocked(self, now: datetime) -> str | None:
        """None if some relay can take a message now, else why none can."""
        reasons = [st.unavailable(now) for st in self.states]
        return None if any(r is None for r in reasons) else "; ".join(r for r in reasons if r)

    def per_second(self) -> float:
        """Total configured rate (0 = unlimited): the sender sizes its batches by it."""
        rates = [st.config.rate_per_second for st in self.states]
        return 0.0 if any(r <= 0 for r in rates) else sum(rates)

    # -------------------------------------------------------------- sending
    def _pick(self, now: datetime, tried: set[int]) -> tuple[int, RelayState] | None:
        n = len(self.states)
        best: tuple[float, int] | None = None
        for k in range(n):
            i = (self._next + k) % n
            st = self.states[i]
            if i in tried or st.unavailable(now):
                continue
            wait = st.bucket.wait_time(st.factor(now))
            if wait == 0:
                best = (0.0, i)
                break
            if best is None or wait < best[0]:
                best = (wait, i)
        if best is None:
            return None
        wait, i = best
        if wait:
            self.sleep(wait)
            self.states[i].bucket.wait_time(self.states[i].factor(now))
        self._next = (i + 1) % n
        return i, self.states[i]

    def send(self, envelope_from: str, recipient: str, data: Message, now: datetime) -> PoolResult:
        tried: set[int] = set()
        last: PoolResult | None = None
        while True:
            picked = self._pick(now, tried)
            if picked is None:
                return last or PoolResult(None, None, self.blocked(now))
            i, st = picked
            st.bucket.take()
            result = st.relay.send(envelope_from, recipient, data)
            verdict = result.verdict
            if verdict == "sent":
                st.hour_count += 1
                st.day_count += 1
            elif verdict == "slowdown":
                st.slow_until = now + self.slow_for
                st.down_until = now + self.rest_after_421
                st.down_reason = f"{result.code} {result.message}"[:200]
            elif (result.stage == "connect" and result.code is None) or verdict == "relay":
                # The relay, not the recipient, is the problem: rest it, try the next one.
                st.down_until = now + self.down_for
                st.down_reason = result.message[:200]
                tried.add(i)
                last = PoolResult(result, st.label)
                continue
            return PoolResult(result, st.label)

    def close(self) -> None:
        for r in self.relays:
            r.close()

    def __enter__(self) -> RelayPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()



def probe(config: RelayConfig, timeout: float = 3.0) -> str | None:
    """Connect to a relay, read its greeting and say QUIT; the reason it failed, or None.

    Used by ``funnel check`` and the preflight: a relay that refuses
    connections (or is not an SMTP server) is found before anything is
    queued, not at send time.  QUIT lets the server close the session itself.
    """
    try:
        if config.tls:
            conn: smtplib.SMTP = smtplib.SMTP_SSL(
                config.host, config.port, timeout=timeout, context=ssl.create_default_context()
            )
        else:
            conn = smtplib.SMTP(config.host, config.port, timeout=timeout)
    except smtplib.SMTPConnectError as exc:
        return f"it answered {exc.smtp_code} {_text(exc.smtp_error)}"
    except (smtplib.SMTPException, OSError) as exc:
        return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    try:
        conn.quit()
    except (smtplib.SMTPException, OSError):
        _quietly_close(conn)
    return None
