"""RSS and Atom feeds: import their entries, and watch a feed for new posts.

Reading uses feedparser; a file that declares entities is refused before it is
parsed (:func:`campaigns.wordpress.refuse_entities`).  Each entry's HTML goes
through the same Markdown conversion and cleaning rules as a saved page.

A *watch* (``feed_watches``, migration 0023) is checked by the worker when it
is due (:func:`check_due`).  The first check records what the feed already
holds; after that each new entry (deduplicated on its id, else its link) becomes
a **draft** broadcast, or waits for the weekly digest draft.  Drafts are never
sent until the admin schedules them.  Every check asks with the ETag and
Last-Modified of the last answer, so an unchanged feed costs a 304.
"""

from __future__ import annotations

import datetime as dt
import re
import xml.sax
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import feedparser

from funnel import fetch
from funnel.db import iso, parse_iso, transaction
from funnel.errors import FunnelError, InputError, NotFound
from funnel.settings import Settings

from . import broadcasts
from .articles import CleanResult, Filters
from .htmlpage import fragment_article
from .wordpress import refuse_entities

FEED_ACCEPT = "application/rss+xml, application/atom+xml, application/xml;q=0.9, text/xml;q=0.8"
DIGEST_DAYS = 7
_EVERY = re.compile(r"^(\d+)\s*([mhd])$")


@dataclass
class Entry:
    key: str  # the entry's id, else its link, else its title
    title: str
    link: str | None
    date: dt.date | None
    tags: list[str]
    html: str
    where: str


def parse_feed(data: bytes, label: str) -> list[Entry]:
    """Entries of an RSS or Atom document; InputError (naming ``label``) for anything else."""
    refuse_entities(data[:65536], label)
    parsed = feedparser.parse(data, sanitize_html=True, resolve_relative_uris=True)
    why = parsed.get("bozo_exception")
    if isinstance(why, xml.sax.SAXParseException):
        raise InputError(f"{label}: not an RSS or Atom feed (not well-formed XML: "
                         f"line {why.getLineNumber()}: {why.getMessage()})")
    if not parsed.get("version"):
        raise InputError(f"{label}: not an RSS or Atom feed")
    entries = []
    for n, e in enumerate(parsed.entries, 1):
        title = " ".join(str(e.get("title", "")).split())
        link = e.get("link")
        stamp = e.get("published_parsed") or e.get("updated_parsed")
        content = e.get("content") or []
        body = content[0].get("value", "") if content else e.get("summary", "")
        entries.append(
            Entry(
                key=str(e.get("id") or link or title),
                title=title,
                link=link,
                date=dt.date(*stamp[:3]) if stamp else None,
                tags=[t.get("term") for t in e.get("tags", []) if t.get("term")],
                html=body,
                where=f"{label}: entry {n} ({title!r})" if title else f"{label}: entry {n}",
            )
        )
    return entries


def entry_article(entry: Entry) -> CleanResult:
    if not entry.title:
        raise InputError(f"{entry.where}: the entry has no title")
    return fragment_article(
        entry.html,
        title=entry.title,
        source=entry.link or entry.where.split(": ", 1)[0],
        label=entry.where,
        base=entry.link,
        date=entry.date,
        categories=entry.tags,
        tags=entry.tags,
    )


def read_feed(data: bytes, filters: Filters, label: str) -> list[CleanResult]:
    out = []
    for entry in parse_feed(data, label):
        slug_hint = (entry.link or "").rstrip("/").rsplit("/", 1)[-1]
        if filters.accepts(slug=slug_hint, date=entry.date, categories=entry.tags, tags=entry.tags):
            out.append(entry_article(entry))
    return out


def fetch_feed(url: str, *, allow_private: bool = False, etag: str | None = None,
               last_modified: str | None = None) -> fetch.Response:
    return fetch.get(url, etag=etag, last_modified=last_modified, allow_private=allow_private,
                     accept=FEED_ACCEPT)


