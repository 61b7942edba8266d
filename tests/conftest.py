"""Shared fixtures: a temp database, a fixed clock and a live SMTP server.

Everything here is real except the clock: a real SQLite file on disk and a
real aiosmtpd server on a free loopback port, receiving the bytes our sender
writes, which tests parse with the stdlib ``email`` package.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import os
import re
import socket
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from click.testing import CliRunner

import cli
from funnel import clock as clocks
from funnel.db import connect
from funnel.settings import test_settings

REPO = Path(__file__).resolve().parents[1]
SEEDS = REPO.parent / "shared" / "seeds"


@contextlib.contextmanager
def sql_trace(db):
    """The statements run on ``db``'s connection inside the block, values bound
    (sqlite3's trace callback): for tests about which queries a path makes."""
    ran: list[str] = []
    db.conn.set_trace_callback(ran.append)
    try:
        yield ran
    finally:
        db.conn.set_trace_callback(None)


def reader_bits(db) -> list[tuple]:
    """reader_bits as stored, (kind, ref, word, bits) sorted, without empty words."""
    return sorted(db.execute("SELECT kind, ref, word, bits FROM reader_bits WHERE bits != 0"))


def reader_bits_from_events(db) -> list[tuple]:
    """reader_bits as the events say they must be (migration 0032's backfill query)."""
    from funnel.db import READER_BITS_FROM_EVENTS

    return sorted(row for row in db.execute(READER_BITS_FROM_EVENTS) if row[3])


def live_processes(**match: int) -> set[int]:
    """The pids of live processes whose /proc stat fields match, by name: ``ppid``
    (the parent) or ``pgrp`` (the process group); zombies are left out."""
    where = {"ppid": 1, "pgrp": 2}
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and all(int(fields[where[k]]) == v for k, v in match.items()):
            pids.add(int(stat.parent.name))
    return pids


def seeds_dir() -> Path:
    if not SEEDS.is_dir():
        pytest.skip(f"the clinic's seed articles are not at {SEEDS}")
    return SEEDS


# ----------------------------------------------------------------- clock
#: The instant every test starts at.  ``FUNNEL_TEST_NOW=2031-07-01T12:00:00Z`` moves
#: the whole run (tests/test_clock_shift.py does), real clock included.
DEFAULT_TEST_NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


def _start_from_env() -> datetime:
    """The fake clock's start: ``FUNNEL_TEST_NOW`` (ISO, UTC) or the fixed default."""
    text = os.environ.get("FUNNEL_TEST_NOW", "").strip()
    if not text:
        return DEFAULT_TEST_NOW
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise pytest.UsageError(f"FUNNEL_TEST_NOW: {text!r} is not an ISO date-time") from exc
    if when.tzinfo is None:
        raise pytest.UsageError(f"FUNNEL_TEST_NOW: {text!r} needs a zone, e.g. {text}Z")
    return when.astimezone(UTC)


#: Read once: ``cli_env`` clears FUNNEL_* from the environment during a test.
TEST_START = _start_from_env()
SHIFTED = bool(os.environ.get("FUNNEL_TEST_NOW", "").strip())


class FakeClock:
    """A settable clock; call it to read the time."""

    def __init__(self, start: datetime | None = None):
        self.now = start or TEST_START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs) -> datetime:
        self.now += timedelta(**kwargs)
        return self.now

    def set(self, when: datetime) -> datetime:
        self.now = when
        return self.now


def pytest_configure(config):
    """With ``FUNNEL_TEST_NOW`` set, the real clock travels there too (and keeps ticking).

    The fake clock starts at the same instant, so code that still read the real
    clock would agree at first and then drift away as a test advances the fake
    one: such a read shows up as a failure instead of passing by luck of the date.
    Child processes (``funnel send``, ``funnel worker``, ``funnel up``) travel by
    the same offset through tests/travel/sitecustomize.py.
    """
    if not SHIFTED:
        return
    import time

    import time_machine

    offset = TEST_START.timestamp() - time.time()
    traveller = time_machine.travel(TEST_START, tick=True)
    traveller.start()
    config._funnel_time_travel = traveller
    os.environ["TIME_TRAVEL_OFFSET"] = repr(offset)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO / "tests" / "travel"), os.environ.get("PYTHONPATH")) if p
    )


def pytest_unconfigure(config):
    traveller = getattr(config, "_funnel_time_travel", None)
    if traveller is not None:
        traveller.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(autouse=True)
def _one_clock(clock):
    """Every door (CliRunner commands, create_app, the worker) reads this test's fake clock."""
    with clocks.use(clock):
        yield clock


@pytest.fixture
def real_clock():
    """For tests against a real ``funnel serve`` process, which runs on the real clock:
    the test's own "now" (``funnel.clock.now``, ``utcnow``) is the real clock too."""
    with clocks.use(clocks.real):
        yield clocks.real


# ----------------------------------------------------------------- SMTP server
@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> email.message.EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)

    def part(self, subtype: str) -> str:
        for part in self.message.walk():
            if part.get_content_type() == f"text/{subtype}":
                return part.get_content()
        raise AssertionError(f"no text/{subtype} part")

    def links(self) -> list[str]:
        return re.findall(r"https?://[^\s\"'<>)]+", self.part("plain"))

    def followed_links(self, db, settings, now) -> list[str]:
        """links(), with each tracked /c/ link replaced by where it leads (nothing recorded)."""
        from campaigns import clicks

        prefix = settings.url("/c/")
        return [
            clicks.destination(db, settings, u[len(prefix):], now) if u.startswith(prefix) else u
            for u in self.links()
        ]


