"""Clicks on tracked links (``/c/TOKEN.N``) and the attribution they carry.

Privacy first: a click row holds the message (outbox row), the link, the
moment and a verdict, never an address, IP or user agent.  Reports use
aggregates only (campaigns/report.py).

What counts
-----------
Only the first *human* click per message and link counts (``human``; later
ones are ``repeat``).  Link scanners are counted apart (``scanner``, with the
reason), so the filter itself can be judged: HEAD requests, known scanner
user agents, a click within a few seconds of delivery (the outbox row's
``sent_at``), and every link of one message clicked within a second (then the
clicks of that second are all re-marked).  The rules' numbers and the user
agents are data: ``campaigns/scanners.toml``.  A filtered click still
redirects: the reader behind a scanner must reach the page.

Refused (NotFound, nothing recorded): a token that does not verify, an index
the message does not have, a message whose view is gone (its reader was
erased), a deleted campaign.  The redirect only ever goes to that message's
own link, so ``/c/`` is no open redirect.

Opens
-----
Only with ``track_opens``: the 1x1 image ``/px/TOKEN`` (:func:`record_open`).
Reported as "opens (unreliable)": images load without the mail being read
(Apple Mail Privacy Protection's proxy loads all of them; such loads are
flagged by a heuristic, a bare ``Mozilla/5.0`` user agent or an address in
Apple's network, neither of which is stored) and are blocked while it is.

Attribution
-----------
A click whose link is on this site (the appointment page or any same-origin
page) gets the ``funnel_attr`` cookie (web/clicks.py), a signed click id;
:func:`attribution` turns it back into what the click came from, for up to
``ATTRIBUTION_DAYS``.
"""

from __future__ import annotations

import ipaddress
import json
import tomllib
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from funnel.db import iso, parse_iso, transaction
from funnel.errors import NotFound, TokenError
from funnel.settings import Settings
from subscribers import tokens

from .links import split_token

ATTRIBUTION_DAYS = 30
COOKIE = "funnel_attr"
RULES_PATH = Path(__file__).with_name("scanners.toml")


@dataclass(frozen=True)
class Rules:
    after_delivery: timedelta
    burst: timedelta
    user_agents: tuple[str, ...]
    apple_user_agents: tuple[str, ...]
    apple_networks: tuple


@lru_cache(maxsize=4)
def rules(path: Path = RULES_PATH) -> Rules:
    """``scanners.toml``, read once."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return Rules(
        timedelta(seconds=float(data["after_delivery_seconds"])),
        timedelta(seconds=float(data["burst_seconds"])),
        tuple(ua.lower() for ua in data["user_agents"]),
        tuple(data["apple_proxy_user_agents"]),
        tuple(ipaddress.ip_network(n) for n in data["apple_proxy_networks"]),
    )


@dataclass(frozen=True)
class Click:
    url: str
    click_id: int
    verdict: str  # human | repeat | scanner
    reason: str | None
    #: the link is a page of this site: the web door sets the attribution cookie
    same_origin: bool


@dataclass(frozen=True)
class _Target:
    row_id: int
    index: int
    url: str
    link: str
    n_links: int
    sent_at: datetime | None


def _row_id(settings: Settings, value: str, now: datetime) -> tuple[int, int]:
    parts = split_token(value)
    if parts is None:
        raise NotFound("click: not a tracked link")
    return _read_row(settings, parts[0], now), parts[1]


def _read_row(settings: Settings, token: str, now: datetime) -> int:
    try:
        payload = tokens.read_token(settings, "click", token, now)
    except TokenError as exc:
        raise NotFound("click: not a tracked link") from exc
    if not isinstance(payload.get("r"), int):
        raise NotFound("click: not a tracked link")
    return payload["r"]


def _target(db, settings: Settings, value: str, now: datetime) -> _Target:
    """The link a token names, or NotFound (see the module docstring)."""
    row_id, index = _row_id(settings, value, now)
    found = db.execute(
        "SELECT o.to_addr, o.sent_at, o.campaign_id, c.id, s.status, v.recipient, l.links "
        "FROM outbox o JOIN views v ON v.outbox_id = o.id "
        "JOIN click_links l ON l.id = v.links_id "
        "LEFT JOIN subscribers s ON s.id = o.subscriber_id "
        "LEFT JOIN campaigns c ON c.id = o.campaign_id WHERE o.id = ?",
        (row_id,),
    ).fetchone()
    if found is None:
        raise NotFound("click: this message has no tracked links")
    to_addr, sent_at, campaign_id, campaign, status, recipient, links = found
    if to_addr is None or status in (None, "erased"):
        raise NotFound("click: the reader of this message was erased")
    if campaign_id is not None and campaign is None:
        raise NotFound("click: the campaign was deleted")
    specs = json.loads(links)
    if index >= len(specs):
        raise NotFound("click: the message has no such link")
    kind, value_ = specs[index]
    if kind == "u":
        url, link = value_, value_
    else:
        url, link = json.loads(recipient).get(value_), "{" + value_ + "}"
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise NotFound("click: the message has no such link")
    return _Target(row_id, index, url, link, len(specs), parse_iso(sent_at))


def destination(db, settings: Settings, value: str, now: datetime) -> str:
    """Where ``/c/VALUE`` leads, recording nothing (NotFound as for a click)."""
    return _target(db, settings, value, now).url


def scanner_reason(r: Rules, *, head: bool, user_agent: str, sent_at: datetime | None,
                   now: datetime) -> str | None:
    """Why this request looks like a scanner's, or None."""
    if head:
        return "head"
    ua = user_agent.lower()
    if not ua.strip() or any(part in ua for part in r.user_agents):
        return "user_agent"
    if sent_at is not None and now - sent_at <= r.after_delivery:
        return "after_delivery"
    return None


