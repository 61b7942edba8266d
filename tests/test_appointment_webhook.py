"""The appointment webhook against a real local HTTP server, on the fake clock.

The server answers from a script (a status code, or "timeout": it sleeps past
the client's timeout) and records every request's headers and body, so the
tests check the signature a receiver would compute, the retries with backoff
and the give-up after 24 h, which `funnel check` then reports.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from campaigns import appointments, webhooks, worker
from funnel.db import parse_iso

GOOD = {
    "name": "June Park",
    "email": "june@example.com",
    "phone": "",
    "contact_method": "email",
    "times": ["weekday-evening"],
    "reason": "Sciatica down the left leg.",
    "consent": True,
}


class Receiver:
    """A real HTTP server on loopback; ``script`` says how to answer each POST in turn."""

    def __init__(self, script):
        self.script = list(script)
        self.requests: list[tuple[dict, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append((dict(self.headers), body))
                answer = receiver.script.pop(0) if len(receiver.script) > 1 else receiver.script[0]
                if answer == "timeout":
                    time.sleep(webhooks.TIMEOUT_SECONDS + 0.5)
                    answer = 200
                self.send_response(answer)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/funnel"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_for():
    made = []

    def make(*script):
        r = Receiver(script)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


@pytest.fixture(autouse=True)
def _short_timeout(monkeypatch):
    monkeypatch.setattr(webhooks, "TIMEOUT_SECONDS", 0.5)


def ledger(db):
    return db.execute(
        "SELECT status, attempts, next_attempt_at, http_status, last_error FROM appointment_webhooks"
    ).fetchone()


def test_signature_verifies_with_the_secret(db, settings, clock, receiver_for):
    hook = receiver_for(200)
    s = settings.replace(appointment_webhook_url=hook.url, appointment_webhook_secret="s3cret-for-the-crm-0001")
    a = appointments.create_request(db, s, GOOD, {"attr_kind": "series", "attr_step": "03"}, clock())
    ticked = worker.tick(db, s, clock())  # the worker tick posts it
    assert ticked["webhooks_delivered"] == 1
    ((headers, body),) = hook.requests
    expected = hmac.new(b"s3cret-for-the-crm-0001", body, hashlib.sha256).hexdigest()
    assert headers["X-Funnel-Signature"] == f"sha256={expected}"
    assert headers["X-Funnel-Timestamp"] == str(int(clock().timestamp()))
    assert headers["Content-Type"] == "application/json"
    data = json.loads(body)
    assert data["event"] == "appointment.requested" and data["timestamp"] == int(clock().timestamp())
    assert data["appointment"]["id"] == a.id and data["appointment"]["email"] == "june@example.com"
    assert data["appointment"]["attribution"] == {"kind": "series", "step": "03"}
    wrong = hmac.new(b"another-secret-entirely", body, hashlib.sha256).hexdigest()
    assert headers["X-Funnel-Signature"] != f"sha256={wrong}"
    assert ledger(db)[:2] == ("delivered", 1)
    # Without a secret of its own, the signing secret is derived from the secret key.
    derived = settings.replace(appointment_webhook_url=hook.url)
    secret = appointments.webhook_secret(derived)
    assert len(secret) == 64 and secret != derived.secret_keys[0]
    body = b'{"x":1}'
    assert webhooks.signature(secret, body) == "sha256=" + hmac.new(
        secret.encode(), body, hashlib.sha256
    ).hexdigest()


@pytest.mark.parametrize("first", [500, "timeout"])
def test_a_failure_is_retried_with_backoff_then_delivered(db, settings, clock, receiver_for, first):
    hook = receiver_for(first, 200)
    s = settings.replace(appointment_webhook_url=hook.url)
    appointments.create_request(db, s, GOOD, None, clock())
    start = clock()
    run = appointments.deliver_webhooks(db, s, clock())
    assert (run.delivered, run.retrying) == (0, 1)
    status, attempts, next_at, code, error = ledger(db)
    assert (status, attempts) == ("pending", 1)
    assert parse_iso(next_at) == start + appointments.WEBHOOK_BACKOFF_BASE
    assert (code, error) == ((500, "attempt 1: HTTP 500 Internal Server Error") if first == 500
                             else (None, "attempt 1: no answer within 0.5 s"))  # fmt: skip
    clock.advance(seconds=30)
    assert appointments.deliver_webhooks(db, s, clock()).delivered == 0  # not due yet
    assert len(hook.requests) == 1
    clock.advance(seconds=30)
    assert appointments.deliver_webhooks(db, s, clock()).delivered == 1
    assert ledger(db)[:2] == ("delivered", 2)
    (h1, b1), (h2, b2) = hook.requests
    assert h1["X-Funnel-Delivery"] == h2["X-Funnel-Delivery"]  # the receiver can drop repeats
    assert json.loads(b1)["appointment"] == json.loads(b2)["appointment"]
    assert appointments.deliver_webhooks(db, s, clock.advance(hours=1)).delivered == 0
    assert len(hook.requests) == 2


def test_always_500_fails_after_24_hours_and_check_reports_it(db, settings, clock, receiver_for, run):
    hook = receiver_for(500)
    s = settings.replace(appointment_webhook_url=hook.url)
    a = appointments.create_request(db, s, GOOD, None, clock())
    start = clock()
    times = []
    while ledger(db)[0] == "pending":
        times.append(clock())
        appointments.deliver_webhooks(db, s, clock())
        status, attempts, next_at, *_ = ledger(db)
        if status == "pending":
            clock.set(parse_iso(next_at))
        assert len(times) < 40
    status, attempts, _next, code, error = ledger(db)
    assert status == "failed" and code == 500 and attempts == len(times) == len(hook.requests)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert gaps[:4] == [timedelta(minutes=m) for m in (1, 2, 4, 8)]  # exponential
    assert max(gaps) <= appointments.WEBHOOK_BACKOFF_CAP
    assert times[-1] == start + timedelta(hours=24)  # the last try is at the deadline
    assert appointments.get_request(db, a.id).status == "new"  # the request is never lost
    r = run("check", "--no-network")
    assert r.exit_code == 0, r.output  # it needs attention, but does not stop sending
    assert f"the webhook for appointment {a.id} (delivery 1) failed for 24 h" in r.stderr
    assert "HTTP 500" in r.stderr and "no problems found" in r.stdout
    # A later tick leaves it alone.
    appointments.deliver_webhooks(db, s, clock.advance(days=1))
    assert len(hook.requests) == attempts


def test_no_url_no_ledger_and_a_dead_endpoint_is_an_error_not_a_crash(db, settings, clock):
    appointments.create_request(db, settings, GOOD, None, clock())
    assert db.execute("SELECT COUNT(*) FROM appointment_webhooks").fetchone() == (0,)
    result = webhooks.post("http://127.0.0.1:9/nothing", b"{}", {}, timeout=0.5)
    assert not result.ok and result.status is None and result.error.startswith("cannot connect")


def test_a_silent_endpoint_costs_one_timeout_per_tick(db, settings, clock, receiver_for):
    hook = receiver_for("timeout")
    s = settings.replace(appointment_webhook_url=hook.url)
    for _ in range(3):
        appointments.create_request(db, s, GOOD, None, clock())
    run = appointments.deliver_webhooks(db, s, clock())
    assert (run.delivered, run.retrying) == (0, 1) and len(hook.requests) == 1
    attempts = [r[0] for r in db.execute("SELECT attempts FROM appointment_webhooks ORDER BY id")]
    assert attempts == [1, 0, 0]  # the others wait, still pending, for the next tick
    hook.script = [200]
    clock.advance(minutes=1)
    assert appointments.deliver_webhooks(db, s, clock()).delivered == 3
