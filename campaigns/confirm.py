"""The builder of the double opt-in confirmation email (kind ``confirm``)."""

from __future__ import annotations

from datetime import datetime

from funnel.outbox import OutboxRow
from funnel.settings import Settings
from subscribers import lifecycle, tokens

from . import render
from .content import Content, SkipMessage


def build_confirm(db, settings: Settings, row: OutboxRow, sub: lifecycle.Subscriber, now: datetime) -> Content:
    if sub.status not in ("pending", "unsubscribed") or not sub.confirm_nonce:
        raise SkipMessage("cancelled", f"no confirmation needed: the subscriber is {sub.status}")
    token = tokens.confirm_token(settings, sub.id, sub.confirm_nonce, now)
    return Content(
        kind="confirm",
        subject=f"Please confirm your subscription to {settings.site_name}",
        preheader="One click and the weekly back-care series is on its way.",
        bulk=False,
        extra={
            "reason": render.footer_reason("signup_form", settings.site_name)
        },
        recipient={"confirm_url": settings.url(f"/confirm/{token}")},
    )
