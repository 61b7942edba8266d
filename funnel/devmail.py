"""The embedded SMTP server that catches every message for the dev inbox.

``funnel up`` starts it on the dev relay address (``smtp://127.0.0.1:8025`` by
default), so a newcomer needs no mail server at all: the sender delivers to
it exactly as it would to a real relay, and it stores each message, byte for
byte, in the ``devmail`` table of the same database (migration
``0006_devmail``).  The web app's ``/dev/inbox`` pages read it back.

It accepts every recipient and never relays anything onward: it is a sink.
aiosmtpd tops out near 1.7k messages/s (DESIGN.md), far more than a
developer's clicking needs; throughput benchmarks use Postfix's tools instead.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from functools import cached_property

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer

from . import clock as clocks
from .db import connect, iso, transaction
from .errors import FunnelError, NotFound

#: The inbox lists at most this many messages (newest first).
LIST_LIMIT = 200


# ----------------------------------------------------------------- storage
def store(db, mail_from: str, rcpt_tos: list[str], data: bytes, now: datetime) -> int:
    """Keep one received message; returns its id."""
    subject = _subject(data)
    with transaction(db):
        cur = db.execute(
            "INSERT INTO devmail (received_at, mail_from, rcpt_tos, subject, data) "
            "VALUES (?, ?, ?, ?, ?)",
            (iso(now), mail_from or "", json.dumps(list(rcpt_tos)), subject, data),
        )
    return cur.lastrowid


def _subject(data: bytes) -> str:
    """The decoded Subject, or '' when the header is missing or malformed."""
    try:
        msg = email.message_from_bytes(data, policy=email.policy.default)
        return str(msg.get("Subject", "") or "")[:300]
    except Exception:  # a dev sink must never refuse mail because of one odd header
        return ""


def listing(db, limit: int = LIST_LIMIT) -> list[dict]:
    """Newest first: id, received_at, mail_from, rcpt_tos (list), subject."""
    rows = db.execute(
        "SELECT id, received_at, mail_from, rcpt_tos, subject FROM devmail ORDER BY id DESC LIMIT ?",
        (limit,),
    ).fetchall()
    return [
        {
            "id": r[0],
            "received_at": r[1],
            "mail_from": r[2],
            "rcpt_tos": json.loads(r[3]),
            "subject": r[4],
        }
        for r in rows
    ]


def count(db) -> int:
    return db.execute("SELECT COUNT(*) FROM devmail").fetchone()[0]


def clear(db) -> int:
    """Empty the dev inbox; returns how many messages were removed."""
    with transaction(db):
        return db.execute("DELETE FROM devmail").rowcount


_URL_RE = re.compile(r"https?://[^\s\"'<>)\]]+")


@dataclass(frozen=True)
class DevMessage:
    id: int
    received_at: str
    mail_from: str
    rcpt_tos: list[str]
    subject: str
    data: bytes

    @cached_property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)

    @property
    def headers(self) -> list[tuple[str, str]]:
        """Every header as (name, decoded value), in order."""
        out = []
        for name, value in self.message.items():
            try:
                out.append((name, str(value)))
            except Exception:
                out.append((name, "(could not decode)"))
        return out

    def part(self, subtype: str) -> str:
        """The first text/<subtype> part ('' when there is none)."""
        for part in self.message.walk():
            if part.get_content_type() == f"text/{subtype}" and not part.is_attachment():
                try:
                    return part.get_content()
                except Exception:
                    return ""
        return ""

    @property
    def text(self) -> str:
        return self.part("plain")

    @property
    def html(self) -> str:
        return self.part("html")

    @property
    def links(self) -> list[str]:
        """Distinct URLs in the plain-text part, in order: what a reader can click."""
        seen: dict[str, None] = {}
        for url in _URL_RE.findall(self.text):
            seen.setdefault(url.rstrip(".,;"), None)
        return list(seen)

    @property
    def attachments(self) -> list[tuple[str, str, int]]:
        """(filename, content type, size in bytes) of each attachment."""
        out = []
        for part in self.message.walk():
            if part.is_attachment():
                payload = part.get_payload(decode=True) or b""
                out.append((part.get_filename() or "", part.get_content_type(), len(payload)))
        return out


def get(db, message_id: int) -> DevMessage:
    row = db.execute(
        "SELECT id, received_at, mail_from, rcpt_tos, subject, data FROM devmail WHERE id = ?",
        (message_id,),
    ).fetchone()
    if row is None:
        raise NotFound(f"dev inbox: there is no message {message_id}")
    return DevMessage(row[0], row[1], row[2], json.loads(row[3]), row[4], bytes(row[5]))


# ----------------------------------------------------------------- server
class _Handler:
    """aiosmtpd handler: accept every recipient, store every message."""

    def __init__(self, db_path: str, clock: Callable[[], datetime]):
        self.db_path = db_path
        self.clock = clock
        self._db = None  # opened lazily in the server's own event-loop thread

    async def handle_DATA(self, server, session, envelope):
        if self._db is None:
            self._db = connect(self.db_path)
        data = envelope.original_content or envelope.content
        if isinstance(data, str):  # pragma: no cover - decode_data is off
            data = data.encode("utf-8", "surrogateescape")
        try:
            store(self._db, envelope.mail_from, list(envelope.rcpt_tos), bytes(data), self.clock())
        except FunnelError as exc:
            return f"451 4.3.0 dev inbox could not store the message: {exc}"
        return "250 OK: caught by the funnel dev inbox"

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class _Controller(Controller):
    def factory(self):
        return SMTPServer(
            self.handler, enable_SMTPUTF8=True, decode_data=False, hostname="funnel-devmail"
        )


class DevMailServer:
    """The embedded SMTP sink on ``host:port``; ``start()`` / ``stop()``.

    Runs aiosmtpd in its own thread (aiosmtpd's Controller).  ``port=0`` picks
    a free port; read it back from ``.port`` after ``start()``.
    """

    def __init__(
        self,
        db_path: str,
        host: str = "127.0.0.1",
        port: int = 8025,
        clock: Callable[[], datetime] = clocks.now,
    ):
        self.host = host
        self.port = port or _free_port(host)
        self.handler = _Handler(db_path, clock)
        self._controller: _Controller | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def start(self) -> DevMailServer:
        with self._lock:
            if self._controller is not None:
                return self
            # Check the port first: aiosmtpd only notices a busy port after its
            # ready_timeout, and leaks its event loop when it does.
            _check_port(self.host, self.port)
            controller = _Controller(
                self.handler, hostname=self.host, port=self.port, ready_timeout=10
            )
            try:
                controller.start()
            except Exception as exc:
                thread = getattr(controller, "_thread", None)
                if thread is not None:
                    thread.join(timeout=5)
                if not controller.loop.is_closed() and not controller.loop.is_running():
                    controller.loop.close()
                raise _busy(self.host, self.port, exc) from exc
            self._controller = controller
        return self

    def stop(self) -> None:
        with self._lock:
            if self._controller is not None:
                self._controller.stop()
                self._controller = None
            self.handler.close()


def _busy(host: str, port: int, exc: BaseException) -> FunnelError:
    reason = getattr(exc, "strerror", None) or exc
    return FunnelError(
        f"dev SMTP server: cannot listen on {host}:{port} ({reason}); is another "
        "`funnel up` running? Pick another port with --smtp-port"
    )


def _check_port(host: str, port: int) -> None:
    import socket

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise _busy(host, port, exc) from exc


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