def follow(db, settings: Settings, value: str, now: datetime, *, head: bool = False,
           user_agent: str = "") -> Click:
    """Record a click on ``/c/VALUE`` and return where it goes; NotFound when it goes nowhere.

    This GET records an event, which the house rule "a GET never changes
    state" allows only because a click is analytics: it never confirms,
    subscribes, unsubscribes or registers anyone, and nothing reads it as
    consent.
    """
    r = rules()
    with transaction(db):
        t = _target(db, settings, value, now)
        reason = scanner_reason(r, head=head, user_agent=user_agent, sent_at=t.sent_at, now=now)
        verdict = "scanner" if reason else "human"
        if verdict == "human" and db.execute(
            "SELECT 1 FROM clicks WHERE outbox_id = ? AND link_index = ? AND verdict = 'human'",
            (t.row_id, t.index),
        ).fetchone():
            verdict = "repeat"
        click_id = db.execute(
            "INSERT INTO clicks (outbox_id, link_index, link, at, verdict, reason) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (t.row_id, t.index, t.link, iso(now), verdict, reason),
        ).lastrowid
        if t.n_links > 1 and verdict != "scanner" and _burst(db, t, now - r.burst):
            verdict, reason = "scanner", "burst"
    return Click(t.url, click_id, verdict, reason, _same_origin(settings, t.url))


def is_apple_proxy(r: Rules, user_agent: str, ip: str) -> bool:
    """The heuristic for an open by Apple Mail Privacy Protection's proxy (module docstring)."""
    if user_agent.strip() in r.apple_user_agents:
        return True
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in net for net in r.apple_networks)


def record_open(db, settings: Settings, token: str, now: datetime, *, user_agent: str = "",
                ip: str = "") -> bool:
    """Count one load of a message's opens image; NotFound as for a click.

    Analytics only, like a click (see :func:`follow`); returns whether the
    load looks like Apple's proxy.
    """
    row_id = _read_row(settings, token, now)
    apple = is_apple_proxy(rules(), user_agent, ip)
    with transaction(db):
        found = db.execute(
            "SELECT o.to_addr, s.status FROM outbox o JOIN views v ON v.outbox_id = o.id "
            "LEFT JOIN subscribers s ON s.id = o.subscriber_id WHERE o.id = ?",
            (row_id,),
        ).fetchone()
        if found is None or found[0] is None or found[1] in (None, "erased"):
            raise NotFound("open: no such message")
        db.execute("INSERT INTO opens (outbox_id, at, apple) VALUES (?, ?, ?)",
                   (row_id, iso(now), int(apple)))
    return apple


