"""Webinars: creation, invites, registration, reminders, reschedules, follow-ups.

A webinar's mail, in order, for one registrant::

    invite (stream "webinars", to a segment)        -- expires at the start
    confirmation + .ics (METHOD:REQUEST)             -- at registration, expires at the start
    reminders (default 24 h, 1 h, 10 min before)     -- each expires at the start
    update + .ics (same UID, SEQUENCE+1)              -- if it moves
    cancellation + .ics (METHOD:CANCEL)              -- if it is called off
    follow-up: thank-you + offer | replay             -- after the end, per attendance

Everything goes through the outbox (DESIGN rule 4) with a dedupe key, so
repeating a command never queues a message twice.  Builders read the webinar
*when the message is built*, so a queued reminder always carries the current
time and join link, and a follow-up picks its branch from the registrant's
current attendance (imported from the meeting's CSV by
:mod:`campaigns.attendance`).

Consent model
-------------
Registering is consent to *this webinar's* mail only (``consent`` purpose
``webinar:<slug>``).  A new person becomes a ``pending`` contact without a
confirm nonce (``optin.webinar_contact``): no newsletter confirmation, no
series, no broadcasts.  The newsletter is a separate, unticked box that runs
the ordinary double opt-in.  Registrant mail travels on the stream
``webinar:<slug>``; unsubscribing from it (the link in reminders) cancels the
rest of that webinar's mail and nothing else.

Consent only by its owner: an address that unsubscribed, bounced, complained
or was erased is never registered from a form, the CLI or an old invite
link.  It gets one verification email (``webinar_verify``, table
``webinar_verifications``); the owner's POST on its page registers them for
that webinar only, turning on just its stream.  Forms never change a known
person's name or zone, and the email form answers the same "check your inbox"
to everyone: the seat, the waitlist (``webinar_waitlist``) or the
verification is told by email.

Events written: ``invited`` (queued invite), ``registered``, ``waitlisted``,
``registration_cancelled``, ``attended``, ``no_show``, ``clicked_offer``.
"""

from __future__ import annotations

import json
import re
import secrets
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from funnel import outbox
from funnel.db import iso, log_event, parse_iso, transaction
from funnel.errors import FunnelError, InputError, NotFound, TokenError
from funnel.localtime import local_to_utc
from funnel.policy import policy
from funnel.settings import Settings
from funnel.spreadsheet import SafeDictWriter
from funnel.validate import check_header_text, zone_name
from subscribers import lifecycle, optin, tokens

from . import course, ics, mime, render
from .content import Content, SkipMessage
from .frontmatter import toml_line
from .schedule import (
    WHEN_FORMS,
    is_relative,
    is_weekday_form,
    parse_when,
    require_future,
)

OFFERS = {
    "appointment": ("appointment_link", "Book an appointment"),  # our page by default
    "programme": ("programme_url", "Start the 28-day programme"),
}
#: Offers funnel serves itself when their URL setting is empty: the programme
#: offer starts the daily course (campaigns/course.py).
SELF_HOSTED_OFFERS = ("programme",)
DEFAULT_REMINDERS = policy().reminder_offsets  # [webinars] in policy.toml
DEFAULT_DURATION = 60
DEFAULT_FOLLOWUP_DELAY = 120
#: Follow-ups older than this are not worth sending any more.
FOLLOWUP_VALID = timedelta(days=14)
_SLUG_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}\Z")
#: Registrations that hold a seat.
_SEATED = ("registered", "attended", "no_show")
#: Outbox kinds that only make sense before the start.
_BEFORE_START_KINDS = ("webinar_invite", "webinar_confirm", "webinar_reminder", "webinar_update")


# ================================================================= the webinar
@dataclass(frozen=True)
class Webinar:
    id: int
    slug: str
    title: str
    description: str
    starts_at: datetime
    timezone: str
    duration_minutes: int
    join_url: str
    replay_url: str | None
    capacity: int | None
    host_name: str
    offer: str
    reminder_offsets: tuple[int, ...]
    followup_delay_minutes: int
    sequence: int
    status: str
    created_at: str
    updated_at: str

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def ends_at(self) -> datetime:
        return self.starts_at + timedelta(minutes=self.duration_minutes)

    @property
    def ref(self) -> str:
        return f"webinar:{self.slug}"

    @property
    def stream(self) -> str:
        """The stream registrant mail travels on (its own unsubscribe scope)."""
        return f"webinar:{self.slug}"

    @property
    def local_start(self) -> datetime:
        return self.starts_at.astimezone(self.zone)

    def event_info(self) -> ics.EventInfo:
        return ics.EventInfo(
            slug=self.slug,
            title=self.title,
            description=self.description,
            starts_at=self.starts_at,
            timezone=self.timezone,
            duration_minutes=self.duration_minutes,
            join_url=self.join_url,
            sequence=self.sequence,
            cancelled=self.status == "cancelled",
        )


_W_COLUMNS = (
    "id, slug, title, description, starts_at, timezone, duration_minutes, join_url, replay_url, "
    "capacity, host_name, offer, reminder_offsets, followup_delay_minutes, sequence, status, "
    "created_at, updated_at"
)


def _webinar(row: tuple) -> Webinar:
    values = list(row)
    values[4] = parse_iso(values[4])
    values[12] = tuple(json.loads(values[12]))
    return Webinar(*values)


def get_webinar(db, slug: str) -> Webinar:
    row = db.execute(f"SELECT {_W_COLUMNS} FROM webinars WHERE slug = ?", (slug,)).fetchone()
    if row is None:
        raise NotFound(f"webinar {slug!r} does not exist (see `funnel webinar list`)")
    return _webinar(row)


def find_webinar(db, slug: str) -> Webinar | None:
    try:
        return get_webinar(db, slug)
    except NotFound:
        return None


def list_webinars(db) -> list[Webinar]:
    return [
        _webinar(r)
        for r in db.execute(f"SELECT {_W_COLUMNS} FROM webinars ORDER BY starts_at").fetchall()
    ]


def registration_counts(db, webinar: Webinar) -> dict[str, int]:
    rows = db.execute(
        "SELECT status, COUNT(*) FROM registrations WHERE webinar_id = ? GROUP BY status",
        (webinar.id,),
    ).fetchall()
    return dict(rows)


def outbox_counts(db, webinar: Webinar) -> dict[str, dict[str, int]]:
    """``{kind: {status: n}}`` for this webinar's mail."""
    out: dict[str, dict[str, int]] = {}
    for kind, status, n in db.execute(
        "SELECT kind, status, COUNT(*) FROM outbox WHERE ref >= ? AND ref < ? GROUP BY kind, status",
        (webinar.ref + ":", webinar.ref + ";"),
    ).fetchall():
        out.setdefault(kind, {})[status] = n
    return out


# ================================================================= validation
Where = Callable[[str], str]


def _cli_where(key: str) -> str:
    return {
        "start": "--start",
        "timezone": "--tz",
        "join_url": "--join-url",
        "replay_url": "--replay-url",
        "duration_minutes": "--duration",
        "capacity": "--capacity",
        "host_name": "--host",
        "reminder_offsets": "--reminders",
        "followup_delay_minutes": "--followup-delay",
    }.get(key, f"--{key.replace('_', '-')}")


def _text(value: object, key: str, where: Where, *, required: bool, limit: int) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise InputError(f"{where(key)}: expected text, got {value!r}")
    text = value.strip()
    if required and not text:
        raise InputError(f"{where(key)}: must not be empty")
    if len(text) > limit:
        raise InputError(f"{where(key)}: longer than {limit} characters")
    if key == "description":
        if "\x00" in text or "\r" in text:
            raise InputError(f"{where(key)}: contains a line break or control character")
    else:
        # The same check as at send time: a title that reaches a Subject header
        # (or a host name in From) must be sendable, encoded words included.
        check_header_text(text, where(key))
    return text


