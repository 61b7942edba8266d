"""Turn an outbox row into the bytes that go on the wire.

Each row kind has a builder (the table in :mod:`campaigns.kinds`) that
returns the template content for that row (kind, subject, body...) plus the
per-recipient values (:mod:`campaigns.content`); this module then
renders it (MJML compiled once per content, Jinja per recipient), assembles
the MIME message with the fast path, and prepares its DKIM signature when
configured (``Outgoing.wire()`` adds the signature: the sender calls it on its SMTP
thread, and the signature was made meanwhile in the signer's child process, or is made
there and then).

Building is pure apart from reading the database: no network, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING

from funnel.outbox import OutboxRow
from funnel.settings import Settings
from subscribers import lifecycle, tokens

from . import kinds, mime, render
from . import links as tracking
from .content import Content, Direct, SkipMessage, list_id

if TYPE_CHECKING:  # pragma: no cover - campaigns.dkim loads OpenSSL; only senders with a key need it
    from .dkim import Signing


@dataclass(frozen=True)
class Outgoing:
    row_id: int
    envelope_from: str
    recipient: str
    #: The message; when ``signing`` is set, without its DKIM-Signature header(s):
    #: :meth:`wire` adds them.
    data: bytes
    #: What view-in-browser shows for this row once it is sent (campaigns/views.py):
    #: the content with the recipient's first name folded in, and the build time.
    view: Content | None = None
    built_at: datetime | None = None
    #: The links behind this message's /c/ addresses (campaigns/links.py).
    links: tuple = ()
    #: DKIM, prepared but maybe not yet signed (campaigns/dkim.py): :meth:`wire`
    #: takes the signature, which the sender calls on its SMTP thread.
    signing: Signing | None = None

    def wire(self) -> bytes:
        """The bytes to send: the message, signed when a DKIM key is set."""
        return self.data if self.signing is None else self.signing.headers() + self.data


def verp_sender(settings: Settings, row_id: int) -> str:
    """The envelope sender that lets bounces name their row: bounce+ROW-MAC@domain."""
    return tokens.signed_address(settings, "bounce", row_id)


def standard_links(settings: Settings, sub: lifecycle.Subscriber, now: datetime,
                   stream: str | None) -> dict[str, str]:
    """The per-recipient links every email carries."""
    extra = {"st": stream} if stream else {}
    unsub = tokens.subscriber_token(settings, "unsubscribe", sub.id, now, **extra)
    prefs = tokens.subscriber_token(settings, "preferences", sub.id, now)
    return {
        "unsubscribe_url": settings.url(f"/u/{unsub}"),
        "preferences_url": settings.url(f"/p/{prefs}"),
    }


@lru_cache(maxsize=256)
def _compiled(settings: Settings, kind: str, subject: str, preheader: str, body_md: str,
              ctas: tuple, extra: tuple, track: bool = False,
              pixel: bool = False) -> render.CompiledEmail:
    return render.compile_email(
        settings, kind, subject=subject, preheader=preheader, body_md=body_md,
        ctas=[dict(c) for c in ctas], extra=dict(extra), track=track, pixel=pixel,
    )


def _freeze(value):
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def build(db, settings: Settings, row: OutboxRow, now: datetime,
          signer=None) -> Outgoing:
    """Build the wire bytes for one claimed row, or raise SkipMessage."""
    direct = kinds.DIRECT_BUILDERS.get(row.kind)
    if direct is not None and row.to_addr is not None:
        return _build_direct(settings, row, now, direct(db, settings, row, now), signer)
    sub = reader(db, row)
    if sub is None:
        raise SkipMessage("cancelled", "the recipient was erased")
    try:
        make = kinds.BUILDERS[row.kind]
    except KeyError as exc:
        raise SkipMessage("failed", f"no message builder for kind {row.kind!r}") from exc
    content = make(db, settings, row, sub, now)
    links = standard_links(settings, sub, now, row.stream)
    rendered = render_for(settings, content, sub, row, now, links)
    data, canonical = assemble_signable(
        settings, rendered, to_name=sub.name, to_addr=row.to_addr, date=now,
        message_id=row.message_id,
        list_id=content.list_id or (list_id(settings, row.stream) if content.bulk else None),
        unsubscribe_url=links["unsubscribe_url"] if content.bulk else None,
        unsubscribe_mailto=(
            f"mailto:{tokens.signed_address(settings, 'unsubscribe', row.id)}?subject=unsubscribe"
            if content.bulk else None
        ),
        extra_headers=[("X-Funnel-Row", str(row.id))],
        attachments=content.attachments,
    )
    signing = signer.prepare(data, canonical) if signer is not None else None
    # Stored for a test send too: its view link shows the stand-in's email as built.
    view = replace(content, attachments=(), recipient={**content.recipient, "first_name": sub.first_name})
    return Outgoing(row.id, verp_sender(settings, row.id), row.to_addr, data, view, now,
                    rendered.links, signing)


def reader(db, row: OutboxRow) -> lifecycle.Subscriber | None:
    """Whom ``row`` is written to: its subscriber, a stand-in for a test send (an
    address with no subscriber row, kinds.WITHOUT_SUBSCRIBER), or None when the
    recipient was erased."""
    if row.to_addr is None:
        return None
    if row.subscriber_id is not None:
        return lifecycle.current(db, row.subscriber_id)
    if row.kind in kinds.WITHOUT_SUBSCRIBER:
        return lifecycle.stand_in(row.to_addr, str(row.data.get("name") or ""))
    return None


def _build_direct(settings: Settings, row: OutboxRow, now: datetime, direct: Direct,
                  signer) -> Outgoing:
    """A message to an address, not a subscriber: no unsubscribe or preferences link,
    no view in browser; the same sender, footer identity and postal address."""
    content = direct.content
    compiled = _compiled(
        settings, content.kind, content.subject, content.preheader, content.body_md,
        _freeze(list(content.ctas)), _freeze(content.extra),
    )
    rendered = compiled.render({
        "first_name": "", "email": row.to_addr, "unsubscribe_url": "", "preferences_url": "",
        "view_url": "", "reason": content.extra.get("reason", ""), **content.recipient,
    })  # fmt: skip
    data = assemble(
        settings, rendered, to_name=direct.to_name, to_addr=row.to_addr, date=now,
        message_id=row.message_id, list_id=None, unsubscribe_url=None, unsubscribe_mailto=None,
        reply_to=direct.reply_to, extra_headers=[("X-Funnel-Row", str(row.id))],
    )  # fmt: skip
    signing = signer.prepare(data) if signer is not None else None
    return Outgoing(row.id, verp_sender(settings, row.id), row.to_addr, data, signing=signing)


def assemble(settings: Settings, rendered: render.Rendered, *, to_name: str, to_addr: str,
             date: datetime, message_id: str, list_id: str | None,
             unsubscribe_url: str | None, unsubscribe_mailto: str | None,
             extra_headers=(), attachments=(), reply_to: str | None = None) -> bytes:
    """The wire bytes of a rendered email from this site's sender (sends and previews)."""
    return assemble_signable(
        settings, rendered, to_name=to_name, to_addr=to_addr, date=date,
        message_id=message_id, list_id=list_id, unsubscribe_url=unsubscribe_url,
        unsubscribe_mailto=unsubscribe_mailto, extra_headers=extra_headers,
        attachments=attachments, reply_to=reply_to,
    )[0]  # fmt: skip


