"""Our DKIM signatures against dkimpy's verifier, on random headers and bodies.

Both signatures (RSA-SHA256 on top, Ed25519-SHA256 below it) must verify with
dkimpy, and our relaxed header canonicalisation must give the same bytes as
dkimpy's for every header field.
"""

from __future__ import annotations

import base64

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim.canonicalization import Relaxed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaigns.dkim import DkimSigner, canonical_body, canonical_header
from funnel.errors import FunnelError

SELECTOR, DOMAIN = "s1", "clinic.example"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dkim-props")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    rsa_path, ed_path = folder / "rsa.pem", folder / "ed.pem"
    pkcs8 = serialization.PrivateFormat.PKCS8
    plain = serialization.NoEncryption()
    pem = serialization.Encoding.PEM
    rsa_path.write_bytes(
        rsa_key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL, plain)
    )
    ed_path.write_bytes(ed_key.private_bytes(pem, pkcs8, plain))
    rsa_der = rsa_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ed_raw = ed_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    records = {
        b"s1._domainkey.clinic.example.": b"v=DKIM1; k=rsa; p=" + base64.b64encode(rsa_der),
        b"ed._domainkey.clinic.example.": b"v=DKIM1; k=ed25519; p=" + base64.b64encode(ed_raw),
    }
    signer = DkimSigner(SELECTOR, DOMAIN, rsa_path, ed_path, ed25519_selector="ed")
    return signer, records, folder


def verifies(signed: bytes, records, idx: int) -> bool:
    try:
        return dkim.DKIM(signed).verify(idx=idx, dnsfunc=lambda name, timeout=5: records.get(name))
    except dkim.ValidationError:  # dkimpy raises on a body hash mismatch
        return False


# Printable header text with runs of blanks, tabs and folds, as relays leave it.
_word = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=":"),
    min_size=1,
    max_size=12,
)
_blank = st.sampled_from([" ", "  ", "\t", " \t ", "\r\n ", "\r\n\t"])


@st.composite
def header_value(draw) -> bytes:
    parts = [draw(st.sampled_from(["", " ", "  ", "\t"]))]
    for _ in range(draw(st.integers(1, 6))):
        parts.append(draw(_word))
        parts.append(draw(_blank))
    parts[-1] = draw(st.sampled_from(["", " ", "\t", "  "]))
    return "".join(parts).encode("ascii")


_names = st.sampled_from(
    ["From", "to", "Subject", "DATE", "Message-ID", "List-Unsubscribe", "List-Id", "Reply-To",
     "cc", "Content-Type", "MIME-Version", "X-Mailer", "Received", "Sender"]
)  # fmt: skip

_body_line = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from(["\t", " "]),
    max_size=60,
)


@st.composite
def message(draw) -> bytes:
    headers = [(b"From", b" " + draw(header_value()))]
    for _ in range(draw(st.integers(0, 10))):
        headers.insert(
            draw(st.integers(0, len(headers))),
            (draw(_names).encode(), b" " + draw(header_value())),
        )
    headers = [(n, v) for n, v in headers if n.lower() != b"from"] + [
        headers[[n.lower() for n, _ in headers].index(b"from")]
    ]
    lines = draw(st.lists(_body_line, max_size=8))
    trailing = draw(st.sampled_from(["", "\r\n", "\r\n\r\n", "  \r\n\r\n"]))
    body = ("\r\n".join(lines) + trailing).encode("ascii")
    head = b"".join(n + b":" + v + b"\r\n" for n, v in headers)
    return head + b"\r\n" + body


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=message())
def test_both_signatures_verify_with_dkimpy(keys, raw):
    signer, records, _ = keys
    signed = signer.sign(raw)
    assert signed.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;")
    assert b"\r\nDKIM-Signature: v=1; a=ed25519-sha256;" in signed
    assert verifies(signed, records, 0)
    assert verifies(signed, records, 1)


@pytest.fixture(scope="module")
def offloaded(keys):
    """The same keys, signing in a child process (DkimSigner.offload)."""
    _, _, folder = keys
    signer = DkimSigner(SELECTOR, DOMAIN, folder / "rsa.pem", folder / "ed.pem",
                        ed25519_selector="ed")  # fmt: skip
    signer.offload()
    yield signer
    signer.close()


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=message())
def test_the_signing_child_makes_the_same_fields_byte_for_byte(keys, offloaded, raw):
    """The child picks and canonicalises the signed fields from the raw header block
    itself; what it sends back is exactly what this process makes."""
    signer, records, _ = keys
    try:
        here = signer.prepare(raw).headers()
    except FunnelError:  # a message we refuse to sign is refused before any child
        with pytest.raises(FunnelError):
            offloaded.prepare(raw)
        return
    signing = offloaded.prepare(raw)
    assert signing._ticket is not None and not signing._signed  # left to the child
    helper, seq = signing._ticket
    assert helper.result(seq) == here  # the child's answer, not a fallback made here
    assert verifies(here + raw, records, 0) and verifies(here + raw, records, 1)


@settings(max_examples=300, deadline=None)
@given(name=_names, value=header_value())
def test_header_canonicalisation_matches_dkimpy(name, value):
    raw = name.encode() + b":" + value + b"\r\n"
    ((dname, dvalue),) = dkim.rfc822_parse(raw + b"\r\n")[0]
    ((cname, cvalue),) = Relaxed.canonicalize_headers([(dname, dvalue)])
    assert canonical_header(name.encode(), value) == cname + b":" + cvalue


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(_body_line, max_size=8),
    trailing=st.sampled_from(["", "\r\n", "\r\n\r\n", " \t\r\n"]),
)
def test_body_canonicalisation_matches_dkimpy(lines, trailing):
    body = ("\r\n".join(lines) + trailing).encode("ascii")
    assert canonical_body(body) == Relaxed.canonicalize_body(body)


def test_tampering_breaks_both_signatures(keys):
    signer, records, _ = keys
    signed = signer.sign(b"From: a@clinic.example\r\nSubject: Hi\r\n\r\nHello\r\n")
    assert verifies(signed, records, 0) and verifies(signed, records, 1)
    for forged in (
        signed.replace(b"Hello", b"Howdy"),
        signed.replace(b"Subject: Hi", b"Subject: Yo"),
    ):
        assert not verifies(forged, records, 0)
        assert not verifies(forged, records, 1)


def test_a_key_of_the_wrong_kind_is_refused(keys):
    _, _, folder = keys
    with pytest.raises(FunnelError, match=r"^dkim_key_file .*ed\.pem: not a PEM RSA private key"):
        DkimSigner(SELECTOR, DOMAIN, folder / "ed.pem")
    with pytest.raises(FunnelError, match=r"^dkim_ed25519_key_file .*rsa\.pem: not a PEM Ed25519"):
        DkimSigner(SELECTOR, DOMAIN, folder / "rsa.pem", folder / "rsa.pem")
