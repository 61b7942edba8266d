"""One signed HTTP POST: the appointment webhook's transport.

The only code besides ``campaigns/smtp.py`` that talks to the network.  The
body is signed with HMAC-SHA256 and the signature sent as
``X-Funnel-Signature: sha256=<hex>``, GitHub-style, with the attempt time in
``X-Funnel-Timestamp`` (also inside the signed body, so a receiver can refuse
old replays) and the delivery id in ``X-Funnel-Delivery`` (the same on every
retry, so a receiver can drop duplicates).  What to send and when to retry is
:mod:`campaigns.appointments`' business; this module only signs and posts.
"""

from __future__ import annotations

import hashlib
import hmac
import urllib.error
import urllib.request
from dataclasses import dataclass

from funnel.settings import Settings, redact

TIMEOUT_SECONDS = 5.0
USER_AGENT = "funnel-webhook/1"


def signing_secret(settings: Settings) -> str:
    """``appointment_webhook_secret``, or a secret derived from the first secret key."""
    if settings.appointment_webhook_secret:
        return settings.appointment_webhook_secret
    if not settings.secret_keys:
        return ""
    return hmac.new(
        settings.secret_keys[0].encode("utf-8"), b"funnel.appointment-webhook.v1", hashlib.sha256
    ).hexdigest()


def signature(secret: str, body: bytes) -> str:
    """The ``X-Funnel-Signature`` value for ``body``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class PostResult:
    ok: bool
    status: int | None  # the HTTP status, None when no answer came
    error: str  # "" when ok


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not a delivery: the endpoint must take the POST itself."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def post(url: str, body: bytes, headers: dict[str, str], timeout: float | None = None) -> PostResult:
    """POST ``body`` as JSON; ok only for a 2xx answer.  Never raises for network trouble."""
    timeout = TIMEOUT_SECONDS if timeout is None else timeout
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers},
    )
    try:
        with _OPENER.open(request, timeout=timeout) as response:  # http(s) only: settings check it
            response.read(65536)
            status = response.status
    except urllib.error.HTTPError as exc:
        return PostResult(False, exc.code, f"HTTP {exc.code} {exc.reason}"[:300])
    except TimeoutError:
        return PostResult(False, None, f"no answer within {timeout:g} s")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            return PostResult(False, None, f"no answer within {timeout:g} s")
        return PostResult(False, None, redact(f"cannot connect: {reason}")[:300])
    if 200 <= status < 300:
        return PostResult(True, status, "")
    return PostResult(False, status, f"HTTP {status}")


__all__ = ["PostResult", "TIMEOUT_SECONDS", "post", "signature", "signing_secret"]
