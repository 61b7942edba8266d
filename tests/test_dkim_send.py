"""DKIM through the whole send path: the bytes the live server received verify with dkimpy."""

from __future__ import annotations

import base64
import shutil
import subprocess

import dkim
import pytest
from click.testing import CliRunner

import cli
from campaigns import sender


@pytest.fixture(scope="module")
def rsa_key(tmp_path_factory):
    """A fresh 1024-bit key (fast to make; tests only) and its DNS TXT record."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test DKIM key")
    folder = tmp_path_factory.mktemp("dkim")
    key = folder / "dkim.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "1024"], check=True, capture_output=True)
    der = subprocess.run(
        ["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
    return key, record


def test_sent_mail_verifies_and_signs_the_unsubscribe_headers(
    db, settings, clock, smtp_server, mailings, rsa_key
):
    key, record = rsa_key
    signed = settings.replace(
        dkim_selector="s1", dkim_domain="clinic.example", dkim_key_file=str(key)
    )
    mailings.queue(mailings.subscriber("sam@example.com", "Sam Lee"), "sam@example.com")
    assert sender.send_due(db, signed, clock).sent == 1
    (m,) = smtp_server.messages

    lookups = []

    def dns(name, timeout=5):
        lookups.append(name)
        return record if name == b"s1._domainkey.clinic.example." else None

    assert dkim.verify(m.data, dnsfunc=dns)
    assert lookups == [b"s1._domainkey.clinic.example."]
    sig = m.message["DKIM-Signature"]
    tags = dict(t.strip().split("=", 1) for t in sig.replace("\r\n", "").split(";") if "=" in t)
    signed_headers = [h.strip().lower() for h in tags["h"].split(":")]
    for name in (
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
    ):
        assert name in signed_headers
    assert tags["d"] == "clinic.example" and tags["s"] == "s1"

    # A changed unsubscribe header breaks the signature.
    tampered = m.data.replace(
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        b"List-Unsubscribe-Post: List-Unsubscribe=Nope",
    )
    assert tampered != m.data and not dkim.verify(tampered, dnsfunc=dns)


def test_unreadable_key_is_one_line_at_startup(cli_env, tmp_path, monkeypatch, smtp_server):
    monkeypatch.setenv("FUNNEL_DKIM_KEY_FILE", str(tmp_path / "missing.pem"))
    monkeypatch.setenv("FUNNEL_DKIM_SELECTOR", "s1")
    monkeypatch.setenv("FUNNEL_DKIM_DOMAIN", "clinic.example")
    assert CliRunner().invoke(cli.main, ["subscribers", "add", "a@example.com"]).exit_code == 0
    r = CliRunner().invoke(cli.main, ["send", "-q"])
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == [
        f"Error: dkim_key_file {tmp_path / 'missing.pem'}: cannot read the DKIM key (No such file or directory)"
    ]
    assert smtp_server.messages == []


def test_every_message_of_a_batch_carries_its_own_signature(db, settings, clock, smtp_server, mailings,
                                                           rsa_key):
    """The private-key operation runs on the wire thread while the next row is built:
    each received message verifies on its own bytes (no signature lands on a
    neighbour), and no wire thread outlives the send."""
    import threading

    key, record = rsa_key
    signed = settings.replace(dkim_selector="s1", dkim_domain="clinic.example", dkim_key_file=str(key))
    people = [f"reader{i}@example.com" for i in range(7)]
    for addr in people:
        mailings.queue(mailings.subscriber(addr, addr.split("@")[0].title()), addr)
    assert sender.send_due(db, signed, clock).sent == len(people)
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == sorted(people)
    for m in smtp_server.messages:
        assert m.message["To"].endswith(m.rcpt_tos[0]) or m.rcpt_tos[0] in m.message["To"]
        assert dkim.verify(m.data, dnsfunc=lambda name, timeout=5: record)
    assert not [t for t in threading.enumerate() if t.name.startswith("funnel-wire")]