@dataclass(frozen=True)
class CampaignClicks:
    """A broadcast's clicks so far (aggregates only, like every report)."""

    human: int
    scanner: int
    #: (link, human clicks), most clicked first; a personal link shows as {field}
    links: list[tuple[str, int]]


def campaign_clicks(db, campaign_id: int) -> CampaignClicks:
    """Human and scanner clicks on a campaign's messages, and human clicks per link."""
    rows = db.execute(
        "SELECT k.link, SUM(k.verdict = 'human'), SUM(k.verdict = 'scanner') FROM clicks k "
        "JOIN outbox o ON o.id = k.outbox_id WHERE o.campaign_id = ? GROUP BY k.link",
        (campaign_id,),
    ).fetchall()
    links = sorted(((link, human) for link, human, _ in rows if human),
                   key=lambda pair: (-pair[1], pair[0]))
    return CampaignClicks(sum(r[1] for r in rows), sum(r[2] for r in rows), links)


def _burst(db, t: _Target, since: datetime) -> bool:
    """Every link of the message clicked since ``since``: re-mark those clicks as a scanner's."""
    n = db.execute(
        "SELECT COUNT(DISTINCT link_index) FROM clicks WHERE outbox_id = ? AND at >= ?",
        (t.row_id, iso(since)),
    ).fetchone()[0]
    if n < t.n_links:
        return False
    db.execute(
        "UPDATE clicks SET verdict = 'scanner', reason = 'burst' "
        "WHERE outbox_id = ? AND at >= ? AND verdict != 'scanner'",
        (t.row_id, iso(since)),
    )
    return True


def _same_origin(settings: Settings, url: str) -> bool:
    a, b = urlsplit(url), urlsplit(settings.base_url)
    return (a.scheme, a.netloc.lower()) == (b.scheme, b.netloc.lower())


def cookie_value(settings: Settings, click: Click, now: datetime) -> str:
    """The signed ``funnel_attr`` cookie naming this click."""
    return tokens.make_token(settings, "attr", {"c": click.click_id}, now)


def attribution(db, settings: Settings, cookie: str | None, now: datetime) -> dict | None:
    """What the click in a ``funnel_attr`` cookie came from, when it is at most 30 days old.

    Returns ``{attr_click_id, attr_kind, attr_series, attr_step,
    attr_broadcast_id, attr_webinar}`` (None where it does not apply), or
    None for no cookie, a cookie that does not verify, or an older click.
    """
    if not cookie:
        return None
    try:
        payload = tokens.read_token(settings, "attr", cookie, now,
                                    max_age_seconds=ATTRIBUTION_DAYS * 86400)
    except TokenError:
        return None
    click_id = payload.get("c")
    if not isinstance(click_id, int):
        return None
    found = db.execute(
        "SELECT c.at, o.kind, o.ref, o.campaign_id FROM clicks c "
        "JOIN outbox o ON o.id = c.outbox_id WHERE c.id = ?",
        (click_id,),
    ).fetchone()
    if found is None or parse_iso(found[0]) < now - timedelta(days=ATTRIBUTION_DAYS):
        return None
    _, kind, ref, campaign_id = found
    parts = (ref or "").split(":")
    series = parts[1] if parts[0] == "series" and len(parts) > 2 else None
    return {
        "attr_click_id": click_id,
        "attr_kind": kind,
        "attr_series": series,
        "attr_step": ":".join(parts[2:]) if series else None,
        "attr_broadcast_id": campaign_id if kind == "broadcast" else None,
        "attr_webinar": parts[1] if parts[0] == "webinar" and len(parts) > 1 else None,
    }


__all__ = ["ATTRIBUTION_DAYS", "COOKIE", "CampaignClicks", "Click", "attribution", "campaign_clicks", "cookie_value", "destination", "follow", "record_open", "rules"]