def _https(value: object, key: str, where: Where, *, required: bool) -> str | None:
    text = _text(value, key, where, required=required, limit=2000)
    if not text:
        return None
    parts = urlsplit(text)
    if parts.scheme != "https" or not parts.netloc or " " in text:
        raise InputError(f"{where(key)}: {text!r} must be an https:// URL")
    return text


def _int(value: object, key: str, where: Where, lo: int, hi: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InputError(f"{where(key)}: expected a whole number of {what}, got {value!r}")
    try:
        number = int(value)
    except ValueError as exc:
        raise InputError(f"{where(key)}: expected a whole number of {what}, got {value!r}") from exc
    if not lo <= number <= hi:
        raise InputError(f"{where(key)}: {number} is out of range ({lo} to {hi} {what})")
    return number


def _zone(value: object, where: Where) -> str:
    return zone_name(_text(value, "timezone", where, required=True, limit=64), where("timezone"))


def _reminders(value: object, where: Where) -> tuple[int, ...]:
    if isinstance(value, str):
        items: list = [p.strip() for p in value.split(",") if p.strip()]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise InputError(
            f"{where('reminder_offsets')}: expected a list of minutes like [1440, 60, 10]"
        )
    offsets = {
        _int(v, "reminder_offsets", where, 1, 60 * 24 * 30, "minutes before the start")
        for v in items
    }
    return tuple(sorted(offsets, reverse=True))


def _clean_start(values: dict, given: set, partial: bool, tz_name: str | None,
                 current: Webinar | None, now: datetime, where: Where) -> datetime | None:
    """The webinar's start in UTC from ``starts_at``, a wall-clock ``start``, or a new zone."""
    start = None
    if "starts_at" in given:
        start = values["starts_at"]
        if not isinstance(start, datetime) or start.tzinfo is None:
            raise InputError(f"{where('start')}: expected an aware datetime")
    elif "start" in given or not partial:
        raw = values.get("start")
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            raise InputError(f"{where('start')}: a start time is required; use {WHEN_FORMS}")
        if isinstance(raw, datetime):  # a TOML datetime without offset
            raw = raw.strftime("%Y-%m-%d %H:%M")
        start = parse_when(str(raw), ZoneInfo(tz_name), now, where("start"))
    elif "timezone" in given and current is not None:
        # A new zone for the same wall-clock time moves the webinar.
        local = current.local_start
        start = local_to_utc(local.date(), local.hour, ZoneInfo(tz_name), local.minute)
    if start is not None and start <= now:
        local = start.astimezone(ZoneInfo(tz_name))
        raise InputError(
            f"{where('start')}: {local:%Y-%m-%d %H:%M} {tz_name} is in the past; "
            "a webinar must start in the future"
        )
    return start


def _capacity(cap: object, where: Where) -> int | None:
    """Seats: a number of at least 1, or None for "unlimited" (or empty)."""
    if isinstance(cap, str) and cap.strip().lower() in ("", "none", "unlimited"):
        return None
    try:
        number = int(cap) if not isinstance(cap, bool) else None
    except ValueError:
        number = None
    if number is None or number < 1:
        raise InputError(
            f"{where('capacity')}: {cap!r} is not a valid capacity; use a number of "
            "seats of at least 1, or 'unlimited'"
        )
    return number


def clean_values(
    values: dict,
    now: datetime,
    *,
    where: Where = _cli_where,
    partial: bool = False,
    current: Webinar | None = None,
) -> dict:
    """Validate webinar fields; returns column values.  Raises InputError naming the field.

    ``values`` keys: slug, title, description, start (wall-clock text in
    ``timezone``) or starts_at (aware datetime), timezone, duration_minutes,
    join_url, replay_url, capacity, host_name, offer, reminder_offsets,
    followup_delay_minutes.  With ``partial`` only the given keys are checked
    (edits); ``current`` supplies the zone for a new wall-clock start.
    """
    out: dict = {}
    given = {k for k, v in values.items() if v is not None}

    def want(key: str) -> bool:
        return key in given or not partial

    if want("slug"):
        slug = _text(values.get("slug"), "slug", where, required=True, limit=63)
        if not _SLUG_RE.match(slug):
            raise InputError(
                f"{where('slug')}: {slug!r} must be lower-case letters, digits and hyphens"
            )
        out["slug"] = slug
    if want("title"):
        out["title"] = _text(values.get("title"), "title", where, required=True, limit=200)
    if want("description"):
        out["description"] = _text(
            values.get("description"), "description", where, required=False, limit=5000
        )
    if want("timezone"):
        out["timezone"] = _zone(values.get("timezone"), where)
    tz_name = out.get("timezone") or (current.timezone if current else None)
    start = _clean_start(values, given, partial, tz_name, current, now, where)
    if start is not None:
        out["starts_at"] = start
    if want("duration_minutes"):
        raw = values.get("duration_minutes")
        out["duration_minutes"] = _int(
            DEFAULT_DURATION if raw is None else raw, "duration_minutes", where, 1, 24 * 60, "minutes"
        )
    if want("join_url"):
        out["join_url"] = _https(values.get("join_url"), "join_url", where, required=True)
    if "replay_url" in given:
        out["replay_url"] = _https(values["replay_url"], "replay_url", where, required=False)
    elif not partial:
        out["replay_url"] = None
    if "capacity" in given:
        out["capacity"] = _capacity(values["capacity"], where)
    elif not partial:
        out["capacity"] = None
    if want("host_name"):
        out["host_name"] = _text(
            values.get("host_name"), "host_name", where, required=False, limit=200
        )
    if want("offer"):
        offer = values.get("offer") or "appointment"
        if offer not in OFFERS:
            raise InputError(f"{where('offer')}: {offer!r} must be one of {', '.join(OFFERS)}")
        out["offer"] = offer
    if want("reminder_offsets"):
        raw = values.get("reminder_offsets")
        out["reminder_offsets"] = DEFAULT_REMINDERS if raw is None else _reminders(raw, where)
    if want("followup_delay_minutes"):
        raw = values.get("followup_delay_minutes")
        out["followup_delay_minutes"] = _int(
            DEFAULT_FOLLOWUP_DELAY if raw is None else raw,
            "followup_delay_minutes", where, 0, 60 * 24 * 14, "minutes",
        )  # fmt: skip
    return out


# ================================================================= TOML files
#: TOML key -> field name.
TOML_KEYS = {
    "slug": "slug",
    "title": "title",
    "description": "description",
    "timezone": "timezone",
    "start": "start",
    "duration": "duration_minutes",
    "join_url": "join_url",
    "replay_url": "replay_url",
    "capacity": "capacity",
    "host": "host_name",
    "offer": "offer",
    "reminders": "reminder_offsets",
    "followup_delay": "followup_delay_minutes",
}


def load_webinar_file(path: Path) -> tuple[dict, Where]:
    """Raw field values from ``content/webinars/<slug>.toml`` and a file:line locator."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read the file ({exc.strerror})") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML ({exc})") from exc
    field_to_key = {v: k for k, v in TOML_KEYS.items()}

    def where(fieldname: str) -> str:
        key = field_to_key.get(fieldname, fieldname)
        line = toml_line(text, key)
        return f"{path}:{line}: {key}" if line else f"{path}: {key}"

    unknown = sorted(set(data) - set(TOML_KEYS))
    if unknown:
        line = toml_line(text, unknown[0])
        raise InputError(
            f"{path}:{line or 1}: unknown key {unknown[0]!r} (known: {', '.join(TOML_KEYS)})"
        )
    values = {TOML_KEYS[k]: v for k, v in data.items()}
    values.setdefault("slug", path.stem)
    return values, where


# ================================================================= create / edit / cancel
def create_webinar(
    db, settings: Settings, values: dict, now: datetime, *, where: Where = _cli_where
) -> Webinar:
    """Create a webinar from raw values (see :func:`clean_values`)."""
    cols = clean_values(values, now, where=where)
    with transaction(db):
        if find_webinar(db, cols["slug"]) is not None:
            raise InputError(
                f"{where('slug')}: a webinar called {cols['slug']!r} already exists; "
                "change it with `funnel webinar edit`"
            )
        db.execute(
            "INSERT INTO webinars (slug, title, description, starts_at, timezone, duration_minutes, "
            "join_url, replay_url, capacity, host_name, offer, reminder_offsets, "
            "followup_delay_minutes, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                cols["slug"],
                cols["title"],
                cols["description"],
                iso(cols["starts_at"]),
                cols["timezone"],
                cols["duration_minutes"],
                cols["join_url"],
                cols["replay_url"],
                cols["capacity"],
                cols["host_name"],
                cols["offer"],
                json.dumps(list(cols["reminder_offsets"])),
                cols["followup_delay_minutes"],
                iso(now),
                iso(now),
            ),
        )
    return get_webinar(db, cols["slug"])


def create_from_file(
    db, settings: Settings, path: Path, now: datetime, overrides: dict | None = None
) -> Webinar:
    """Create a webinar from a TOML file; ``overrides`` (CLI options) win.

    A relative ``start`` in the file is read as :func:`file_start` says (a
    weekday is the first such slot at least :data:`SLOT_LEAD` ahead).
    """
    values, where = load_webinar_file(path)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    values.update(given)
    if "start" not in given:
        start = file_start(values, where, now)
        if start is not None:
            values.pop("start")
            values["starts_at"] = start
    return create_webinar(db, settings, values, now, where=where)


#: A TOML ``start`` written as a weekday and time (``start = "thursday 18:00"``)
#: is a standing weekly slot: the webinar is set to the first such slot at
#: least this far ahead, so there is time to invite people and to send the
#: day-before reminder.
SLOT_LEAD = timedelta(hours=24)


def file_start(values: dict, where: Where, now: datetime) -> datetime | None:
    """Where a TOML file's relative ``start`` points now, or None for a fixed date.

    Relative starts are :func:`campaigns.schedule.parse_when` forms ("thursday
    18:00", "in 14 days 18:00"), read in the file's ``timezone``; a weekday
    form gets the first such slot at least :data:`SLOT_LEAD` ahead.
    """
    raw = values.get("start")
    if not isinstance(raw, str) or not raw.strip() or not is_relative(raw):
        return None
    tz = ZoneInfo(_zone(values.get("timezone"), where))
    lead = SLOT_LEAD if is_weekday_form(raw) else timedelta(0)
    return parse_when(raw, tz, now + lead, where("start"))


def webinar_files(settings: Settings) -> list[Path]:
    """content/webinars/*.toml: the admin's folder first, then the bundled one (by file name)."""
    found: dict[str, Path] = {}
    for folder in settings.content_paths:
        for p in sorted((folder / "webinars").glob("*.toml")):
            found.setdefault(p.name, p)
    return list(found.values())


@dataclass(frozen=True)
class Loaded:
    """What :func:`load_files` did with one file."""

    path: Path
    slug: str
    action: str  # "created", "moved" (rescheduled to the next slot) or "kept"
    webinar: Webinar
    edit: EditResult | None = None


def load_files(
    db, settings: Settings, paths: Sequence[Path], now: datetime, *, create: bool = True
) -> list[Loaded]:
    """Create a webinar from each TOML file, or move a finished one to its next slot.

    * A slug that is not in the database yet is created (unless ``create`` is
      false).  A relative ``start`` is read against ``now`` (see :func:`file_start`).
    * A webinar whose file has a relative ``start`` (the bundled demo has
      ``start = "thursday 18:00"``) and whose session is over is **rescheduled**
      to where that start points now, through :func:`edit_webinar`: same UID,
      SEQUENCE+1, and registrants still registered get the update with a new
      ``.ics`` and fresh reminders.  The content never goes stale.
    * Anything else (a fixed date, a session still ahead or running, a
      cancelled webinar) is kept as it is.
    """
    done = []
    for path in paths:
        values, where = load_webinar_file(path)
        slug = values["slug"]
        existing = find_webinar(db, slug)
        if existing is None:
            if not create:
                continue
            done.append(Loaded(path, slug, "created", create_from_file(db, settings, path, now)))
            continue
        start = file_start(values, where, now)
        if start is None or existing.status == "cancelled" or existing.ends_at > now:
            done.append(Loaded(path, slug, "kept", existing))
            continue
        res = edit_webinar(
            db, settings, slug, {"starts_at": start}, now, where=where, next_slot=True
        )
        done.append(Loaded(path, slug, "moved", res.webinar, res))
    return done


def ensure_demo_webinar(db, settings: Settings, now: datetime, path: Path | None = None) -> Webinar:
    """The bundled Spine Health Webinar with an upcoming session (``funnel up`` in dev mode).

    Created from ``content/webinars/spine-health.toml`` if missing; once a
    session is over it moves to the next slot (see :func:`load_files`).
    """
    if path is None:
        path = next(p for p in webinar_files(settings) if p.name == "spine-health.toml")
    (loaded,) = load_files(db, settings, [path], now)
    return loaded.webinar


@dataclass(frozen=True)
class EditResult:
    webinar: Webinar
    changed: tuple[str, ...]
    rescheduled: bool
    updates_queued: int = 0
    reminders_queued: int = 0
    reminders_cancelled: int = 0
    promoted: int = 0


#: Changes after which registrants get an update with a new .ics.
_SIGNIFICANT = ("starts_at", "duration_minutes", "join_url", "timezone")


def edit_webinar(
    db,
    settings: Settings,
    slug: str,
    values: dict,
    now: datetime,
    *,
    where: Where = _cli_where,
    next_slot: bool = False,
) -> EditResult:
    """Change a webinar.  A new time, length or join link bumps SEQUENCE, queues an
    update with a fresh ``.ics`` to every registrant and recomputes their reminders.

    A bigger capacity lets waitlisted people in (oldest first).  A webinar that
    has started cannot move, except with ``next_slot`` once its session is over
    (a standing slot moving on, see :func:`load_files`).
    """
    with transaction(db):
        w = get_webinar(db, slug)
        if w.status == "cancelled":
            raise InputError(f"webinar {slug!r} is cancelled and cannot be edited")
        cols = clean_values(values, now, where=where, partial=True, current=w)
        cols.pop("slug", None)
        changed = tuple(k for k, v in cols.items() if getattr(w, k) != v)
        if not changed:
            return EditResult(w, (), False)
        significant = any(k in _SIGNIFICANT for k in changed)
        if significant and w.starts_at <= now and not (next_slot and w.ends_at <= now):
            raise InputError(
                f"webinar {slug!r} has already started; only the replay URL, offer and "
                "follow-up can still change"
            )
        sets = {
            k: (
                json.dumps(list(v))
                if k == "reminder_offsets"
                else iso(v)
                if isinstance(v, datetime)
                else v
            )
            for k, v in cols.items()
            if k in changed
        }
        if significant:
            sets["sequence"] = w.sequence + 1
        sets["updated_at"] = iso(now)
        db.execute(
            f"UPDATE webinars SET {', '.join(f'{k} = ?' for k in sets)} WHERE id = ?",
            (*sets.values(), w.id),
        )
        new = get_webinar(db, slug)
        updates = queued = cancelled = promoted = 0
        if significant or "reminder_offsets" in changed:
            cancelled = _cancel_rows(db, new, ("webinar_reminder",), now, "the webinar changed")
            if "starts_at" in changed:
                _move_expiry(db, new, now)
            for sid, addr in _registered(db, new):
                queued += _queue_reminders(db, settings, new, sid, addr, now)
        if significant:
            for sid, addr in _registered(db, new):
                key = f"webinar_update:{slug}:{new.sequence}:{sid}"
                if queue_row(
                    db,
                    settings,
                    new,
                    "webinar_update",
                    sid,
                    addr,
                    now,
                    now,
                    key,
                    outbox.PRIORITY_TRANSACTIONAL,
                    new.starts_at,
                ):
                    updates += 1
        if "capacity" in changed:
            promoted = _promote_waitlist(db, settings, new, now)
    return EditResult(new, changed, significant, updates, queued, cancelled, promoted)


@dataclass(frozen=True)
class CancelResult:
    webinar: Webinar
    notices_queued: int
    rows_cancelled: int
    registrations_cancelled: int


def cancel_webinar(db, settings: Settings, slug: str, now: datetime) -> CancelResult:
    """Call a webinar off: METHOD:CANCEL to registrants, queued mail cancelled."""
    with transaction(db):
        w = get_webinar(db, slug)
        if w.status == "cancelled":
            raise InputError(f"webinar {slug!r} is already cancelled")
        if w.starts_at <= now:
            raise InputError(f"webinar {slug!r} has already started and cannot be cancelled")
        db.execute(
            "UPDATE webinars SET status = 'cancelled', sequence = sequence + 1, updated_at = ? "
            "WHERE id = ?",
            (iso(now), w.id),
        )
        new = get_webinar(db, slug)
        rows = _cancel_rows(db, new, _BEFORE_START_KINDS, now, "the webinar was cancelled")
        notices = 0
        regs = db.execute(
            "SELECT r.subscriber_id, s.email, r.status FROM registrations r "
            "JOIN subscribers s ON s.id = r.subscriber_id "
            "WHERE r.webinar_id = ? AND r.status IN ('registered', 'waitlisted')",
            (w.id,),
        ).fetchall()
        for sid, addr, status in regs:
            db.execute(
                "UPDATE registrations SET status = 'cancelled', updated_at = ? "
                "WHERE webinar_id = ? AND subscriber_id = ?",
                (iso(now), w.id, sid),
            )
            log_event(
                db,
                "registration_cancelled",
                now,
                sid,
                new.ref,
                json.dumps({"reason": "webinar cancelled", "was": status}),
            )
            if status == "registered" and addr:
                key = f"webinar_cancel:{slug}:{new.sequence}:{sid}"
                if queue_row(
                    db,
                    settings,
                    new,
                    "webinar_cancel",
                    sid,
                    addr,
                    now,
                    now,
                    key,
                    outbox.PRIORITY_TRANSACTIONAL,
                    new.starts_at,
                ):
                    notices += 1
    return CancelResult(new, notices, rows, len(regs))


# ================================================================= outbox helpers
def queue_row(
    db,
    settings: Settings,
    w: Webinar,
    kind: str,
    sid: int,
    addr: str,
    due: datetime,
    now: datetime,
    dedupe_key: str,
    priority: int,
    expires: datetime | None,
    data: dict | None = None,
    stream: str | None = None,
) -> bool:
    suffix = kind.removeprefix("webinar_")
    row_id = outbox.enqueue(
        db,
        settings,
        dedupe_key=dedupe_key,
        kind=kind,
        subscriber_id=sid,
        to_addr=addr,
        due_at=due,
        now=now,
        stream=stream or w.stream,
        ref=f"{w.ref}:{suffix}",
        priority=priority,
        expires_at=expires,
        data={"webinar": w.slug, **(data or {})},
    )
    return row_id is not None


def _cancel_rows(db, w: Webinar, kinds: tuple[str, ...], now: datetime, reason: str) -> int:
    marks = ",".join("?" * len(kinds))
    return db.execute(
        "UPDATE outbox SET status = 'cancelled', updated_at = ?, last_error = ?, lease_token = NULL "
        f"WHERE ref >= ? AND ref < ? AND kind IN ({marks}) AND status IN ('queued', 'retry')",
        (iso(now), reason, w.ref + ":", w.ref + ";", *kinds),
    ).rowcount


def _move_expiry(db, w: Webinar, now: datetime) -> None:
    """Queued invites, confirmations and updates now expire at the new start."""
    marks = ",".join("?" * len(_BEFORE_START_KINDS))
    db.execute(
        f"UPDATE outbox SET expires_at = ?, updated_at = ? WHERE ref >= ? AND ref < ? "
        f"AND kind IN ({marks}) AND status IN ('queued', 'retry')",
        (iso(w.starts_at), iso(now), w.ref + ":", w.ref + ";", *_BEFORE_START_KINDS),
    )


def _registered(db, w: Webinar) -> list[tuple[int, str]]:
    return db.execute(
        "SELECT r.subscriber_id, s.email FROM registrations r "
        "JOIN subscribers s ON s.id = r.subscriber_id "
        "WHERE r.webinar_id = ? AND r.status = 'registered' AND s.email IS NOT NULL "
        "ORDER BY r.id",
        (w.id,),
    ).fetchall()


def reminder_times(w: Webinar, now: datetime) -> list[tuple[int, datetime]]:
    """(offset, due) for the reminders still ahead of ``now``.

    Reminders whose time has passed are skipped: someone registering 30
    minutes before the start gets the confirmation (which carries the join
    link) at once and the 10-minute reminder, nothing older.
    """
    return [
        (offset, w.starts_at - timedelta(minutes=offset))
        for offset in w.reminder_offsets
        if w.starts_at - timedelta(minutes=offset) > now
    ]


def _queue_reminders(db, settings: Settings, w: Webinar, sid: int, addr: str, now: datetime) -> int:
    n = 0
    for offset, due in reminder_times(w, now):
        key = f"webinar_reminder:{w.slug}:{w.sequence}:{offset}:{sid}"
        if queue_row(
            db,
            settings,
            w,
            "webinar_reminder",
            sid,
            addr,
            due,
            now,
            key,
            outbox.PRIORITY_WEBINAR,
            w.starts_at,
            {"offset": offset},
        ):
            n += 1
    return n


def _seats_taken(db, w: Webinar) -> int:
    return db.execute(
        f"SELECT COUNT(*) FROM registrations WHERE webinar_id = ? AND status IN "
        f"({','.join('?' * len(_SEATED))})",
        (w.id, *_SEATED),
    ).fetchone()[0]


def _seat(db, settings: Settings, w: Webinar, sid: int, addr: str, now: datetime) -> None:
    """A seated registrant: webinar stream on, confirmation and reminders queued.

    Someone who has left since they joined the waitlist (and has not turned
    this webinar's stream on by a verification link) gets the seat but no mail.
    """
    stream = lifecycle.subscriptions(db, sid).get(w.stream, {}).get("status")
    if stream != "subscribed":
        if lifecycle.get(db, sid).status not in ("active", "pending"):
            return
        lifecycle.set_subscription(db, sid, w.stream, "subscribed", now)
    queue_row(
        db,
        settings,
        w,
        "webinar_confirm",
        sid,
        addr,
        now,
        now,
        f"webinar_confirm:{w.slug}:{sid}",
        outbox.PRIORITY_TRANSACTIONAL,
        w.starts_at,
    )
    _queue_reminders(db, settings, w, sid, addr, now)


def _promote_waitlist(db, settings: Settings, w: Webinar, now: datetime) -> int:
    if w.starts_at <= now:
        return 0
    free = None if w.capacity is None else max(w.capacity - _seats_taken(db, w), 0)
    rows = db.execute(
        "SELECT r.subscriber_id, s.email FROM registrations r JOIN subscribers s "
        "ON s.id = r.subscriber_id WHERE r.webinar_id = ? AND r.status = 'waitlisted' "
        "AND s.email IS NOT NULL ORDER BY r.registered_at, r.id"
        + ("" if free is None else " LIMIT ?"),
        (w.id,) if free is None else (w.id, free),
    ).fetchall()
    for sid, addr in rows:
        db.execute(
            "UPDATE registrations SET status = 'registered', updated_at = ? "
            "WHERE webinar_id = ? AND subscriber_id = ?",
            (iso(now), w.id, sid),
        )
        log_event(db, "registered", now, sid, w.ref, json.dumps({"from": "waitlist"}))
        _seat(db, settings, w, sid, addr, now)
    return len(rows)


# ================================================================= invites
@dataclass(frozen=True)
class InviteResult:
    webinar: Webinar
    queued: int
    already: int  # invited before, registered, or not on the webinars stream
    due_at: datetime


def invite_candidates(
    db, settings: Settings, w: Webinar, segment, now: datetime, where: Sequence[str] = ()
) -> Iterator[tuple[int, str]]:
    """(subscriber id, email) of the segment who may get this webinar's invite.

    ``segment`` is a segment name (``all``) or a list of expressions
    (``["series:importance-of-exercise>=4"]``), see ``subscribers.segments``.
    On top of it: active and receiving the ``webinars`` stream (not paused),
    and not already registered (in any state) for this webinar.
    """
    from subscribers import segments

    for batch in segments.iter_members(
        db, settings, segment, where=tuple(where), now=now, stream="webinars"
    ):
        ids = [sid for sid, _addr in batch]
        marks = ",".join("?" * len(ids))
        taken = {
            r[0]
            for r in db.execute(
                f"SELECT subscriber_id FROM registrations WHERE webinar_id = ? "
                f"AND subscriber_id IN ({marks})",
                (w.id, *ids),
            ).fetchall()
        }
        for sid, addr in batch:
            if sid not in taken:
                yield sid, addr


def split_segment(values: Sequence[str]):
    """CLI ``--segment`` values: one bare name stays a name, anything else is expressions."""
    values = [v.strip() for v in values if v.strip()]
    if len(values) == 1 and re.fullmatch(r"[a-z0-9][a-z0-9_-]*", values[0]):
        return values[0]
    return values


def invite(
    db,
    settings: Settings,
    slug: str,
    segment,
    now: datetime,
    *,
    where: Sequence[str] = (),
    at: datetime | None = None,
) -> InviteResult:
    """Queue the invite for a segment; idempotent per person and webinar."""
    with transaction(db):
        w = get_webinar(db, slug)
        if w.status == "cancelled":
            raise InputError(f"webinar {slug!r} is cancelled; there is nothing to invite to")
        if at is not None:
            require_future(at, now, w.zone, "--at")
        due = at or now
        if w.starts_at <= max(due, now):
            raise InputError(
                f"--at: the invite would go out after webinar {slug!r} starts "
                f"({w.local_start:%Y-%m-%d %H:%M %Z})"
            )
        queued = already = 0
        for sid, addr in list(invite_candidates(db, settings, w, segment, now, where)):
            if queue_row(
                db,
                settings,
                w,
                "webinar_invite",
                sid,
                addr,
                due,
                now,
                f"webinar_invite:{slug}:{sid}",
                outbox.PRIORITY_WEBINAR,
                w.starts_at,
                stream="webinars",
            ):
                queued += 1
                log_event(db, "invited", now, sid, w.ref)
            else:
                already += 1
    return InviteResult(w, queued, already, due)


# ================================================================= registration
@dataclass(frozen=True)
class RegistrationResult:
    webinar: Webinar
    #: registered | waitlisted | already | suppressed | verify (a verification
    #: email was queued or is on its way: the owner must confirm first)
    status: str
    subscriber_id: int | None = None
    registration_status: str | None = None
    newsletter: str | None = None  # optin.signup action when the box was ticked


def check_open(w: Webinar, now: datetime) -> None:
    if w.status == "cancelled":
        raise InputError(f"Registration is closed: {w.title} has been cancelled.")
    if w.starts_at <= now:
        raise InputError(
            f"Registration is closed: {w.title} started at "
            f"{w.local_start:%H:%M %Z on %A %-d %B %Y}."
        )


def is_full(db, w: Webinar) -> bool:
    return w.capacity is not None and _seats_taken(db, w) >= w.capacity


def register(
    db,
    settings: Settings,
    slug: str,
    now: datetime,
    *,
    email: str | None = None,
    subscriber_id: int | None = None,
    name: str = "",
    timezone: str | None = None,
    newsletter: bool = False,
    source: str = "web",
    ip: str | None = None,
    user_agent: str | None = None,
    consent_action: str = "requested",
) -> RegistrationResult:
    """Register someone (by id, from an invite token; or by email, from the form/CLI).

    Registering twice is harmless.  A full webinar puts people on the
    waitlist (they are told by email); after the start, registration is
    refused with InputError.  An address that unsubscribed or is suppressed
    is only sent a verification email (status ``verify``): nothing else goes
    to it until its owner confirms (:func:`confirm_verification`).  Details
    typed on a form never replace a known person's name or zone.
    """
    with transaction(db):
        w = get_webinar(db, slug)
        check_open(w, now)
        signup_action = None
        if subscriber_id is None:
            if not email:
                raise InputError("email: an email address is required")
            email = optin.clean_email(email)
            if newsletter:
                signup_action = optin.signup(
                    db,
                    settings,
                    email,
                    now,
                    name=name,
                    timezone=timezone,
                    source=f"webinar:{slug}",
                    ip=ip,
                    user_agent=user_agent,
                ).action
            contact = optin.webinar_contact(
                db,
                settings,
                email,
                now,
                purpose=w.ref,
                action=consent_action,
                name=name,
                timezone=timezone,
                source=source,
                ip=ip,
                user_agent=user_agent,
            )
            if not contact.verified:
                request_verification(db, settings, w, contact.subscriber_id, email, now)
                return RegistrationResult(w, "verify", contact.subscriber_id, newsletter=signup_action)
            subscriber_id = contact.subscriber_id
        sub = lifecycle.get(db, subscriber_id)
        if sub.email is None:
            return RegistrationResult(w, "suppressed", sub.id)
        existing = _registration(db, w, sub.id)
        if existing is not None:
            return RegistrationResult(w, "already", sub.id, existing, signup_action)
        if sub.status not in ("pending", "active"):
            # An old invite link of someone who has left since: their owner must confirm.
            request_verification(db, settings, w, sub.id, sub.email, now)
            return RegistrationResult(w, "verify", sub.id)
        if email is None:
            # From an invite link: the token proves the address; record the consent.
            _consent(db, settings, sub.id, w, consent_action, source, now, ip, user_agent)
        status = _enrol(db, settings, w, sub, source, now)
    return RegistrationResult(w, status, sub.id, status, signup_action)


# ================================================================= the webinar CTA
def next_open_webinar(db, now: datetime, subscriber_id: int | None = None) -> Webinar | None:
    """The soonest webinar whose registration is open (scheduled, not cancelled,
    starting after ``now``), skipping any the reader already has a place for."""
    found = db.execute(
        f"SELECT {_W_COLUMNS} FROM webinars w WHERE status = 'scheduled' AND starts_at > ? "
        "AND NOT EXISTS (SELECT 1 FROM registrations r WHERE r.webinar_id = w.id "
        "AND r.subscriber_id = ? AND r.status IN ('registered', 'waitlisted')) "
        "ORDER BY starts_at, id LIMIT 1",
        (iso(now), subscriber_id),
    ).fetchone()
    return _webinar(found) if found else None


def webinar_cta(db, settings: Settings, ctas, sub: lifecycle.Subscriber, now: datetime) -> dict:
    """Per-recipient values for content whose CTAs include a ``webinar`` one.

    The webinar is chosen when the message is built (send time, or view in
    browser), never when the content was written: see
    :func:`cta_recipient`.
    """
    if not any(c.get("kind") == "webinar" for c in ctas):
        return {}
    return cta_recipient(db, settings, sub, now)


def authored_content(
    db, settings: Settings, piece, sub: lifecycle.Subscriber, now: datetime, *, kind: str,
    extra: dict,
) -> Content:
    """The Content of a clinic-written piece (a broadcast or a series step).

    Its subject, preheader, Markdown body and CTAs as written, with a
    ``webinar`` CTA's values chosen now (:func:`webinar_cta`) and a
    ``programme`` CTA's personal start link (:func:`course.programme_cta`).
    """
    return Content(
        kind=kind,
        subject=piece.subject,
        preheader=piece.preheader,
        body_md=piece.body_md,
        ctas=tuple(piece.ctas),
        recipient={
            **webinar_cta(db, settings, piece.ctas, sub, now),
            **course.programme_cta(settings, piece.ctas, sub, now),
        },
        extra=extra,
    )


def cta_recipient(db, settings: Settings, sub: lifecycle.Subscriber, now: datetime) -> dict:
    """Recipient values for a ``webinar`` CTA, resolved when the email is built.

    The next open webinar (:func:`next_open_webinar`) as the reader's personal
    one-click "Reserve my spot" link (the signed link invitations use), its
    title and time in the reader's zone; ``{}`` when there is none, and the
    templates then leave the CTA block out.
    """
    w = next_open_webinar(db, now, sub.id)
    if w is None:
        return {}
    return {
        "webinar_url": settings.url(f"/w/{w.slug}?t={invite_token(settings, w.slug, sub.id, now)}"),
        "webinar_title": w.title,
        "webinar_when": format_when(w.starts_at, settings.zone_for(sub.timezone)),
    }


def _consent(db, settings: Settings, sid: int, w: Webinar, action: str, source: str,
             now: datetime, ip: str | None, user_agent: str | None) -> None:
    lifecycle.record_consent(db, [lifecycle.Consent(
        sid, action, now, purpose=w.ref, source=source, ip=ip,
        user_agent=(user_agent or "")[:300] or None, version=settings.consent_version,
    )])


def _enrol(db, settings: Settings, w: Webinar, sub: lifecycle.Subscriber, source: str,
           now: datetime) -> str:
    """A seat, or a place on the waitlist; either way the answer goes by email."""
    status = "waitlisted" if is_full(db, w) else "registered"
    db.execute(
        "INSERT INTO registrations (webinar_id, subscriber_id, status, source, registered_at, "
        "updated_at) VALUES (?, ?, ?, ?, ?, ?)",
        (w.id, sub.id, status, source, iso(now), iso(now)),
    )
    log_event(db, status, now, sub.id, w.ref, json.dumps({"source": source}))
    if status == "registered":
        _seat(db, settings, w, sub.id, sub.email, now)
    else:
        queue_row(
            db, settings, w, "webinar_waitlist", sub.id, sub.email, now, now,
            f"webinar_waitlist:{w.slug}:{sub.id}", outbox.PRIORITY_TRANSACTIONAL, w.starts_at,
        )  # fmt: skip
    return status


# ================================================================= verification
def request_verification(
    db, settings: Settings, w: Webinar, sid: int, addr: str, now: datetime
) -> bool:
    """Queue the one email that lets the owner of ``addr`` register (double opt-in).

    For people who unsubscribed, bounced, complained or were erased.  Nothing
    about them changes here: a fresh nonce and one outbox row, at most one per
    ``confirm_resend_hours`` per webinar (a newer link replaces the older one).
    Returns whether an email was queued.
    """
    row = db.execute(
        "SELECT requested_at, confirmed_at FROM webinar_verifications "
        "WHERE webinar_id = ? AND subscriber_id = ?",
        (w.id, sid),
    ).fetchone()
    if row is not None:
        last = parse_iso(row[0])
        if row[1] is None and now - last < timedelta(hours=settings.confirm_resend_hours):
            return False
    nonce = secrets.token_urlsafe(12)
    expires = min(now + timedelta(days=settings.confirm_max_age_days), w.starts_at)
    row_id = outbox.enqueue(
        db,
        settings,
        dedupe_key=f"webinar_verify:{w.slug}:{sid}:{iso(now)}",
        kind="webinar_verify",
        subscriber_id=sid,
        to_addr=addr,
        due_at=now,
        now=now,
        stream=w.stream,
        ref=f"{w.ref}:verify",
        priority=outbox.PRIORITY_TRANSACTIONAL,
        expires_at=expires,
        data={"webinar": w.slug},
    )
    db.execute(
        "INSERT INTO webinar_verifications (webinar_id, subscriber_id, nonce, outbox_id, "
        "requested_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (webinar_id, subscriber_id) DO UPDATE "
        "SET nonce = excluded.nonce, outbox_id = excluded.outbox_id, "
        "requested_at = excluded.requested_at, confirmed_at = NULL",
        (w.id, sid, nonce, row_id, iso(now)),
    )
    return True


def verify_token(settings: Settings, slug: str, subscriber_id: int, nonce: str,
                 issued: datetime) -> str:
    return tokens.subscriber_token(settings, "webinar", subscriber_id, issued, w=slug, k="verify",
                                   n=nonce)


def _read_verify_token(settings: Settings, slug: str, token: str, now: datetime) -> tuple[int, str]:
    data = tokens.read_token(
        settings, "webinar", token, now, max_age_seconds=settings.confirm_max_age_days * 86400
    )
    if data.get("w") != slug or data.get("k") != "verify" or not isinstance(data.get("s"), int):
        raise TokenError("This link is not valid.")
    return data["s"], str(data.get("n", ""))


def _verification(db, w: Webinar, sid: int, nonce: str) -> tuple[int, int | None]:
    row = db.execute(
        "SELECT id, nonce, outbox_id FROM webinar_verifications WHERE webinar_id = ? "
        "AND subscriber_id = ?",
        (w.id, sid),
    ).fetchone()
    if row is None or not row[1] or not secrets.compare_digest(row[1], nonce):
        raise TokenError("This link has already been used or replaced by a newer one.")
    return row[0], row[2]


def check_verification(db, settings: Settings, slug: str, token: str, now: datetime) -> Webinar:
    """The webinar a verification link is for, if it still works; changes nothing (a GET)."""
    sid, nonce = _read_verify_token(settings, slug, token, now)
    w = get_webinar(db, slug)
    check_open(w, now)
    _verification(db, w, sid, nonce)
    return w


def confirm_verification(
    db,
    settings: Settings,
    slug: str,
    token: str,
    now: datetime,
    *,
    ip: str | None = None,
    user_agent: str | None = None,
) -> RegistrationResult:
    """The owner confirmed (POST): register them for this webinar only.  Works once.

    They stay unsubscribed (or suppressed) for everything else: only this
    webinar's stream is turned on.  An erased person gets their address back
    on the hash-only record, and nothing more.
    """
    sid, nonce = _read_verify_token(settings, slug, token, now)
    with transaction(db):
        w = get_webinar(db, slug)
        check_open(w, now)
        vid, outbox_id = _verification(db, w, sid, nonce)
        sub = lifecycle.get(db, sid)
        if sub.email is None:
            addr = db.execute("SELECT to_addr FROM outbox WHERE id = ?", (outbox_id,)).fetchone()
            if addr is None or not addr[0]:
                raise TokenError("This link is not valid.")
            sub = lifecycle.restore_erased(db, sid, addr[0], now)
        db.execute(
            "UPDATE webinar_verifications SET nonce = NULL, confirmed_at = ? WHERE id = ?",
            (iso(now), vid),
        )
        _consent(db, settings, sid, w, "confirmed", "link", now, ip, user_agent)
        lifecycle.grant_stream(db, sid, w.stream, now)
        existing = _registration(db, w, sid)
        if existing is not None:
            return RegistrationResult(w, "already", sid, existing)
        status = _enrol(db, settings, w, sub, "verified", now)
    return RegistrationResult(w, status, sid, status)


def invite_token(settings: Settings, slug: str, subscriber_id: int, now: datetime) -> str:
    return tokens.subscriber_token(settings, "webinar", subscriber_id, now, w=slug)


def read_invite_token(settings: Settings, slug: str, token: str, now: datetime) -> int:
    data = tokens.read_subscriber_token(settings, "webinar", token, now)
    if data.get("w") != slug or data.get("k", "register") != "register":
        raise TokenError("This link is for a different webinar.")
    return int(data["s"])


def invitee(db, settings: Settings, slug: str, token: str, now: datetime) -> lifecycle.Subscriber:
    """Who an invite link names (for the prefilled "Reserve my spot" page); never changes state."""
    sid = read_invite_token(settings, slug, token, now)
    try:
        sub = lifecycle.get(db, sid)
    except NotFound as exc:
        raise TokenError("This link is not valid.") from exc
    if sub.email is None:
        raise TokenError("This link is not valid.")
    return sub


def register_with_token(
    db,
    settings: Settings,
    slug: str,
    token: str,
    now: datetime,
    *,
    ip: str | None = None,
    user_agent: str | None = None,
) -> RegistrationResult:
    """One-click registration from an invite's "Reserve my spot" link (POST only)."""
    sub = invitee(db, settings, slug, token, now)
    return register(
        db,
        settings,
        slug,
        now,
        subscriber_id=sub.id,
        source="invite",
        ip=ip,
        user_agent=user_agent,
        consent_action="confirmed",
    )


def registrants(db, slug: str) -> list[dict]:
    w = get_webinar(db, slug)
    return list(
        db.query(
            "SELECT s.email, s.name, s.timezone, r.status, r.source, r.registered_at, "
            "r.attended_minutes, r.updated_at FROM registrations r "
            "JOIN subscribers s ON s.id = r.subscriber_id WHERE r.webinar_id = ? ORDER BY r.id",
            (w.id,),
        )
    )


EXPORT_COLUMNS = (
    "email",
    "name",
    "timezone",
    "status",
    "source",
    "registered_at",
    "attended_minutes",
    "updated_at",
)


def export_registrants(db, slug: str, fh: IO[str]) -> int:
    rows = registrants(db, slug)
    writer = SafeDictWriter(fh, fieldnames=EXPORT_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r[k] is None else r[k]) for k in EXPORT_COLUMNS})
    return len(rows)


# ================================================================= offer clicks
def offer_token(settings: Settings, slug: str, subscriber_id: int, now: datetime) -> str:
    return tokens.subscriber_token(settings, "webinar", subscriber_id, now, w=slug, k="offer")


def offer_target(db, settings: Settings, token: str, now: datetime) -> tuple[Webinar, str]:
    """(webinar, destination URL) an offer link points to; never changes state."""
    data = tokens.read_subscriber_token(settings, "webinar", token, now)
    if data.get("k") != "offer":
        raise TokenError("This link is not valid.")
    w = get_webinar(db, str(data.get("w")))
    setting, _text_ = OFFERS[w.offer]
    url = getattr(settings, setting)
    if not url and w.offer == "programme":
        url = course.start_url(settings, int(data["s"]), now)
    if not url:
        raise NotFound(f"the {w.offer} offer has no URL configured ({setting})")
    return w, url


def record_offer_click(db, settings: Settings, token: str, now: datetime) -> str:
    """Log ``clicked_offer`` and return where to send the reader.

    Called from a POST (the interstitial's button), so link scanners that
    fetch every URL in an email do not count as clicks (DESIGN rule 7).
    """
    w, url = offer_target(db, settings, token, now)
    sid = int(tokens.read_subscriber_token(settings, "webinar", token, now)["s"])
    with transaction(db):
        if db.execute("SELECT 1 FROM subscribers WHERE id = ?", (sid,)).fetchone():
            log_event(db, "clicked_offer", now, sid, w.ref, json.dumps({"offer": w.offer}))
    return url


# ================================================================= message builders
def format_when(dt: datetime, tz: ZoneInfo) -> str:
    """ "Thursday 10 December 2026, 6:00 pm GMT" in ``tz``."""
    local = dt.astimezone(tz)
    hour = local.hour % 12 or 12
    ampm = "am" if local.hour < 12 else "pm"
    return f"{local:%A} {local.day} {local:%B %Y}, {hour}:{local:%M} {ampm} {local:%Z}"


def _load(db, row: outbox.OutboxRow, sub: lifecycle.Subscriber) -> Webinar:
    slug = row.data.get("webinar")
    w = find_webinar(db, slug) if slug else None
    if w is None:
        raise SkipMessage("cancelled", f"webinar {slug!r} no longer exists")
    if sub.email is None:
        raise SkipMessage("cancelled", "the subscriber is erased")
    if sub.status in ("bounced", "complained", "unsubscribed"):
        # Only their own confirmation (a verification link) turned this webinar's mail on.
        stream = lifecycle.subscriptions(db, sub.id).get(w.stream, {}).get("status")
        if stream != "subscribed":
            raise SkipMessage("cancelled", f"the subscriber is {sub.status}")
    return w


def _registration(db, w: Webinar, sid: int) -> str | None:
    row = db.execute(
        "SELECT status FROM registrations WHERE webinar_id = ? AND subscriber_id = ?", (w.id, sid)
    ).fetchone()
    return row[0] if row else None


def _recipient(
    settings: Settings, w: Webinar, sub: lifecycle.Subscriber, now: datetime, **extra: str
) -> dict:
    tz = settings.zone_for(sub.timezone)
    info = w.event_info()
    setting, offer_text = OFFERS[w.offer]
    values = {
        "register_url": settings.url(
            f"/w/{w.slug}?t={invite_token(settings, w.slug, sub.id, now)}"
        ),
        "join_url": w.join_url,
        "webinar_title": w.title,
        "webinar_when": format_when(w.starts_at, tz),
        "webinar_tz": tz.key,
        "google_calendar_url": ics.google_calendar_url(info),
        "outlook_url": ics.outlook_url(info),
        "replay_url": w.replay_url or "",
        "offer_url": "",
        "offer_text": offer_text,
        "webinar_url": settings.url(f"/w/{w.slug}"),
    }
    values.update(extra)
    return values


def _ics(
    settings: Settings, w: Webinar, row: outbox.OutboxRow, sub: lifecycle.Subscriber, now: datetime
) -> mime.Attachment:
    method = "CANCEL" if w.status == "cancelled" else "REQUEST"
    data = ics.build_ics(
        w.event_info(),
        uid=ics.event_uid(w.slug, sub.id, settings.sender_domain),
        organizer_name=settings.from_name or settings.site_name,
        organizer_email=settings.from_addr,
        attendee_email=row.to_addr or "",
        attendee_name=sub.name,
        now=now,
        method=method,
    )
    filename = "cancel.ics" if method == "CANCEL" else "invite.ics"
    return mime.Attachment(filename, f"text/calendar; method={method}; charset=utf-8", data)


def _registrant_reason(settings: Settings, w: Webinar) -> str:
    return render.footer_reason("registered", settings.site_name, w.title)


def _load_registrant(
    db, row: outbox.OutboxRow, sub: lifecycle.Subscriber, expected: str = "registered"
) -> Webinar:
    """The row's webinar, when it still runs and ``sub``'s registration is ``expected``.

    Raises SkipMessage otherwise; shared by every mail to one registrant.
    """
    w = _load(db, row, sub)
    if w.status == "cancelled":
        raise SkipMessage("cancelled", "the webinar was cancelled")
    status = _registration(db, w, sub.id)
    if status != expected:
        raise SkipMessage("cancelled", f"the registration is {status or 'missing'}")
    return w


#: Subject and preheader of each mail to a registrant; ``{title}`` is the
#: webinar's title, ``{when}`` the reminder's "in 1 hour" / "tomorrow".
_REGISTRANT_WORDS: dict[str, tuple[str, str]] = {
    "webinar_waitlist": (
        "You're on the waitlist: {title}",
        "The session is full; we will email you if a seat frees up.",
    ),
    "webinar_confirm": (
        "You're registered: {title}",
        "Your join link and a calendar invite are inside.",
    ),
    "webinar_reminder": ("Starting {when}: {title}", "Your join link is inside."),
    "webinar_update": (
        "New time: {title}",
        "Your place is kept; the attached calendar file updates your entry.",
    ),
    "webinar_cancel": ("Cancelled: {title}", "We are sorry: this session will not go ahead."),
}


def _registrant_mail(settings: Settings, w: Webinar, sub, now: datetime, kind: str, *,
                     bulk: bool = False, ics_row=None, when: str = "") -> Content:
    """A registrant's mail about ``w``: its words from ``_REGISTRANT_WORDS``, the
    registrant footer, the webinar's recipient values, and with ``ics_row`` the
    calendar file for that outbox row."""
    subject, preheader = _REGISTRANT_WORDS[kind]
    return Content(
        kind=kind,
        subject=subject.format(title=w.title, when=when),
        preheader=preheader,
        bulk=bulk,
        extra={"reason": _registrant_reason(settings, w)},
        recipient=_recipient(settings, w, sub, now),
        attachments=(_ics(settings, w, ics_row, sub, now),) if ics_row is not None else (),
    )


def build_invite(db, settings: Settings, row, sub, now: datetime) -> Content:
    w = _load(db, row, sub)
    if w.status == "cancelled":
        raise SkipMessage("cancelled", "the webinar was cancelled")
    if _registration(db, w, sub.id) is not None:
        raise SkipMessage("cancelled", "already registered for this webinar")
    stream = lifecycle.subscriptions(db, sub.id).get("webinars", {})
    if stream.get("status") != "subscribed":
        raise SkipMessage("cancelled", "not subscribed to webinar invitations")
    return Content(
        kind="webinar_invite",
        subject=f"You're invited: {w.title} (free, live online)",
        preheader="A free live session with our physiotherapists. Reserve your spot in one click.",
        extra={
            "reason": render.footer_reason("webinar_invitations", settings.site_name)
        },
        recipient=_recipient(settings, w, sub, now),
    )


def build_verify(db, settings: Settings, row, sub, now: datetime) -> Content:
    slug = row.data.get("webinar")
    w = find_webinar(db, slug) if slug else None
    if w is None or w.status == "cancelled" or w.starts_at <= now:
        raise SkipMessage("cancelled", "registration for this webinar is closed")
    v = db.execute(
        "SELECT nonce, requested_at, outbox_id FROM webinar_verifications "
        "WHERE webinar_id = ? AND subscriber_id = ?",
        (w.id, sub.id),
    ).fetchone()
    if v is None or not v[0] or v[2] != row.id:
        raise SkipMessage("cancelled", "the verification was used or replaced")
    # Signed at the request time, so building again never makes a longer-lived link.
    token = verify_token(settings, w.slug, sub.id, v[0], parse_iso(v[1]))
    return Content(
        kind="webinar_verify",
        subject=f"Please confirm your place at {w.title}",
        preheader="One click to confirm it was you; until then nothing else is sent.",
        bulk=False,
        extra={
            "reason": render.footer_reason("registration_form", settings.site_name, w.title)
        },
        recipient=_recipient(
            settings, w, sub, now, verify_url=settings.url(f"/w/{w.slug}/verify/{token}")
        ),
    )


def build_waitlist(db, settings: Settings, row, sub, now: datetime) -> Content:
    w = _load_registrant(db, row, sub, "waitlisted")
    return _registrant_mail(settings, w, sub, now, "webinar_waitlist")


def build_confirm(db, settings: Settings, row, sub, now: datetime) -> Content:
    w = _load_registrant(db, row, sub)
    return _registrant_mail(settings, w, sub, now, "webinar_confirm", ics_row=row)


def _in_words(minutes: int) -> str:
    if minutes % 1440 == 0:
        days = minutes // 1440
        return "tomorrow" if days == 1 else f"in {days} days"
    if minutes % 60 == 0:
        hours = minutes // 60
        return f"in {hours} hour{'s' if hours != 1 else ''}"
    return f"in {minutes} minute{'s' if minutes != 1 else ''}"


def build_reminder(db, settings: Settings, row, sub, now: datetime) -> Content:
    w = _load_registrant(db, row, sub)
    when = _in_words(int(row.data.get("offset", 60)))
    return _registrant_mail(settings, w, sub, now, "webinar_reminder", bulk=True, when=when)


def build_update(db, settings: Settings, row, sub, now: datetime) -> Content:
    w = _load_registrant(db, row, sub)
    return _registrant_mail(settings, w, sub, now, "webinar_update", ics_row=row)


def build_cancel(db, settings: Settings, row, sub, now: datetime) -> Content:
    w = _load(db, row, sub)
    if w.status != "cancelled":
        raise SkipMessage("cancelled", "the webinar is no longer cancelled")
    return _registrant_mail(settings, w, sub, now, "webinar_cancel", ics_row=row)


def build_followup(db, settings: Settings, row, sub, now: datetime) -> Content:
    w = _load(db, row, sub)
    status = _registration(db, w, sub.id)
    if status not in ("attended", "no_show"):
        raise SkipMessage("cancelled", f"no follow-up for a registration that is {status}")
    attended = status == "attended"
    extra: dict[str, str] = {}
    if attended:
        subject = f"Thank you for joining {w.title}"
        preheader = "A thank-you, and an offer for attendees."
        setting, _t = OFFERS[w.offer]
        if getattr(settings, setting) or w.offer in SELF_HOSTED_OFFERS:
            extra["offer_url"] = settings.url(f"/o/{offer_token(settings, w.slug, sub.id, now)}")
        if w.offer != "programme":  # the programme as a second button beside the offer
            extra["programme_url"] = course.programme_link(settings, sub.id, now)
    elif w.replay_url:
        subject = f"The replay of {w.title}"
        preheader = "Watch the session whenever it suits you."
    else:
        subject = f"Sorry we missed you at {w.title}"
        preheader = "We will invite you to the next session."
    return Content(
        kind="webinar_followup",
        subject=subject,
        preheader=preheader,
        extra={"reason": _registrant_reason(settings, w), "attended": attended},
        recipient=_recipient(settings, w, sub, now, **extra),
    )


__all__ = [
    "CancelResult",
    "EditResult",
    "FunnelError",
    "InviteResult",
    "OFFERS",
    "SELF_HOSTED_OFFERS",
    "RegistrationResult",
    "Webinar",
    "cancel_webinar",
    "check_open",
    "check_verification",
    "confirm_verification",
    "clean_values",
    "create_from_file",
    "create_webinar",
    "edit_webinar",
    "ensure_demo_webinar",
    "cta_recipient",
    "next_open_webinar",
    "file_start",
    "load_files",
    "Loaded",
    "SLOT_LEAD",
    "export_registrants",
    "find_webinar",
    "format_when",
    "get_webinar",
    "invite",
    "invite_token",
    "invitee",
    "is_full",
    "list_webinars",
    "load_webinar_file",
    "offer_target",
    "offer_token",
    "outbox_counts",
    "read_invite_token",
    "record_offer_click",
    "register",
    "register_with_token",
    "registrants",
    "registration_counts",
    "reminder_times",
    "request_verification",
    "verify_token",
]


# ================================================================= console
@dataclass(frozen=True)
class Overview:
    """One webinar as the console shows it: who registered, who waits, its mail."""

    webinar: Webinar
    counts: dict[str, int]
    people: list[dict]  # registrants, the waitlist included (status 'waitlisted')
    mail: dict[str, dict[str, int]]  # {kind: {status: n}}: invites, reminders, follow-ups


def overview(db, slug: str) -> Overview:
    w = get_webinar(db, slug)
    return Overview(w, registration_counts(db, w), registrants(db, slug), outbox_counts(db, w))
