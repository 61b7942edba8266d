"""Spliced bodies: the static parts of an email encoded once per content.

campaigns/render.py cuts a compiled email's text and HTML at its
per-recipient islands (Splice); campaigns/mime.py encodes the static
segments once (quoted-printable and DKIM relaxed form) and per recipient
only the islands.  The decoded message must be exactly what the whole-part
path gives, for any recipient and content; the lines must stay <= 76
characters; the relaxed body must be what campaigns/dkim.py computes from the
bytes; and anything the splice cannot express must fall back to the whole
path.
"""

from __future__ import annotations

import email
import email.policy
import quopri
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from campaigns import dkim, mime, render
from campaigns import links as tracking
from funnel.settings import test_settings

DATE = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)

#: Recipient values: unicode, quotes, markup, "=", "From ", blanks, long, empty.
VALUE = st.one_of(
    st.just(""),
    st.lists(
        st.sampled_from(
            ["a", "Z", " ", "  ", "\t", "'", '"', "<", ">", "&", "=", "é", "中", "🙂", "From ",
             ".", "x" * 90, "\u00a0", "-"]
        ),
        max_size=12,
    ).map("".join),
)  # fmt: skip
URL = st.text(alphabet="abcXYZ019-_.", min_size=0, max_size=160).map(
    lambda t: "https://news.clinic.example/t/" + t
)

BODIES = [
    "Hello {{ first_name }}!\n\nA short walk counts.\n\n* one\n* two\n",
    "# Moving again\n\nFrom here on, " + "a long sentence that goes on " * 12 + "\n\n"
    "See [the guide](https://clinic.example/guide?a=1&b=2) and https://clinic.example/x.\n",
    "Tabs\there,  double  spaces, = signs, é and 中文, ending without a break",
]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return test_settings(tmp_path_factory.mktemp("splice"))


_compiled: dict = {}


def compiled(site, kind: str, body: int, track: bool) -> render.CompiledEmail:
    key = (kind, body, track)
    if key not in _compiled:
        _compiled[key] = render.compile_email(
            site, kind, subject="Week {{ first_name }}", preheader="A preview",
            body_md=BODIES[body], ctas=[{"kind": "appointment", "text": "Book a visit"}],
            track=track, pixel=track,
        )  # fmt: skip
    return _compiled[key]


def recipient(site, first_name: str, email_value: str, url: str, reason: str) -> dict:
    r = render.sample_recipient(site, "broadcast")
    r.update(first_name=first_name, email=email_value, reason=reason, view_url=url,
             unsubscribe_url=url + "/u", preferences_url=url + "&p")  # fmt: skip
    r[tracking.CLICK_KEY] = url + "."
    return r


def whole(c: render.CompiledEmail, r: dict) -> render.Rendered:
    kept, c.splices = c.splices, (None, None)
    try:
        return c.render(r)
    finally:
        c.splices = kept


HEAD = dict(from_name="Back Clinic", from_addr="news@clinic.example", to_name="Ann",
            to_addr="ann@example.com", subject="Hello", date=DATE,
            message_id="<1.a@clinic.example>")  # fmt: skip


def message(rendered: render.Rendered, spliced: bool) -> tuple[bytes, bytes | None]:
    text, html = rendered.text, rendered.html
    if spliced:
        text = mime.encode_spliced(*rendered.text_splice)
        html = mime.encode_spliced(*rendered.html_splice)
    return mime.compose_signable(**HEAD, text=text, html=html)


def decoded_parts(raw: bytes) -> list[bytes]:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert not msg.defects
    return [part.get_payload(decode=True) for part in msg.iter_parts()]


