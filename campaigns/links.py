"""Click tracking links: each link of a bulk email goes through ``/c/TOKEN``.

Rewriting happens once per compiled content (:func:`track`, called by
:mod:`campaigns.render` on the stage-2 sources), never per recipient: every
``href`` of the HTML and every http(s) address of the text part becomes
``{{ click_url }}N``, where N is the link's index in the content's own list of
links (:data:`Tracked.links`) and ``click_url`` is the one per-recipient value
``{base_url}/c/<signed row id>.`` (:func:`click_prefix`).  So a message costs
one signature, however many links it has.

A link is either a fixed address (``("u", "https://...")``), the same for
everyone who gets this content, or a per-recipient value (``("r",
"register_url")``) whose address the sender keeps with the message's view
(campaigns/views.py).  The footer's unsubscribe, preferences and
view-in-browser links are never rewritten, nor is ``List-Unsubscribe``.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from datetime import datetime

from funnel.settings import Settings
from subscribers import tokens

#: Kinds whose links are tracked: bulk mail, never confirmations or other
#: transactional messages.
TRACKED_KINDS = frozenset({"series", "broadcast", "webinar_invite", "webinar_reminder",
                           "webinar_followup"})
#: Per-recipient links left alone: the footer's.
FOOTER_KEYS = frozenset({"unsubscribe_url", "preferences_url", "view_url"})
#: The one recipient value a tracked email adds.
CLICK_KEY = "click_url"
#: ... and, with ``track_opens``, the address of its 1x1 image.
OPEN_KEY = "open_url"
_PIXEL = ('<img src="{{ open_url }}" width="1" height="1" alt="" '
          'style="display:block;width:1px;height:1px;border:0;" />')

_HREF = re.compile(r'href="([^"]*)"')
_VALUE = re.compile(r"\{\{ (\w+) \}\}")
_TEXT_LINK = re.compile(r"\{\{ (\w+_url) \}\}|https?://[^\s<>()\[\]\"'{}]+")
_TRAILING = ".,;:!?"


@dataclass(frozen=True)
class Tracked:
    html: str
    text: str
    links: tuple[tuple[str, str], ...]


def track(html_source: str, text_source: str) -> Tracked:
    """The stage-2 sources with their links rewritten, and the list of links."""
    links: list[tuple[str, str]] = []
    index: dict[tuple[str, str], int] = {}

    def number(spec: tuple[str, str]) -> str:
        i = index.get(spec)
        if i is None:
            i = index[spec] = len(links)
            links.append(spec)
        return "{{ " + CLICK_KEY + " }}" + str(i)

    def href(m: re.Match) -> str:
        value = m.group(1)
        key = _VALUE.fullmatch(value)
        if key:
            if key.group(1) in FOOTER_KEYS:
                return m.group(0)
            return f'href="{number(("r", key.group(1)))}"'
        if value.startswith(("http://", "https://")) and "{" not in value:
            return f'href="{number(("u", html.unescape(value)))}"'
        return m.group(0)

    def text_link(m: re.Match) -> str:
        if m.group(1):
            if m.group(1) in FOOTER_KEYS:
                return m.group(0)
            return number(("r", m.group(1)))
        url = m.group(0)
        stripped = url.rstrip(_TRAILING)
        return number(("u", stripped)) + url[len(stripped):]

    new_html = _HREF.sub(href, html_source)
    new_text = _TEXT_LINK.sub(text_link, text_source)
    return Tracked(new_html, new_text, tuple(links))


def with_pixel(html_source: str) -> str:
    """The HTML with the opens image as the last thing in its body."""
    at = html_source.rfind("</body>")
    return html_source + _PIXEL if at < 0 else html_source[:at] + _PIXEL + html_source[at:]


def is_tracked(settings: Settings, kind: str) -> bool:
    return settings.click_tracking and kind in TRACKED_KINDS


def has_pixel(settings: Settings, kind: str) -> bool:
    return settings.track_opens and kind in TRACKED_KINDS


def recipient_values(settings: Settings, row_id: int, now: datetime, *, track: bool,
                     pixel: bool) -> dict[str, str]:
    """``click_url`` (``{base_url}/c/<token>.``, the link index follows the dot) and/or
    ``open_url`` (``{base_url}/px/<token>``): one signature for both."""
    token = tokens.make_token(settings, "click", {"r": row_id}, now)
    out = {}
    if track:
        out[CLICK_KEY] = settings.url(f"/c/{token}.")
    if pixel:
        out[OPEN_KEY] = settings.url(f"/px/{token}")
    return out


def split_token(value: str) -> tuple[str, int] | None:
    """``<token>.<index>`` → (token, index); None when it is not that shape."""
    token, dot, index = value.rpartition(".")
    if not dot or not token or not index.isdigit() or len(index) > 4:
        return None
    return token, int(index)
