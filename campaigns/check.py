"""``funnel check``: every problem in the configuration and content, one line each.

:func:`problems` returns a list of sentences, each naming the setting, file or
webinar at fault.  The CLI prints them (``funnel check``) and runs the same
function before any command that sends or queues mail outside dev mode (the
preflight), so production never starts with a placeholder sender, a footer
with an example address, links to loopback or a CTA that has nowhere to go.

What is checked (dev mode, ``FUNNEL_DEV=1``, exempts only what dev mode needs:
loopback and plain-http base URLs and the built-in secret key):

* From address, postal address, base URL, CTA URLs and upcoming webinars'
  join URLs left at a placeholder or example value: RFC 2606/6761 reserved
  names (``*.example``, ``*.test``, ``*.invalid``, ``*.localhost``,
  ``example.com/.net/.org``) and the shipped "1 Example Street";
* a base URL on loopback or plain ``http://`` outside dev mode, and
  ``trusted_proxies`` > 0 while the base URL is on loopback;
* every series step in the content folders compiled as a send would compile
  it: an unknown CTA kind, a CTA whose URL setting is empty, a template error;
* each broadcast not yet finished (scheduled, sending, paused), compiled the same way;
* an upcoming webinar whose follow-up offer has no URL, and a bundled webinar
  (``content/webinars/*.toml``, loaded into the database) whose date has passed;
* no secret key (outside dev mode); a database that cannot be written;
* each SMTP relay refusing TCP connections (skipped with ``network=False``);
* messages held in the outbox because of a configuration error.

:func:`warnings` lists what needs the admin's attention but must not stop
sending (``funnel check`` prints it; the preflight ignores it): no
``clinic_email`` (appointment requests then go to the From address) and
appointment webhooks given up after 24 h of retries.
"""

from __future__ import annotations

import ipaddress
import os
import sqlite3
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from funnel.db import connect
from funnel.errors import DatabaseError, FunnelError
from funnel.settings import FIELD_TO_ENV, Settings

#: RFC 2606 and RFC 6761 reserved top-level names and second-level domains.
RESERVED_TLDS = ("example", "test", "invalid", "localhost")
RESERVED_DOMAINS = ("example.com", "example.net", "example.org")
#: The shipped example postal address (settings.Settings.postal_address).
EXAMPLE_STREET = "example street"


def _env(field: str) -> str:
    return FIELD_TO_ENV.get(field, field)


def reserved_name(host: str) -> str | None:
    """The reserved (example) name ``host`` falls under, or None for a real name."""
    host = host.lower().rstrip(".")
    labels = host.split(".")
    if labels[-1] in RESERVED_TLDS:
        return host if len(labels) <= 2 else ".".join(labels[-2:])
    for domain in RESERVED_DOMAINS:
        if host == domain or host.endswith("." + domain):
            return domain
    return None


def is_loopback(host: str) -> bool:
    host = host.lower().strip("[]").rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback or ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _host(url: str) -> str:
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def _url_problems(name: str, url: str, settings: Settings, *, loopback_ok: bool) -> list[str]:
    host = _host(url)
    out = []
    if host and is_loopback(host):
        if not loopback_ok:
            out.append(
                f"{name}: {url!r} is on loopback ({host}): readers cannot reach it; "
                "set the public URL"
            )
        return out
    reserved = reserved_name(host) if host else None
    if reserved:
        out.append(
            f"{name}: {url!r} is a placeholder ({reserved} is reserved for examples); "
            "set the real URL"
        )
    return out


