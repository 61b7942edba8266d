"""Helpers shared by the click-tracking and A/B tests: readers, a sent broadcast, its /c/ links."""

from __future__ import annotations

import re

from campaigns import broadcasts
from campaigns.sender import send_due
from funnel.db import iso, transaction
from subscribers import lifecycle

BODY = (
    "Hello! Read [the stretching guide](https://backinmotion-physio.co.uk/stretch?a=1&b=2) "
    "and [request an appointment](/appointment).\n\n"
    "Also [our walking tips](https://backinmotion-physio.co.uk/walking).\n"
)
CLICK_RE = re.compile(r"https?://[^\s\"'<>)]+/c/[^\s\"'<>)]+")


def add_readers(db, clock, n: int, domain: str = "example.com", start: int = 0) -> list[int]:
    ids = []
    with transaction(db):
        for i in range(start, start + n):
            email = f"r{i}@{domain}"
            sid = db.execute(
                "INSERT INTO subscribers (email, email_hash, name, status, created_at, updated_at) "
                "VALUES (?, ?, 'Reader', 'active', ?, ?)",
                (email, lifecycle.email_hash(email), iso(clock()), iso(clock())),
            ).lastrowid
            db.execute(
                "INSERT INTO subscriptions (subscriber_id, stream, status, updated_at) "
                "VALUES (?, 'broadcasts', 'subscribed', ?)",
                (sid, iso(clock())),
            )
            ids.append(sid)
    return ids


def send_broadcast(db, settings, clock, subject="Stretch with us", body=BODY) -> int:
    cid = broadcasts.create(db, settings, clock(), subject=subject, body_md=body)
    broadcasts.schedule_campaign(db, settings, cid, clock(), send_now=True)
    broadcasts.queue(db, settings, cid, clock())
    send_due(db, settings, clock)
    return cid


def html_links(received) -> list[str]:
    return re.findall(r'href="([^"]+)"', received.part("html"))


def click_links(received) -> list[str]:
    """The distinct /c/ links of a received message, in order (HTML then text)."""
    seen: list[str] = []
    for url in [*html_links(received), *received.links()]:
        url = url.replace("&amp;", "&")
        if "/c/" in url and url not in seen:
            seen.append(url)
    return seen


def path_of(url: str) -> str:
    return "/" + url.split("/", 3)[3]