def check_lines(raw: bytes) -> None:
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    body = raw.split(b"\r\n\r\n", 1)[1]
    assert max(len(line) for line in body.split(b"\r\n")) <= 76
    assert not any(line.startswith(b"From ") for line in body.split(b"\r\n"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(kind=st.sampled_from(["broadcast", "series", "webinar_invite"]), body=st.integers(0, len(BODIES) - 1),
       track=st.booleans(), first_name=VALUE, email_value=VALUE, url=URL, reason=VALUE)  # fmt: skip
@example(kind="broadcast", body=0, track=True, first_name="", email_value="", url="https://a",
         reason="")  # fmt: skip
@example(kind="broadcast", body=1, track=False, first_name="From " + "é" * 40, email_value=" ",
         url="https://" + "=" * 150, reason="x" * 200)  # fmt: skip
def test_spliced_message_decodes_to_the_whole_render(site, kind, body, track, first_name,
                                                     email_value, url, reason):
    c = compiled(site, kind, body, track)
    assert c.splices[0] is not None and c.splices[1] is not None
    r = recipient(site, first_name, email_value, url, reason)
    rendered, reference = c.render(r), whole(c, r)
    assert (rendered.html, rendered.text) == (reference.html, reference.text)
    assert rendered.html_splice is not None and rendered.text_splice is not None
    spliced, canonical = message(rendered, spliced=True)
    full, none = message(reference, spliced=False)
    assert none is None
    check_lines(spliced)
    assert decoded_parts(spliced) == decoded_parts(full)
    stdlib = mime.compose_stdlib(**HEAD, text=reference.text, html=reference.html)
    assert decoded_parts(spliced) == decoded_parts(stdlib)
    # The relaxed body built from the pieces is the one computed from the bytes.
    assert canonical == dkim.canonical_body(spliced.split(b"\r\n\r\n", 1)[1])


SEGMENT = st.lists(
    st.sampled_from(["a", " ", "  ", "\t", "\n", "=", "é", "From ", "x" * 80, ".", "<p>"]),
    max_size=8,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(static=st.lists(SEGMENT, min_size=2, max_size=6), data=st.data())
@example(static=["", ""], data=None)
@example(static=["a" * 75, "b"], data=None)
@example(static=["x" * 76, "\n"], data=None)
def test_encode_spliced_matches_the_whole_text(static, data):
    islands = (
        data.draw(st.lists(SEGMENT, min_size=len(static) - 1, max_size=len(static) - 1))
        if data is not None else ["é" * 30] * (len(static) - 1)
    )  # fmt: skip
    encoded = mime.encode_spliced(tuple(static), tuple(islands))
    text = mime.interleave(tuple(static), tuple(islands))
    expected = text if text.endswith("\n") else text + "\n"
    assert quopri.decodestring(encoded.qp).decode("utf-8") == expected.replace("\n", "\r\n")
    assert encoded.qp.endswith(b"\r\n")
    assert all(len(line) <= 76 for line in encoded.qp.split(b"\r\n"))
    assert b"\n" not in encoded.qp.replace(b"\r\n", b"")
    assert encoded.canonical == mime.relaxed_lines(encoded.qp)


# ------------------------------------------------------------ the fallbacks
@pytest.mark.parametrize(
    "source",
    [
        "a {# note #} b {{ first_name }}",
        "{% for x in y %}{{ x }}{% endfor %}",
        "a {{- first_name }}",
        "{% if a -%} x {% endif %}",
        "{% if a %} never closed",
        "{% endif %}",
        "no islands at all",
        "{% set a = 1 %}{{ a }}",
    ],
)
def test_what_the_splice_cannot_express_is_left_whole(source):
    assert render._splice(render._STAGE2[(False, "html")], source) is None


def test_islands_and_if_blocks_are_cut_where_expected():
    s = render._splice(
        render._STAGE2[(False, "html")],
        'a{{ "{" }}b {{ first_name }} c {% if x %}{% if y %}1{% else %}{{ y }}{% endif %}'
        "{% endif %}d",
    )
    assert s.static == ("a{b ", " c ", "d")
    assert s.islands[0] == "{{ first_name }}"
    assert s.islands[1].startswith("{% if x %}") and s.islands[1].endswith("{% endif %}")


def test_a_value_holding_the_separator_renders_whole(site):
    c = compiled(site, "broadcast", 0, True)
    r = recipient(site, f"Ann{render._ISLAND_SEP}Lee", "a@b.example", "https://x", "why")
    rendered = c.render(r)
    assert rendered.html_splice is None and rendered.text_splice is None
    assert (rendered.html, rendered.text) == (whole(c, r).html, whole(c, r).text)
    raw, canonical = message(rendered, spliced=False)
    assert canonical is None and decoded_parts(raw)


def test_a_carriage_return_in_an_island_takes_the_whole_path():
    encoded = mime.encode_spliced(("a ", " b\n"), ("x\r\ny",))
    assert encoded.qp == mime._qp("a x\r\ny b\n")
    assert encoded.canonical == mime.relaxed_lines(encoded.qp)


def test_a_sent_message_is_spliced_and_verifies(site, tmp_path):
    """The send path uses the splice (the relaxed body comes along) and dkimpy verifies."""
    dkimpy = pytest.importorskip("dkim")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "k.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))  # fmt: skip
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)  # fmt: skip
    import base64

    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    signer = dkim.DkimSigner("s1", "clinic.example", path)
    c = compiled(site, "broadcast", 1, True)
    rendered = c.render(recipient(site, "Zoë \"Z\" <z>", "z@example.com", "https://x", "r"))
    raw, canonical = message(rendered, spliced=True)
    assert canonical is not None
    signed = signer.prepare(raw, canonical).headers() + raw
    assert dkimpy.verify(signed, dnsfunc=lambda name, timeout=5: record)
