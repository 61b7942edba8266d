"""SMTP transport: the only code that opens a network connection.

A :class:`Relay` keeps one SMTP connection open and reuses it for message
after message (a new connection per message costs a TCP + EHLO + TLS round
trip).  Envelope recipients are always passed explicitly, never read from
the headers.

Reply-code policy (:func:`classify`):

* 2xx: sent.
* 4xx, and connection errors: retry later with backoff.
* 5xx: failed permanently, with a bounce record, except 552 at RCPT, which
  RFC 5321 section 4.5.3.1.10 says clients should treat as temporary.
* 421: the server is shutting the channel; retry, and slow the relay down.
"""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass

from funnel.settings import RelayConfig


@dataclass(frozen=True)
class SendResult:
    """The server's answer for one message to one recipient."""

    code: int | None  # None: no answer (connection error)
    message: str
    stage: str  # connect | mail | rcpt | data | ok

    @property
    def verdict(self) -> str:
        return classify(self.code, self.stage)


def classify(code: int | None, stage: str) -> str:
    """'sent', 'retry', 'failed' or 'slowdown' (a retry that also throttles the relay)."""
    if code is None:
        return "retry"
    if 200 <= code < 300:
        return "sent"
    if code == 421:
        return "slowdown"
    if 400 <= code < 500:
        return "retry"
    if code == 552 and stage == "rcpt":
        return "retry"
    if 500 <= code < 600:
        return "failed"
    return "retry"


class Relay:
    """One SMTP relay with a reusable connection."""

    def __init__(self, config: RelayConfig, local_hostname: str | None = None):
        self.config = config
        self.local_hostname = local_hostname
        self._conn: smtplib.SMTP | None = None
        self.sent = 0

    # -------------------------------------------------------------- connection
    def connect(self) -> smtplib.SMTP:
        if self._conn is not None:
            return self._conn
        c = self.config
        context = ssl.create_default_context()
        if c.tls:
            conn: smtplib.SMTP = smtplib.SMTP_SSL(
                c.host, c.port, local_hostname=self.local_hostname, timeout=c.timeout, context=context
            )
        else:
            conn = smtplib.SMTP(c.host, c.port, local_hostname=self.local_hostname, timeout=c.timeout)
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
        self._conn = conn
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
    def send(self, envelope_from: str, recipient: str, data: bytes) -> SendResult:
        """Send one message to one recipient; never raises for SMTP or socket errors.

        After any error the connection is reset (RSET, or reconnect next time).
        """
        try:
            conn = self.connect()
        except smtplib.SMTPResponseException as exc:
            return SendResult(exc.smtp_code, _text(exc.smtp_error), "connect")
        except (TimeoutError, smtplib.SMTPException, OSError) as exc:
            return SendResult(None, f"cannot connect to {self.config.label}: {exc}", "connect")
        try:
            code, msg = conn.mail(envelope_from)
            if code != 250:
                self._reset(code)
                return SendResult(code, _text(msg), "mail")
            code, msg = conn.rcpt(recipient)
            if code not in (250, 251):
                self._reset(code)
                return SendResult(code, _text(msg), "rcpt")
            code, msg = conn.data(data)
            if code != 250:
                self._reset(code)
                return SendResult(code, _text(msg), "data")
        except smtplib.SMTPResponseException as exc:
            # smtplib raises for DATA's 354 step and for 421 closures.
            self._drop()
            return SendResult(exc.smtp_code, _text(exc.smtp_error), "data")
        except (TimeoutError, smtplib.SMTPException, OSError) as exc:
            self._drop()
            return SendResult(None, f"connection to {self.config.label} failed: {exc}", "data")
        self.sent += 1
        return SendResult(250, _text(msg), "ok")

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


def _quietly_close(conn: smtplib.SMTP) -> None:
    try:
        conn.close()
    except OSError:
        pass


def _text(msg: bytes | str) -> str:
    if isinstance(msg, bytes):
        return msg.decode("utf-8", "replace")
    return str(msg)
