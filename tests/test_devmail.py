"""The embedded SMTP server and the dev inbox pages, with real sockets and a real database."""

from __future__ import annotations

import re
import smtplib
import socket
from email.message import EmailMessage

import pytest
from conftest import free_port

import web
from campaigns.sender import send_due
from funnel import devmail
from funnel.db import connect
from funnel.errors import FunnelError, NotFound
from funnel.settings import test_settings
from subscribers import optin


def _message(subject="Hello <b>there</b>", to="reader@example.com") -> bytes:
    msg = EmailMessage()
    msg["From"] = "Clinic <news@clinic.example>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = "<abc@clinic.example>"
    msg.set_content("Plain words. Visit https://news.clinic.example/p/TOKEN123 today.\n")
    msg.add_alternative("<p>HTML <script>alert(1)</script> words</p>", subtype="html")
    return msg.as_bytes()


@pytest.fixture
def server(tmp_path):
    s = test_settings(tmp_path)
    connect(s.db, migrate=True).close()
    srv = devmail.DevMailServer(s.db, port=0).start()
    yield s, srv
    srv.stop()


def test_catches_every_message_byte_for_byte(server):
    s, srv = server
    data = _message()
    with smtplib.SMTP(srv.host, srv.port, timeout=5) as smtp:
        refused = smtp.sendmail("bounce+7@clinic.example", ["a@example.com", "b@example.org"], data)
        assert refused == {}
        smtp.sendmail("bounce+8@clinic.example", ["c@example.com"], _message("Second"))
    db = connect(s.db)
    listing = devmail.listing(db)
    assert [m["subject"] for m in listing] == ["Second", "Hello <b>there</b>"]  # newest first
    first = devmail.get(db, listing[1]["id"])
    assert first.rcpt_tos == ["a@example.com", "b@example.org"]
    assert first.mail_from == "bounce+7@clinic.example"
    assert first.data.replace(b"\r\n", b"\n").rstrip() == data.replace(b"\r\n", b"\n").rstrip()
    assert "Plain words." in first.text and "<script>" in first.html
    assert first.links == ["https://news.clinic.example/p/TOKEN123"]
    assert ("Message-ID", "<abc@clinic.example>") in first.headers
    assert devmail.count(db) == 2
    assert devmail.clear(db) == 2 and devmail.listing(db) == []
    with pytest.raises(NotFound, match="no message 999"):
        devmail.get(db, 999)


def test_a_busy_port_is_one_clear_error(tmp_path):
    s = test_settings(tmp_path)
    connect(s.db, migrate=True).close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(FunnelError, match=f"cannot listen on 127.0.0.1:{port}.*--smtp-port"):
            devmail.DevMailServer(s.db, port=port).start()


def test_the_sender_delivers_into_the_dev_inbox(tmp_path, clock):
    s = test_settings(tmp_path)
    connect(s.db, migrate=True).close()
    srv = devmail.DevMailServer(s.db, port=free_port(), clock=clock).start()
    try:
        s = s.replace(smtp_urls=(srv.url,))
        db = connect(s.db)
        optin.signup(db, s, "sam@example.com", clock(), name="Sam")
        assert send_due(db, s, clock).sent == 1
        (item,) = devmail.listing(db)
        assert item["rcpt_tos"] == ["sam@example.com"] and "confirm" in item["subject"].lower()
        assert item["received_at"] == clock().strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        msg = devmail.get(db, item["id"])
        assert any("/confirm/" in u for u in msg.links)
    finally:
        srv.stop()


def test_dev_inbox_pages_escape_and_sandbox_the_email(server, clock):
    s, srv = server
    with smtplib.SMTP(srv.host, srv.port, timeout=5) as smtp:
        smtp.sendmail("x@clinic.example", ["<i>r</i>@example.com"], _message())
    client = web.create_app(s.replace(dev=True), clock=clock).test_client()
    listing = client.get("/dev/inbox")
    html = listing.get_data(as_text=True)
    assert "Hello &lt;b&gt;there&lt;/b&gt;" in html and "<b>there" not in html
    mid = int(re.search(r'href="/dev/inbox/(\d+)"', html).group(1))
    page = client.get(f"/dev/inbox/{mid}").get_data(as_text=True)
    assert re.search(r'<iframe class="email"[^>]*sandbox="allow-popups', page)
    assert f'src="/dev/inbox/{mid}/html"' in page
    assert "Plain words." in page and "&lt;abc@clinic.example&gt;" in page
    assert '<a href="https://news.clinic.example/p/TOKEN123">' in page
    framed = client.get(f"/dev/inbox/{mid}/html")
    csp = framed.headers["Content-Security-Policy"]
    assert "frame-ancestors 'self'" in csp and "sandbox" in csp and "script-src" not in csp
    assert "default-src 'none'" in csp and framed.headers["X-Frame-Options"] == "SAMEORIGIN"
    # Its links open in a new tab, as in a webmail (our pages refuse to load in a frame).
    assert framed.get_data(as_text=True).startswith('<base target="_blank"><p>HTML')
    raw = client.get(f"/dev/inbox/{mid}/raw")
    assert raw.mimetype == "text/plain" and b"Subject: Hello <b>there</b>" in raw.data