# ----------------------------------------------------------------- watches
def parse_every(text: str) -> int:
    """"30m", "1h", "1d" to seconds (at least 15 minutes)."""
    m = _EVERY.match(text.strip().lower())
    if not m:
        raise InputError(f"--every: {text!r} is not understood; use minutes, hours or days "
                         f"such as 30m, 1h or 1d")
    seconds = int(m.group(1)) * {"m": 60, "h": 3600, "d": 86400}[m.group(2)]
    if seconds < 900:
        raise InputError(f"--every: {text!r} is too often; check a feed at most every 15m")
    return seconds


@dataclass
class Watch:
    id: int
    url: str
    every_seconds: int
    digest: str
    allow_private: bool
    next_check_at: datetime
    last_checked_at: datetime | None
    last_error: str | None
    seen: int = 0
    drafts: int = 0


def add_watch(db, url: str, now: datetime, *, every: str = "1h", digest: str = "none",
              allow_private: bool = False) -> Watch:
    """Store a watch, due at once; the URL must be http(s) and is checked on each fetch."""
    if digest not in ("none", "weekly"):
        raise InputError(f"--digest: {digest!r} is not one of none, weekly")
    fetch.check_url(url, allow_private=allow_private)
    seconds = parse_every(every)
    with transaction(db):
        if db.execute("SELECT 1 FROM feed_watches WHERE url = ?", (url,)).fetchone():
            raise InputError(f"URL: {url} is already watched (see `funnel feed list`)")
        db.execute(
            "INSERT INTO feed_watches (url, every_seconds, digest, allow_private, next_check_at, "
            "digest_due_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (url, seconds, digest, int(allow_private), iso(now),
             iso(now + timedelta(days=DIGEST_DAYS)) if digest == "weekly" else None, iso(now)),
        )
    return next(w for w in list_watches(db) if w.url == url)


def list_watches(db) -> list[Watch]:
    rows = db.execute(
        "SELECT w.id, w.url, w.every_seconds, w.digest, w.allow_private, w.next_check_at, "
        "w.last_checked_at, w.last_error, "
        "(SELECT COUNT(*) FROM feed_entries e WHERE e.watch_id = w.id), "
        "(SELECT COUNT(DISTINCT campaign_id) FROM feed_entries e WHERE e.watch_id = w.id) "
        "FROM feed_watches w ORDER BY w.id"
    ).fetchall()
    return [
        Watch(r[0], r[1], r[2], r[3], bool(r[4]), parse_iso(r[5]), parse_iso(r[6]), r[7], r[8], r[9])
        for r in rows
    ]


def remove_watch(db, ref: str) -> str:
    """Remove a watch by id or URL (its seen entries go too; drafts stay)."""
    with transaction(db):
        row = db.execute(
            "SELECT id, url FROM feed_watches WHERE url = ? OR CAST(id AS TEXT) = ?", (ref, ref)
        ).fetchone()
        if row is None:
            raise NotFound(f"{ref}: no such feed watch (see `funnel feed list`)")
        db.execute("DELETE FROM feed_entries WHERE watch_id = ?", (row[0],))
        db.execute("DELETE FROM feed_watches WHERE id = ?", (row[0],))
    return row[1]


@dataclass
class CheckReport:
    checked: int = 0
    not_modified: int = 0
    new_entries: int = 0
    drafts: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _draft(db, settings: Settings, now: datetime, items: list[tuple[str, str | None, str]],
           subject: str) -> int:
    parts = []
    for title, link, body_md in items:
        more = f"[Read it on the website]({link})" if link else ""
        text = "\n\n".join(x for x in (body_md, more) if x)
        parts.append(f"## {title}\n\n{text}" if len(items) > 1 else text)
    return broadcasts.create(db, settings, now, subject=subject, body_md="\n\n".join(parts))


def _entry_body(entry: Entry, report: CheckReport) -> str | None:
    """The entry's cleaned Markdown ("" when only its link can be offered); None when no
    draft can be made from it (no title, or neither text nor link), reported as a problem."""
    if not entry.title:
        report.problems.append(f"{entry.where}: the entry has no title, so no draft was made")
        return None
    try:
        return entry_article(entry).article.body_md
    except InputError as exc:
        if entry.link:
            return ""
        report.problems.append(f"{exc}; no draft was made")
        return None


