"""The quoted-printable fast path for long lines (campaigns/mime.py ``_qp_long``).

MJML writes whole tables on one line, with the recipient's links inside, so
most of a message's body is in a few lines of kilobytes.  Those skip b2a_qp;
here their encoding is decoded by the standard library and must give back the
text exactly, with every line at most 76 characters and no "From " opening a
line; the whole message must still match the stdlib composer.
"""

from __future__ import annotations

import binascii
import quopri

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_mime import assert_same_as_stdlib, base_kwargs

from campaigns import mime

# Long lines made of the pieces that matter: "=" near every cut, escapes for
# non-ASCII, blanks at the end, "From " at the start, tags and URLs.
PIECES = st.sampled_from(
    ["=", "==", " ", "From ", "é", "·", "🙂", "—", "<td>", "><", 'href="https://x.example/?a=1&b=2"',
     "x", "yz", ".", "\t", "\x0b", "\u00a0", "a" * 70]
)  # fmt: skip
LONG_LINE = st.lists(PIECES, min_size=20, max_size=200).map("".join).filter(lambda s: len(s) > 76)


def decoded(encoded: bytes) -> str:
    return quopri.decodestring(encoded).decode("utf-8")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(line=LONG_LINE)
@example(line="=" * 200)
@example(line="From " + "x" * 100 + " ")
@example(line="a" * 74 + "=" + "b" * 10)
@example(line="a" * 73 + "é" + "b" * 10)
@example(line="背中の痛み " * 30)  # many non-ASCII bytes: b2a_qp's path
@example(line="x" * 80 + "\x00\x7f\t y")  # control characters: b2a_qp's path
def test_a_long_line_decodes_to_itself_in_short_lines(line):
    body = mime._qp(line)
    assert body.endswith(b"\r\n")
    lines = body[:-2].split(b"\r\n")
    assert max(len(x) for x in lines) <= 76
    assert not any(x.startswith(b"From ") for x in lines[:1])
    assert all(not x.endswith((b" ", b"\t")) for x in lines)
    assert decoded(body) == binascii.a2b_qp(body).decode("utf-8") == line + "\r\n"
    assert decoded(mime._qp_long(line)) == line  # also when b2a_qp took it (controls, tabs)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=LONG_LINE, html=LONG_LINE)
def test_messages_with_long_lines_match_the_stdlib(text, html):
    assert_same_as_stdlib(**base_kwargs(text=text + "\nshort\n" + text, html=html))
