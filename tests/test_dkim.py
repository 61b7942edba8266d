"""DKIM signing: verifies against a stub DNS record, covers the unsubscribe headers."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from datetime import UTC, datetime

import dkim
import pytest

from campaigns.dkim import SIGNED_HEADERS, DkimSigner
from campaigns.mime import Attachment, compose
from funnel.errors import FunnelError

SELECTOR, DOMAIN = "mail2024", "clinic.example"


@pytest.fixture(scope="module")
def keypair(tmp_path_factory):
    """A fresh 2048-bit RSA key (PKCS#8 PEM, as OpenSSL 3 writes it) and its DNS record."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed, so no RSA test key can be generated")
    key = tmp_path_factory.mktemp("dkim") / "dkim.pem"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
         "-out", str(key)],
        check=True, capture_output=True,
    )  # fmt: skip
    der = subprocess.run(
        ["openssl", "pkey", "-in", str(key), "-pubout", "-outform", "DER"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
    return key, record


@pytest.fixture
def dns(keypair):
    _, record = keypair
    asked = []

    def dnsfunc(name, timeout=5):
        asked.append(name)
        return record if name == f"{SELECTOR}._domainkey.{DOMAIN}.".encode() else None

    dnsfunc.asked = asked
    return dnsfunc


def message(**overrides) -> bytes:
    kwargs = dict(
        from_name="Back Clinic",
        from_addr="news@clinic.example",
        to_name="Zoë Reader",
        to_addr="zoe@example.com",
        subject="Week 2: strength 💪",
        date=datetime(2024, 5, 6, 7, 30, tzinfo=UTC),
        message_id="<9.abc@clinic.example>",
        text="Hello Zoë,\n.\nFrom the clinic\n",
        html="<p>Hello Zoë</p>",
        list_id="Exercise <exercise.clinic.example>",
        unsubscribe_url="https://news.clinic.example/u/TOKEN",
        unsubscribe_mailto="unsubscribe+9@clinic.example",
    )
    kwargs.update(overrides)
    return compose(**kwargs)


def signed_tags(signed: bytes) -> dict[bytes, bytes]:
    head = signed.split(b"\r\n\r\n", 1)[0]
    field = re.search(rb"^DKIM-Signature:(.*?)\r\n(?=\S)", head, re.S | re.M).group(1)
    unfolded = re.sub(rb"\s+", b"", field)
    return dict(tag.split(b"=", 1) for tag in unfolded.split(b";") if tag)


def test_signed_message_verifies(keypair, dns):
    key, _ = keypair
    signed = DkimSigner(SELECTOR, DOMAIN, key).sign(message())
    assert signed.startswith(b"DKIM-Signature: ")
    assert dkim.verify(signed, dnsfunc=dns)
    assert dns.asked == [f"{SELECTOR}._domainkey.{DOMAIN}.".encode()]
    tags = signed_tags(signed)
    assert tags[b"d"] == DOMAIN.encode() and tags[b"s"] == SELECTOR.encode()
    assert tags[b"c"] == b"relaxed/relaxed"


def test_h_tag_covers_the_bulk_headers_and_oversigns_them(keypair):
    key, _ = keypair
    signed = DkimSigner(SELECTOR, DOMAIN, key).sign(message())
    h = signed_tags(signed)[b"h"].split(b":")
    for name in SIGNED_HEADERS:
        assert name in h, name
    # Listed twice: once for the header present, once to lock out a second copy.
    for name in (b"from", b"subject", b"list-unsubscribe", b"list-unsubscribe-post"):
        assert h.count(name) == 2, name


def test_reply_to_cc_list_id_and_content_type_are_oversigned(keypair, dns):
    key, _ = keypair
    signed = DkimSigner(SELECTOR, DOMAIN, key).sign(message(reply_to="desk@clinic.example"))
    assert dkim.verify(signed, dnsfunc=dns)
    h = signed_tags(signed)[b"h"].split(b":")
    # present once each in the message, listed twice in h=
    for name in (b"reply-to", b"list-id", b"content-type"):
        assert h.count(name) == 2, name
    assert h.count(b"cc") == 1  # absent from our mail: listed once, so one can't be added
    end = signed.index(b"\r\n\r\n")
    for added in (b"Cc: someone@evil.example", b"Reply-To: <evil@evil.example>",
                  b"List-Id: <other.evil.example>", b"Content-Type: text/plain"):
        forged = signed[:end] + b"\r\n" + added + signed[end:]
        assert not dkim.verify(forged, dnsfunc=dns), added


def test_headers_absent_from_a_transactional_message_are_still_locked(keypair, dns):
    key, _ = keypair
    raw = message(list_id=None, unsubscribe_url=None, unsubscribe_mailto=None)
    signed = DkimSigner(SELECTOR, DOMAIN, key).sign(raw)
    h = signed_tags(signed)[b"h"].split(b":")
    assert h.count(b"list-unsubscribe") == 1 and h.count(b"list-unsubscribe-post") == 1
    assert dkim.verify(signed, dnsfunc=dns)
    # Someone adding a List-Unsubscribe later breaks the signature.
    end = signed.index(b"\r\n\r\n")
    forged = signed[:end] + b"\r\nList-Unsubscribe: <https://evil.example/>" + signed[end:]
    assert not dkim.verify(forged, dnsfunc=dns)


def test_tampered_body_fails(keypair, dns):
    key, _ = keypair
    signed = DkimSigner(SELECTOR, DOMAIN, key).sign(message())
    assert dkim.verify(signed, dnsfunc=dns)
    assert not dkim.verify(signed.replace(b"Hello Zo=C3=AB", b"Hello Bob"), dnsfunc=dns)


def test_changed_or_added_unsubscribe_header_fails(keypair, dns):
    key, _ = keypair
    signed = DkimSigner(SELECTOR, DOMAIN, key).sign(message())
    changed = signed.replace(b"/u/TOKEN", b"/u/OTHER")
    assert changed != signed and not dkim.verify(changed, dnsfunc=dns)
    end = signed.index(b"\r\n\r\n")
    added = signed[:end] + b"\r\nList-Unsubscribe: <https://evil.example/>" + signed[end:]
    assert not dkim.verify(added, dnsfunc=dns)


def test_message_with_attachment_verifies(keypair, dns):
    key, _ = keypair
    ics = Attachment("invite.ics", "text/calendar; method=REQUEST", b"BEGIN:VCALENDAR\r\n")
    signed = DkimSigner(SELECTOR, DOMAIN, key).sign(message(attachments=[ics]))
    assert dkim.verify(signed, dnsfunc=dns)


def test_crlf_pem_file_is_accepted(keypair, dns, tmp_path):
    key, _ = keypair
    crlf = tmp_path / "crlf.pem"
    crlf.write_bytes(key.read_bytes().replace(b"\n", b"\r\n"))
    assert dkim.verify(DkimSigner(SELECTOR, DOMAIN, crlf).sign(message()), dnsfunc=dns)


def test_missing_key_file_names_the_file(tmp_path):
    path = tmp_path / "nope.pem"
    with pytest.raises(FunnelError, match=rf"^dkim_key_file {re.escape(str(path))}: cannot read "
                       r"the DKIM key \(No such file or directory\)$"):  # fmt: skip
        DkimSigner(SELECTOR, DOMAIN, path)


def test_directory_as_key_file_names_the_file(tmp_path):
    with pytest.raises(FunnelError, match=rf"^dkim_key_file {re.escape(str(tmp_path))}: cannot"):
        DkimSigner(SELECTOR, DOMAIN, tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not a key at all",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
    ],
)
def test_invalid_key_file_names_the_file(tmp_path, content):
    path = tmp_path / "bad.pem"
    path.write_bytes(content)
    with pytest.raises(FunnelError, match=rf"^dkim_key_file {re.escape(str(path))}: not a PEM"):
        DkimSigner(SELECTOR, DOMAIN, path)


def test_message_without_from_cannot_be_signed(keypair):
    key, _ = keypair
    signer = DkimSigner(SELECTOR, DOMAIN, key)
    with pytest.raises(FunnelError, match="^dkim: cannot sign a message with 0 From headers"):
        signer.sign(b"Subject: hi\r\n\r\nbody\r\n")
    with pytest.raises(FunnelError, match="^dkim: cannot sign a message with 2 From headers"):
        signer.sign(b"From: a@x.example\r\nFrom: b@x.example\r\n\r\nbody\r\n")


def test_empty_selector_is_refused(keypair):
    key, _ = keypair
    with pytest.raises(FunnelError, match="^dkim_selector: DKIM signing needs both"):
        DkimSigner("", DOMAIN, key)