def _part(text: str, splice: tuple | None) -> str | mime.Encoded:
    """A part's text, or its QP with the static segments encoded once per content."""
    return text if splice is None else mime.encode_spliced(*splice)


def assemble_signable(settings: Settings, rendered: render.Rendered, *, to_name: str,
                      to_addr: str, date: datetime, message_id: str, list_id: str | None,
                      unsubscribe_url: str | None, unsubscribe_mailto: str | None,
                      extra_headers=(), attachments=(),
                      reply_to: str | None = None) -> tuple[bytes, bytes | None]:
    """:func:`assemble`, and the DKIM relaxed body when it came for free
    (mime.compose_signable)."""
    return mime.compose_signable(
        from_name=settings.from_name or settings.site_name,
        from_addr=settings.from_addr,
        to_name=to_name,
        to_addr=to_addr,
        subject=rendered.subject,
        date=date,
        message_id=message_id,
        text=_part(rendered.text, rendered.text_splice),
        html=_part(rendered.html, rendered.html_splice),
        list_id=list_id,
        unsubscribe_url=unsubscribe_url,
        unsubscribe_mailto=unsubscribe_mailto,
        reply_to=reply_to or settings.reply_to or None,
        extra_headers=extra_headers,
        attachments=attachments,
    )


def render_for(settings: Settings, content: Content, sub: lifecycle.Subscriber,
               row: OutboxRow | None, now: datetime,
               links: dict[str, str] | None = None) -> render.Rendered:
    """Render content for one subscriber (also used by view-in-browser).

    Deterministic in ``now``: the same content, subscriber, row and ``now`` sign
    the same tokens, which is how view-in-browser repeats the emailed links.
    """
    track = row is not None and tracking.is_tracked(settings, content.kind)
    pixel = row is not None and tracking.has_pixel(settings, content.kind)
    compiled = _compiled(
        settings, content.kind, content.subject, content.preheader, content.body_md,
        _freeze(list(content.ctas)), _freeze(content.extra), track, pixel,
    )
    view = tokens.subscriber_token(settings, "view", sub.id, now, r=row.id if row else 0)
    recipient = {
        "first_name": sub.first_name,
        "email": sub.email or "",
        "view_url": settings.url(f"/m/{view}"),
        "reason": content.extra.get("reason")
        or render.footer_reason("newsletter", settings.site_name),
        **(links or standard_links(settings, sub, now, row.stream if row else None)),
        **content.recipient,
    }
    if track or pixel:  # one signature for every link (and the image) of the message
        recipient.update(tracking.recipient_values(settings, row.id, now, track=track, pixel=pixel))
    return compiled.render(recipient)
