"""The address fast path in optin.clean_email agrees with email-validator."""

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from funnel.errors import InputError
from subscribers.optin import clean_email

ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+/=?^_`{|}~-."
local = st.text(alphabet=ATEXT + '"(),:;<>@[\\] é', min_size=0, max_size=70)
domain = st.one_of(
    st.sampled_from(["example.com", "EXAMPLE.com", "mail.co.uk", "localhost", "a.b", "x.test", "-bad.com",
                     "bad-.com", "münchen.de", "1.2.3.4", "[127.0.0.1]", "exa_mple.com", "com", "", "a..b"]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=0, max_size=30),
)


def reference(addr: str) -> str | None:
    try:
        return validate_email(addr.strip(), check_deliverability=False).normalized
    except EmailNotValidError:
        return None


def ours(addr: str) -> str | None:
    try:
        return clean_email(addr)
    except InputError:
        return None


@settings(max_examples=400, deadline=None)
@given(local=local, domain=domain)
def test_fast_path_agrees_with_email_validator(local, domain):
    addr = f"{local}@{domain}"
    if not addr.strip() or len(addr.strip()) > 254:
        return
    assert ours(addr) == reference(addr)


@pytest.mark.parametrize("addr", ["Ana.Silva+news@Example.COM", "o'brien@mail.co.uk", "x@münchen.de"])
def test_known_addresses(addr):
    assert ours(addr) == reference(addr) is not None