# ----------------------------------------------------------------- settings
def settings_problems(settings: Settings) -> list[str]:
    """Placeholders and unsafe values among the settings themselves (no I/O)."""
    s = settings
    out: list[str] = []
    domain = s.sender_domain
    reserved = reserved_name(domain)
    if reserved:
        out.append(
            f"FUNNEL_FROM: {s.from_addr!r} is a placeholder ({reserved} is reserved for "
            "examples); set the address the clinic sends from"
        )
    elif is_loopback(domain):
        out.append(f"FUNNEL_FROM: {s.from_addr!r} is on a loopback domain; set a real sender domain")
    if s.reply_to and "@" in s.reply_to and reserved_name(s.reply_to.rpartition("@")[2]):
        out.append(f"FUNNEL_REPLY_TO: {s.reply_to!r} is a placeholder; set a real address or leave it empty")
    address = s.postal_address
    if EXAMPLE_STREET in address.lower() or any(
        reserved_name(w.strip(".,;()")) for w in address.split() if "." in w
    ):
        out.append(
            f"FUNNEL_POSTAL_ADDRESS: {address!r} is the example address; set the clinic's "
            "postal address (every bulk email's footer shows it)"
        )
    out += _url_problems("FUNNEL_BASE_URL", s.base_url, s, loopback_ok=s.dev)
    if not s.dev and s.base_url.lower().startswith("http://"):
        out.append(
            f"FUNNEL_BASE_URL: {s.base_url!r} is plain http://; use https:// outside dev mode "
            "(links in emails carry signed tokens)"
        )
    if s.trusted_proxies > 0 and is_loopback(_host(s.base_url)):
        out.append(
            f"FUNNEL_TRUSTED_PROXIES: {s.trusted_proxies} proxies are trusted while "
            f"FUNNEL_BASE_URL {s.base_url!r} is on loopback; set the public https:// URL the "
            "proxy serves, or trusted_proxies = 0"
        )
    for field in ("appointment_url", "programme_url"):
        value = getattr(s, field)
        if value and not s.dev:
            out += _url_problems(_env(field), value, s, loopback_ok=False)
    if not s.secret_keys and not s.dev:
        out.append(
            "FUNNEL_SECRET_KEYS: no secret key is set; generate one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    return out


# ----------------------------------------------------------------- content
def content_problems(settings: Settings) -> list[str]:
    """Each series step compiled exactly as a send compiles it."""
    from subscribers.streams import series_roots

    from .render import compile_email
    from .series import load_series

    out: list[str] = []
    seen: set[str] = set()
    for root in series_roots(settings.content_paths):
        if not root.is_dir():
            continue
        for toml in sorted(root.glob("*/series.toml")):
            slug = toml.parent.name
            if slug in seen:  # the admin's folder hides the bundled one of the same name
                continue
            seen.add(slug)
            try:
                series = load_series(toml.parent)
            except FunnelError as exc:
                out.append(str(exc))
                continue
            for step in series.steps:
                try:
                    compile_email(
                        settings, "series", subject=step.subject, preheader=step.preheader,
                        body_md=step.body_md, ctas=step.ctas, strict=True,
                    )  # fmt: skip
                except FunnelError as exc:
                    out.append(f"{step.path}: {exc}")
    return out


# ----------------------------------------------------------------- database
def database_problems(settings: Settings) -> list[str]:
    """Can the database be written?  Nothing is created or changed."""
    path = Path(settings.db)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        return [f"FUNNEL_DB: {path} is a folder, not a database file"]
    if not path.exists():
        if not folder.is_dir():
            return [f"FUNNEL_DB: the folder {folder} does not exist; create it, then run `funnel init`"]
        if not os.access(folder, os.W_OK):
            return [f"FUNNEL_DB: the folder {folder} is not writable, so {path.name} cannot be created"]
        return []
    if not os.access(path, os.W_OK) or not os.access(folder, os.W_OK):
        what = path if not os.access(path, os.W_OK) else f"the folder {folder}"
        return [f"FUNNEL_DB: {what} is not writable (SQLite needs the file and its folder)"]
    try:  # a read-only file system or mount
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=0.5)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
        finally:
            conn.close()
    except sqlite3.Error as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return []  # another writer holds it now: passing, and the command says so
        return [f"FUNNEL_DB: {path} cannot be written ({exc})"]
    return []