@dataclass
class SmtpSink:
    """What the live server received, plus per-recipient scripted replies."""

    host: str
    port: int
    messages: list[Received] = field(default_factory=list)
    #: recipient -> reply for RCPT TO, e.g. {"x@y": "550 5.1.1 no such user"}
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    #: reply for DATA (None = 250)
    data_reply: str | None = None
    #: advertise PIPELINING (RFC 2920) as Postfix does; aiosmtpd reads pipelined
    #: commands in order either way
    pipelining: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def to(self, addr: str) -> list[Received]:
        return [m for m in self.messages if addr in m.rcpt_tos]

    def clear(self) -> None:
        with self.lock:
            self.messages.clear()


class _Handler:
    def __init__(self, sink: SmtpSink):
        self.sink = sink

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.sink.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.sink.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.sink.data_reply:
            return self.sink.data_reply
        with self.sink.lock:
            self.sink.messages.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content or envelope.content))
            )
        return "250 Message accepted for delivery"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Controller(Controller):
    def factory(self):
        return SMTPServer(self.handler, enable_SMTPUTF8=True, decode_data=False, hostname="sink.test")


@pytest.fixture
def smtp_server():
    port = free_port()
    sink = SmtpSink("127.0.0.1", port)
    controller = _Controller(_Handler(sink), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


# ----------------------------------------------------------------- settings / db
@pytest.fixture
def settings(tmp_path, smtp_server):
    return test_settings(tmp_path, smtp_urls=(smtp_server.url,))


@pytest.fixture
def offline_settings(tmp_path):
    """Settings pointing at a port nobody listens on."""
    return test_settings(tmp_path, smtp_urls=(f"smtp://127.0.0.1:{free_port()}?timeout=2",))


@pytest.fixture
def db(settings):
    database = connect(settings.db, migrate=True)
    yield database
    database.close()


@pytest.fixture
def run(cli_env):
    """Invoke `funnel ARGS...` in process with the test settings and this test's clock."""

    def invoke(*args):
        return CliRunner().invoke(cli.main, [str(a) for a in args])

    return invoke


@pytest.fixture
def cli_env(settings, monkeypatch):
    """Environment so `funnel` subprocesses and CliRunner use the test settings."""
    env = {
        "FUNNEL_DB": settings.db,
        "FUNNEL_SECRET_KEYS": ",".join(settings.secret_keys),
        "FUNNEL_BASE_URL": settings.base_url,
        "FUNNEL_FROM": settings.from_addr,
        "FUNNEL_SITE_NAME": settings.site_name,
        "FUNNEL_POSTAL_ADDRESS": settings.postal_address,
        "FUNNEL_SMTP_URL": ",".join(settings.smtp_urls),
        "FUNNEL_APPOINTMENT_URL": settings.appointment_url,
        "FUNNEL_PROGRAMME_URL": settings.programme_url,
        "FUNNEL_CONFIG": str(Path(settings.db).with_name("absent.toml")),
    }
    for key in list(os.environ):
        if key.startswith("FUNNEL_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


# ----------------------------------------------------------------- sending (delivery engine)
#: A valid appointment request as campaigns.appointments.create_request takes it.
APPOINTMENT_REQUEST = {
    "name": "Priya Shah",
    "email": "priya@example.com",
    "phone": "+44 (0)7700 900123",
    "contact_method": "text",
    "times": ["weekday-morning", "saturday-morning"],
    "reason": "Stiff lower back after long drives.",
    "consent": True,
}
TEST_BULK_KIND = "test_bulk"


class Mailings:
    """Delivery-test helpers: subscribers and bulk outbox rows without the opt-in path."""

    def __init__(self, db, settings, clock):
        self.db, self.settings, self.clock = db, settings, clock

    def subscriber(self, email: str, name: str = "Sam Lee", status: str = "active") -> int:
        from funnel.db import iso
        from subscribers.lifecycle import email_hash

        stamp = iso(self.clock())
        return self.db.execute(
            "INSERT INTO subscribers (email, email_hash, name, status, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (email, email_hash(email), name, status, stamp, stamp),
        ).lastrowid

    def queue(self, sid: int, email: str, *, kind: str = TEST_BULK_KIND, stream: str = "broadcasts",
              expires_at=None, due_at=None) -> int:
        from funnel import outbox

        now = self.clock()
        return outbox.enqueue(
            self.db, self.settings, dedupe_key=f"{kind}:{stream}:{sid}:{email}", kind=kind,
            subscriber_id=sid, to_addr=email, due_at=due_at or now, now=now, stream=stream,
            expires_at=expires_at,
        )

    def many(self, n: int, domain: str = "example.com") -> list[int]:
        return [self.queue(self.subscriber(f"r{i}@{domain}", f"Reader {i}"), f"r{i}@{domain}")
                for i in range(n)]

    def row(self, rid: int) -> dict:
        return next(self.db.query("SELECT * FROM outbox WHERE id = ?", (rid,)))


@pytest.fixture
def mailings(db, settings, clock):
    """Registers a bulk 'test_bulk' message kind (a broadcast-like email) for the test."""
    from campaigns import kinds
    from campaigns.content import Content

    def build(db, settings, row, sub, now):
        return Content(
            kind="broadcast", subject="News from the clinic",
            body_md="Hello reader.\n\n.A line that starts with a dot.\n\n.\n\nBye.",
        )

    kinds.BUILDERS[TEST_BULK_KIND] = build
    try:
        yield Mailings(db, settings, clock)
    finally:
        kinds.BUILDERS.pop(TEST_BULK_KIND, None)
