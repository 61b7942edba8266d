"""What a message builder decides for one outbox row, and the names builders share.

The builders (one per message kind, listed in :mod:`campaigns.kinds`) return a
:class:`Content`, or raise :class:`SkipMessage` when the row must not be sent.
This module sits below them and below :mod:`campaigns.messages`, which renders
and assembles what they return, so no builder needs to import the assembler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from funnel.outbox import OutboxRow
from funnel.settings import Settings
from subscribers import lifecycle


@dataclass
class Content:
    """What a builder decides for one row."""

    kind: str
    subject: str
    preheader: str = ""
    body_md: str = ""
    ctas: tuple = ()
    extra: dict = field(default_factory=dict)
    recipient: dict = field(default_factory=dict)  # per-recipient values beyond the standard ones
    bulk: bool = True  # bulk mail carries List-Unsubscribe and List-Id
    list_id: str = ""
    attachments: tuple = ()


@dataclass
class Direct:
    """A message to someone who need not be a subscriber (the clinic, an appointment
    requester): the content, the name on the To line and an optional Reply-To."""

    content: Content
    to_name: str = ""
    reply_to: str | None = None


class SkipMessage(Exception):
    """The row must not be sent (e.g. its subscriber was erased); carries the reason."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


#: A message builder: (db, settings, row, subscriber, now) -> Content.
Builder = Callable[[object, Settings, OutboxRow, lifecycle.Subscriber, datetime], Content]
#: A builder for a message to an address, not a subscriber: (db, settings, row, now) -> Direct.
DirectBuilder = Callable[[object, Settings, OutboxRow, datetime], Direct]


def list_id(settings: Settings, stream: str | None) -> str:
    name = (stream or "newsletter").replace(":", ".")
    return f"{settings.site_name} <{name}.{settings.sender_domain}>"