def _tables(db) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def stored_problems(db, settings: Settings, now: datetime) -> list[str]:
    """Webinars and held messages in the database."""
    from .webinars import OFFERS, SELF_HOSTED_OFFERS, list_webinars, webinar_files

    tables = _tables(db)
    out: list[str] = []
    if "webinars" in tables:
        bundled = {p.stem: p for p in webinar_files(settings)}
        for w in list_webinars(db):
            if w.status == "cancelled":
                continue
            if w.ends_at > now:
                for line in _url_problems(f"webinar {w.slug}: join URL", w.join_url, settings,
                                          loopback_ok=settings.dev):
                    out.append(line + f" with `funnel webinar edit {w.slug} --join-url URL`")
                setting = OFFERS.get(w.offer, ("", ""))[0]
                if setting and not getattr(settings, setting) and w.offer not in SELF_HOSTED_OFFERS:
                    out.append(
                        f"webinar {w.slug}: the follow-up offer {w.offer!r} has no URL; "
                        f"set {_env(setting)}"
                    )
            elif w.slug in bundled and w.status == "scheduled":
                local = w.starts_at.astimezone(w.zone)
                out.append(
                    f"{bundled[w.slug]}: webinar {w.slug} was loaded with the date "
                    f"{local:%Y-%m-%d %H:%M} ({w.timezone}), which has passed; move it with "
                    f"`funnel webinar edit {w.slug} --start \"YYYY-MM-DD HH:MM\"`"
                )
    if "campaigns" in tables:
        from .broadcasts import get
        from .render import compile_email

        for (cid,) in db.execute(
            "SELECT id FROM campaigns WHERE status IN ('scheduled', 'sending', 'paused') ORDER BY id"
        ).fetchall():
            c = get(db, cid)
            try:
                compile_email(
                    settings, "broadcast", subject=c.subject, preheader=c.preheader,
                    body_md=c.body_md, ctas=c.ctas,
                )  # fmt: skip
            except FunnelError as exc:
                out.append(f"campaign {cid}: {exc}")
    if "outbox" in tables and "held_config" in {
        r[1] for r in db.execute("PRAGMA table_info(outbox)")
    }:
        for reason, n in db.execute(
            "SELECT last_error, COUNT(*) FROM outbox WHERE status = 'queued' AND held_config "
            "IS NOT NULL GROUP BY last_error ORDER BY COUNT(*) DESC, last_error"
        ):
            out.append(f"{n} message(s) held: {reason}")
    return out


# ----------------------------------------------------------------- warnings
def warnings(settings: Settings, now: datetime) -> list[str]:
    """Lines for the admin that do not block sending (see the module doc)."""
    out: list[str] = []
    if not settings.clinic_email:
        out.append(
            f"FUNNEL_CLINIC_EMAIL: not set, so appointment requests are emailed to the From "
            f"address {settings.from_addr!r}; set the address the clinic reads"
        )
    path = Path(settings.db)
    if not path.is_file():
        return out
    try:
        db = connect(settings.db, readonly_ok=True)
    except DatabaseError:
        return out  # problems() reports the database
    try:
        if "appointment_webhooks" in _tables(db):
            from .appointments import failed_webhooks

            for wid, rid, error in failed_webhooks(db):
                out.append(
                    f"FUNNEL_APPOINTMENT_WEBHOOK_URL: the webhook for appointment {rid} (delivery "
                    f"{wid}) failed for 24 h and was given up ({error}); the request itself is "
                    f"kept: `funnel appointments show {rid}`"
                )
    finally:
        db.close()
    return out


# ----------------------------------------------------------------- network
def relay_problems(settings: Settings, timeout: float = 3.0) -> list[str]:
    from .smtp import probe

    out = []
    for relay in settings.relays:
        why = probe(relay, timeout=min(timeout, relay.timeout))
        if why:
            out.append(
                f"FUNNEL_SMTP_URL: the relay {relay.label} refuses connections ({why}); "
                "start it or fix the URL"
            )
    return out


# ----------------------------------------------------------------- all
def problems(settings: Settings, now: datetime, *, network: bool = True) -> list[str]:
    """Every problem found, one sentence each; an empty list means ready to send."""
    from .course import missing_course

    out = settings_problems(settings)
    if (course := missing_course(settings)) is not None:
        out.append(course)
    out += content_problems(settings)
    db_lines = database_problems(settings)
    out += db_lines
    if not db_lines and Path(settings.db).is_file():
        try:
            db = connect(settings.db, readonly_ok=True)
        except DatabaseError as exc:
            out.append(f"FUNNEL_DB: {exc}")
        else:
            try:
                out += stored_problems(db, settings, now)
            finally:
                db.close()
    if network:
        out += relay_problems(settings)
    return out


__all__ = [
    "content_problems",
    "database_problems",
    "is_loopback",
    "problems",
    "relay_problems",
    "reserved_name",
    "settings_problems",
    "stored_problems",
    "warnings",
]