def _check_one(db, settings: Settings, w: tuple, now: datetime, report: CheckReport) -> None:
    wid, url, _every, digest, allow_private, etag, last_modified, synced, _due = w
    resp = fetch_feed(url, allow_private=bool(allow_private), etag=etag,
                      last_modified=last_modified)
    with transaction(db):
        db.execute(
            "UPDATE feed_watches SET last_checked_at = ?, last_error = NULL, "
            "etag = COALESCE(?, etag), last_modified = COALESCE(?, last_modified) WHERE id = ?",
            (iso(now), resp.etag, resp.last_modified, wid),
        )
        if resp.not_modified:
            report.not_modified += 1
            return
        baseline = synced is None
        db.execute("UPDATE feed_watches SET synced_at = ? WHERE id = ?", (iso(now), wid))
        for entry in parse_feed(resp.body, url):
            if db.execute("SELECT 1 FROM feed_entries WHERE watch_id = ? AND entry_key = ?",
                          (wid, entry.key)).fetchone():
                continue
            body_md = "" if baseline else _entry_body(entry, report)
            campaign = None
            if body_md is None:  # nothing to draft from; noted so it is not retried
                baseline, body_md = True, ""
            elif not baseline and digest == "none":
                campaign = _draft(db, settings, now, [(entry.title, entry.link, body_md)],
                                  entry.title)
                report.drafts.append(campaign)
            db.execute(
                "INSERT INTO feed_entries (watch_id, entry_key, title, link, body_md, baseline, "
                "campaign_id, seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (wid, entry.key, entry.title, entry.link, body_md, int(baseline), campaign,
                 iso(now)),
            )
            report.new_entries += 0 if baseline else 1


def _digest(db, settings: Settings, wid: int, url: str, now: datetime, report: CheckReport):
    with transaction(db):
        rows = db.execute(
            "SELECT id, title, link, body_md FROM feed_entries WHERE watch_id = ? AND baseline = 0 "
            "AND campaign_id IS NULL ORDER BY id", (wid,)
        ).fetchall()
        if rows:
            subject = f"This week: {rows[0][1]}" + (f" and {len(rows) - 1} more" if len(rows) > 1 else "")
            campaign = _draft(db, settings, now, [(r[1], r[2], r[3]) for r in rows], subject)
            db.execute(
                f"UPDATE feed_entries SET campaign_id = ? WHERE id IN ({','.join('?' * len(rows))})",
                (campaign, *[r[0] for r in rows]),
            )
            report.drafts.append(campaign)
        db.execute("UPDATE feed_watches SET digest_due_at = ? WHERE id = ?",
                   (iso(now + timedelta(days=DIGEST_DAYS)), wid))


def check_due(db, settings: Settings, now: datetime) -> CheckReport:
    """Check every watch that is due; a failing feed is reported and retried next time."""
    report = CheckReport()
    due = db.execute(
        "SELECT id, url, every_seconds, digest, allow_private, etag, last_modified, "
        "synced_at, digest_due_at FROM feed_watches WHERE next_check_at <= ? ORDER BY id",
        (iso(now),),
    ).fetchall()
    for w in due:
        report.checked += 1
        try:
            _check_one(db, settings, w, now, report)
        except FunnelError as exc:
            report.problems.append(str(exc))
            with transaction(db):
                db.execute("UPDATE feed_watches SET last_checked_at = ?, last_error = ? WHERE id = ?",
                           (iso(now), str(exc), w[0]))
        with transaction(db):
            db.execute("UPDATE feed_watches SET next_check_at = ? WHERE id = ?",
                       (iso(now + timedelta(seconds=w[2])), w[0]))
        if w[3] == "weekly" and w[8] and parse_iso(w[8]) <= now:
            _digest(db, settings, w[0], w[1], now, report)
    return report
