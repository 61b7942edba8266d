"""Settings: ``funnel.toml`` overridden by ``FUNNEL_*`` environment variables.

Only the doors (``cli.py``, ``web/``) call :func:`load_settings`;
domain functions receive the :class:`Settings` object they need.

Every problem is reported as one sentence naming the setting, e.g.
``FUNNEL_FROM: 'clinic' is not a valid email address (...)``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email

from .errors import InputError, SettingsError
from .validate import zone_name

#: The key used when ``dev = true`` and no secret keys are configured.  It is
#: public, so :func:`load_settings` refuses it outside dev mode.
DEV_SECRET_KEY = "funnel-dev-only-secret-do-not-use-in-production"

REPO_ROOT = Path(__file__).resolve().parent.parent

#: The bundled demo content (series and webinar).  ``content`` is installed as
#: package data next to the ``funnel`` package, so this is the checkout's
#: ``content/`` in an editable install and ``site-packages/content`` from a wheel.
BUNDLED_CONTENT = REPO_ROOT / "content"


# userinfo "user:password@" after a scheme; greedy up to the last "@" of the
# authority, so a password with a raw "@" in it is hidden whole.
_URL_PASSWORD_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s/@:'\"?#]*:)[^\s/'\"?#]*@")


def redact(text: str) -> str:
    """Hide the password in every URL inside *text*: ``smtp://apikey:***@host``.

    The one function used wherever a relay URL (or an error or log line that
    may hold one) is shown: settings errors, SMTP transport errors, the CLI's
    error lines and the worker's log.
    """
    return _URL_PASSWORD_RE.sub(r"\1***@", text)


@dataclass(frozen=True)
class RelayConfig:
    """One SMTP relay parsed from an ``smtp://`` or ``smtps://`` URL."""

    url: str = field(repr=False)
    host: str
    port: int
    tls: bool = False  # implicit TLS (smtps://)
    starttls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    rate_per_second: float = 0.0  # 0 = unlimited
    max_per_hour: int = 0
    max_per_day: int = 0
    timeout: float = 30.0

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"


def parse_smtp_url(url: str, setting: str = "FUNNEL_SMTP_URL") -> RelayConfig:
    """Parse ``smtp[s]://[user:pass@]host[:port][?starttls=1&rate=50&hourly=..&daily=..]``."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("smtp", "smtps"):
        raise SettingsError(
            f"{setting}: unknown scheme {parts.scheme!r} in {redact(url)!r}; use smtp:// or smtps://"
        )
    if not parts.hostname:
        raise SettingsError(f"{setting}: {redact(url)!r} has no host name")
    try:
        port = parts.port or (465 if parts.scheme == "smtps" else 25)
    except ValueError as exc:
        raise SettingsError(f"{setting}: {redact(url)!r} has an invalid port") from exc
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    known = {"starttls", "rate", "hourly", "daily", "timeout"}
    unknown = set(query) - known
    if unknown:
        raise SettingsError(
            f"{setting}: unknown option {sorted(unknown)[0]!r} in {redact(url)!r}; "
            f"known options are {', '.join(sorted(known))}"
        )

    def num(name: str, conv, default):
        if name not in query:
            return default
        try:
            value = conv(query[name])
        except ValueError as exc:
            raise SettingsError(f"{setting}: option {name}={query[name]!r} is not a number") from exc
        if value < 0:
            raise SettingsError(f"{setting}: option {name} must not be negative")
        return value

    return RelayConfig(
        url=url,
        host=parts.hostname,
        port=port,
        tls=parts.scheme == "smtps",
        starttls=query.get("starttls", "0").lower() in ("1", "true", "yes"),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        rate_per_second=num("rate", float, 0.0),
        max_per_hour=num("hourly", int, 0),
        max_per_day=num("daily", int, 0),
        timeout=num("timeout", float, 30.0),
    )


@dataclass(frozen=True)
class Settings:
    """Everything configurable.  Field names match the ``funnel.toml`` keys."""

    db: str = "./funnel.db"
    site_name: str = "Back in Motion Physiotherapy"
    from_addr: str = "newsletter@clinic.example"
    from_name: str = ""
    reply_to: str = ""
    postal_address: str = "1 Example Street, London, UK"
    base_url: str = "http://127.0.0.1:8000"
    secret_keys: tuple[str, ...] = field(default=(), repr=False)
    smtp_urls: tuple[str, ...] = field(default=("smtp://127.0.0.1:8025",), repr=False)
    timezone: str = "Europe/London"
    dev: bool = False
    content_dir: str = ""
    # Links the templates turn into buttons.
    appointment_url: str = ""
    programme_url: str = ""
    # Opt-in.
    confirm_max_age_days: float = 3.0
    confirm_resend_hours: float = 24.0
    # Never-confirmed signups (and their IP/user agent) are deleted after this.
    pending_retention_days: float = 30.0
    consent_text: str = (
        "Yes, send me the weekly back-care series and occasional news and webinar "
        "invitations. I can unsubscribe at any time."
    )
    consent_version: str = "2026-11-v1"
    enroll_series: tuple[str, ...] = ("importance-of-exercise",)
    # Delivery.
    frequency_cap: int = 2
    quiet_start_hour: int = 21
    quiet_end_hour: int = 8
    newsletter_expiry_hours: float = 96.0
    max_attempts: int = 30  # with sender.backoff (5 min doubling, 4 h cap) ~ the 4-day expiry
    crash_limit: int = 3
    batch_size: int = 200
    # Bounces (Mailman's model).
    bounce_score_threshold: float = 5.0
    bounce_reset_days: float = 7.0
    # The rule: every hard bounce suppresses at once.  Set false to only
    # score policy/content failures (5.7.x spam blocks, 5.6.x, 5.3.x, 5.2.2,
    # 5.2.3), so one campaign caught by a spam filter can't wipe out the list.
    suppress_policy_bounces: bool = True
    # DKIM.
    dkim_selector: str = ""
    dkim_domain: str = ""
    dkim_key_file: str = ""
    # Web.
    signup_rate_per_minute: int = 30
    min_form_seconds: float = 2.0
    max_request_bytes: int = 64 * 1024
    # How many reverse proxies in front of `funnel serve` to trust for
    # X-Forwarded-For/-Proto/-Host (waitress's trusted_proxy_count), and the
    # address they connect from.  0 = trust none and drop those headers: the
    # per-IP rate limit then sees the proxy's address.  Set 1 behind nginx.
    trusted_proxies: int = 0
    trusted_proxy_address: str = "127.0.0.1"
    # waitress, sized for a site exposed directly (docs/production.md).
    server_threads: int = 32
    server_connection_limit: int = 2000
    server_channel_timeout: int = 30  # seconds an idle connection is kept
    server_cleanup_interval: int = 10  # seconds between sweeps for idle connections
    server_backlog: int = 2048  # queued, not yet accepted connections (capped by the kernel)
    # /healthz: 503 below this much free disk, or when the worker's last tick is
    # older than this many seconds (0 = don't check the worker).
    healthz_min_free_mb: float = 50.0
    healthz_worker_seconds: float = 90.0
    # Appointment requests (/appointment, campaigns/appointments.py).  The
    # clinic's notification goes to clinic_email (the From address when empty;
    # `funnel check` warns); the acknowledgement promises a reply this soon.
    clinic_email: str = ""
    appointment_reply_promise: str = "within one working day"
    appointment_retention_days: float = 365.0
    # A signed POST per request (empty = none); the secret defaults to one
    # derived from the first secret key (`funnel appointments webhook-secret`).
    appointment_webhook_url: str = field(default="", repr=False)
    appointment_webhook_secret: str = field(default="", repr=False)
    # Admin console (/admin, web/admin/).  admin_allowed_ips: addresses or
    # networks (CIDR) that may open it; empty = any.  admin_require_totp makes
    # the second factor mandatory: a user without one is sent to enrol.
    admin_enabled: bool = True
    admin_allowed_ips: tuple[str, ...] = ()
    admin_require_totp: bool = False

    # ----------------------------------------------------------------- derived
    @property
    def relays(self) -> list[RelayConfig]:
        return [parse_smtp_url(u) for u in self.smtp_urls]

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def zone_for(self, name: str | None) -> ZoneInfo:
        """A reader's zone; the clinic's when unknown (or, defensively, invalid)."""
        if name:
            try:
                return ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                pass
        return self.zone

    @property
    def sender_domain(self) -> str:
        return self.from_addr.rpartition("@")[2]

    @property
    def content_path(self) -> Path:
        """Where the admin's content lives and new content is written."""
        if self.content_dir:
            return Path(self.content_dir)
        # Always ./content: never write into the bundled folder (site-packages
        # when installed from a wheel); reads fall back to it via content_paths.
        return Path.cwd() / "content"

    @property
    def content_paths(self) -> tuple[Path, ...]:
        """Where content is looked up: the admin's folder first, then the bundled one.

        So importing articles into ./content/ never hides the bundled series
        and webinar; a series of the same name in ./content/ wins.
        """
        bundled = BUNDLED_CONTENT
        primary = self.content_path
        return (primary,) if primary.resolve() == bundled.resolve() else (primary, bundled)

    @property
    def https(self) -> bool:
        return self.base_url.startswith("https://")

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + "/" + path.lstrip("/")

    @property
    def appointment_link(self) -> str:
        """Where "Book an appointment" buttons go: ``appointment_url``, else our own page."""
        return self.appointment_url or self.url("/appointment")

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)


# Environment variable -> field.  The issue names the first eight; the rest
# follow the same FUNNEL_<FIELD> pattern.
ENV_NAMES = {f"FUNNEL_{f.name.upper()}": f.name for f in dataclasses.fields(Settings)}
ENV_NAMES["FUNNEL_FROM"] = "from_addr"
ENV_NAMES["FUNNEL_SMTP_URL"] = "smtp_urls"
ENV_NAMES.pop("FUNNEL_FROM_ADDR", None)
ENV_NAMES.pop("FUNNEL_SMTP_URLS", None)
FIELD_TO_ENV = {v: k for k, v in ENV_NAMES.items()}
TOML_ALIASES = {"from": "from_addr", "smtp_url": "smtp_urls"}


def _field_types() -> dict[str, object]:
    defaults = Settings()
    return {f.name: getattr(defaults, f.name) for f in dataclasses.fields(Settings)}


def _coerce(name: str, raw: object, where: str) -> object:
    """Turn a TOML or environment value into the field's type, or say why not."""
    default = _field_types()[name]
    try:
        if isinstance(default, bool):
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError
        if isinstance(default, int):
            if isinstance(raw, bool):
                raise ValueError
            return int(raw)
        if isinstance(default, float):
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if isinstance(default, tuple):
            if isinstance(raw, str):
                items = [p.strip() for p in raw.split(",")]
            elif isinstance(raw, list):
                items = [str(p).strip() for p in raw]
            else:
                raise ValueError
            return tuple(p for p in items if p)
        if isinstance(raw, str | int | float):
            return str(raw)
        raise ValueError
    except (ValueError, TypeError) as exc:
        kind = type(default).__name__.replace("tuple", "list")
        raise SettingsError(f"{where}: expected a {kind}, got {redact(repr(raw))}") from exc


def _split_from(s: Settings) -> Settings:
    """``FUNNEL_FROM="Back in Motion <news@clinic.example>"``: the display name
    goes to ``from_name`` (unless that is set), the address stays in ``from_addr``."""
    if "<" not in s.from_addr:
        return s
    if any(c in s.from_addr for c in "\r\n\0"):
        raise SettingsError(f"FUNNEL_FROM: {s.from_addr!r} contains a line break")
    name, addr = parseaddr(s.from_addr)
    if not addr or "@" not in addr:
        raise SettingsError(
            f"FUNNEL_FROM: {s.from_addr!r} is not of the form 'Name <address@domain>'"
        )
    return s.replace(from_addr=addr, from_name=s.from_name or name.strip())


def _validate(s: Settings, require_secret: bool = True) -> Settings:
    """Refuse a setting that cannot work, naming it; fill what dev mode implies."""
    s = _checked_identity(s)
    s = _checked_secret_keys(s, require_secret)
    _check_relays_and_zone(s)
    _check_numbers(s)
    _check_appointments(s)
    return _checked_urls(s)


def _env(name: str) -> str:
    return FIELD_TO_ENV.get(name, name)


def _checked_identity(s: Settings) -> Settings:
    """Database, site name, sender, postal address and base URL."""
    if not s.db:
        raise SettingsError("FUNNEL_DB: the database path is empty")
    if not s.site_name.strip():
        raise SettingsError("FUNNEL_SITE_NAME: the site name is empty")
    s = _split_from(s)
    try:
        validate_email(s.from_addr, check_deliverability=False)
    except EmailNotValidError as exc:
        raise SettingsError(f"FUNNEL_FROM: {s.from_addr!r} is not a valid email address ({exc})") from exc
    if not s.postal_address.strip():
        raise SettingsError(
            "FUNNEL_POSTAL_ADDRESS: a postal address is required in every bulk email footer"
        )
    parts = urlsplit(s.base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(
            f"FUNNEL_BASE_URL: {s.base_url!r} must be an absolute http:// or https:// URL"
        )
    return s


def _checked_secret_keys(s: Settings, require_secret: bool) -> Settings:
    if not s.secret_keys:
        if s.dev:
            s = s.replace(secret_keys=(DEV_SECRET_KEY,))
        elif require_secret:
            raise SettingsError(
                "FUNNEL_SECRET_KEYS: no secret key is set; generate one with "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        # else: `funnel init` and `funnel check` work without one (check reports it)
    elif not s.dev and DEV_SECRET_KEY in s.secret_keys:
        raise SettingsError("FUNNEL_SECRET_KEYS: the public dev key may only be used with FUNNEL_DEV=1")
    for key in s.secret_keys:
        if len(key) < 16:
            raise SettingsError("FUNNEL_SECRET_KEYS: each key must be at least 16 characters long")
    return s


def _check_relays_and_zone(s: Settings) -> None:
    if not s.smtp_urls:
        raise SettingsError("FUNNEL_SMTP_URL: at least one SMTP relay URL is required")
    for url in s.smtp_urls:
        parse_smtp_url(url)
    try:
        zone_name(s.timezone, "FUNNEL_TIMEZONE")
    except InputError as exc:
        raise SettingsError(str(exc)) from exc


def _check_numbers(s: Settings) -> None:
    """Counts, limits, hours and durations that must be in range."""
    for name in ("frequency_cap", "confirm_max_age_days", "batch_size", "max_attempts", "crash_limit"):
        if getattr(s, name) <= 0:
            raise SettingsError(f"{_env(name)}: must be greater than zero")
    if s.pending_retention_days < s.confirm_max_age_days:
        raise SettingsError(
            f"FUNNEL_PENDING_RETENTION_DAYS: {s.pending_retention_days:g} is shorter than "
            f"confirm_max_age_days ({s.confirm_max_age_days:g}); a signup must be kept at least "
            "as long as its confirm link works"
        )
    if not 0 <= s.trusted_proxies <= 5:
        raise SettingsError("FUNNEL_TRUSTED_PROXIES: must be a number of proxies from 0 to 5")
    if s.trusted_proxies:
        try:
            ipaddress.ip_address(s.trusted_proxy_address)
        except ValueError as exc:
            raise SettingsError(
                f"FUNNEL_TRUSTED_PROXY_ADDRESS: {s.trusted_proxy_address!r} is not an IP address "
                "(the address the reverse proxy connects from, e.g. 127.0.0.1)"
            ) from exc
    for name in (
        "server_threads",
        "server_connection_limit",
        "server_channel_timeout",
        "server_cleanup_interval",
        "server_backlog",
    ):
        if getattr(s, name) <= 0:
            raise SettingsError(f"{_env(name)}: must be greater than zero")
    if s.server_cleanup_interval > s.server_channel_timeout:
        raise SettingsError(
            "FUNNEL_SERVER_CLEANUP_INTERVAL: must not be longer than FUNNEL_SERVER_CHANNEL_TIMEOUT"
        )
    for name in ("healthz_min_free_mb", "healthz_worker_seconds"):
        if getattr(s, name) < 0:
            raise SettingsError(f"{_env(name)}: must not be negative")
    for name in ("signup_rate_per_minute", "max_request_bytes"):
        if getattr(s, name) <= 0:
            raise SettingsError(f"{_env(name)}: must be greater than zero")
    if s.min_form_seconds < 0:
        raise SettingsError("FUNNEL_MIN_FORM_SECONDS: must not be negative")
    for name in ("quiet_start_hour", "quiet_end_hour"):
        if not 0 <= getattr(s, name) <= 23:
            raise SettingsError(f"{_env(name)}: must be an hour from 0 to 23")
    for net in s.admin_allowed_ips:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError as exc:
            raise SettingsError(
                f"FUNNEL_ADMIN_ALLOWED_IPS: {net!r} is not an IP address or network (e.g. 10.0.0.0/8)"
            ) from exc


def _check_appointments(s: Settings) -> None:
    """The clinic's address, the retention period and the webhook."""
    if s.clinic_email:
        try:
            validate_email(s.clinic_email, check_deliverability=False)
        except EmailNotValidError as exc:
            raise SettingsError(
                f"FUNNEL_CLINIC_EMAIL: {s.clinic_email!r} is not a valid email address ({exc})"
            ) from exc
    if not s.appointment_reply_promise.strip() or any(c in s.appointment_reply_promise for c in "\r\n\0"):
        raise SettingsError(
            "FUNNEL_APPOINTMENT_REPLY_PROMISE: must be one line, e.g. 'within one working day'"
        )
    if s.appointment_retention_days <= 0:
        raise SettingsError("FUNNEL_APPOINTMENT_RETENTION_DAYS: must be greater than zero")
    url = s.appointment_webhook_url
    if url and (urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname):
        raise SettingsError(
            f"FUNNEL_APPOINTMENT_WEBHOOK_URL: {redact(url)!r} must be an http:// or https:// URL"
        )
    if s.appointment_webhook_secret and len(s.appointment_webhook_secret) < 16:
        raise SettingsError("FUNNEL_APPOINTMENT_WEBHOOK_SECRET: must be at least 16 characters long")


def _checked_urls(s: Settings) -> Settings:
    """CTA URLs (dev mode gets placeholders) and the DKIM setting set.

    The appointment button needs no placeholder: without ``appointment_url``
    it goes to the hosted page (``Settings.appointment_link``).
    """
    if s.dev:
        # Dev mode runs on embedded defaults: give the CTA buttons somewhere to go.
        s = s.replace(
            programme_url=s.programme_url or "https://clinic.example/28-day-programme",
        )
    for name in ("appointment_url", "programme_url"):
        value = getattr(s, name)
        if value and urlsplit(value).scheme not in ("http", "https"):
            raise SettingsError(f"{_env(name)}: {value!r} must be an http:// or https:// URL")
    if s.dkim_key_file and not (s.dkim_selector and s.dkim_domain):
        raise SettingsError("FUNNEL_DKIM_SELECTOR: DKIM needs a selector and a domain with the key file")
    return s


def config_path(environ: dict[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    return Path(environ.get("FUNNEL_CONFIG", "funnel.toml"))


def load_settings(
    environ: dict[str, str] | None = None, path: Path | None = None, require_secret: bool = True
) -> Settings:
    """Read ``funnel.toml`` (if present), apply ``FUNNEL_*`` overrides, validate.

    ``require_secret=False`` is for commands that sign nothing (``funnel init``,
    ``funnel check``): they work before a secret key is configured, and
    ``secret_keys`` is then empty (never the public dev key outside dev mode).
    """
    environ = dict(os.environ if environ is None else environ)
    path = path or config_path(environ)
    values: dict[str, object] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise SettingsError(f"{path}: not valid TOML ({exc})") from exc
        known = _field_types()
        for key, raw in data.items():
            name = TOML_ALIASES.get(key, key)
            if name not in known:
                raise SettingsError(f"{path}: unknown setting {key!r}")
            values[name] = _coerce(name, raw, f"{path}: {key}")
    for env_name, name in ENV_NAMES.items():
        if env_name in environ:
            values[name] = _coerce(name, environ[env_name], env_name)
    return _validate(Settings(**values), require_secret=require_secret)


#: Fields shown only as "set" / "not set" wherever settings are displayed.
SECRET_FIELDS = ("secret_keys",)


def effective(s: Settings) -> list[tuple[str, str, str]]:
    """(funnel.toml key, environment variable, value) for every setting, secrets hidden:
    the signing keys only as a count, passwords in relay URLs masked by :func:`redact`."""
    aliases = {v: k for k, v in TOML_ALIASES.items()}
    rows = []
    for f in dataclasses.fields(Settings):
        value = getattr(s, f.name)
        if f.name in SECRET_FIELDS:
            shown = f"{len(value)} key(s) set" if value else "not set"
        elif isinstance(value, tuple):
            shown = redact(", ".join(str(v) for v in value))
        else:
            shown = redact(str(value))
        rows.append((aliases.get(f.name, f.name), _env(f.name), shown))
    return rows


DEV_CONFIG = """\
# Written by `funnel init --dev` (`make up` runs it) for trying funnel on this
# machine: dev mode uses a public signing key and sends every message to the
# dev inbox of `funnel up`.  Never use this file in production (see README).
dev = true
db = {db}
"""


def write_dev_config(path: Path, db: Path) -> bool:
    """Write a dev-mode ``funnel.toml`` at ``path`` unless one exists.

    Returns True if it was written.  An existing file is never touched, so an
    admin's own settings survive ``make up``.
    """
    try:
        with open(path, "x", encoding="utf-8") as f:
            f.write(DEV_CONFIG.format(db=json.dumps(str(db))))
    except FileExistsError:
        return False
    except OSError as exc:
        raise SettingsError(f"{path}: cannot write the dev settings ({exc.strerror})") from exc
    return True


def test_settings(tmp_path: Path | str, **overrides) -> Settings:
    """Settings for tests and benchmarks: a temp database and a fixed key."""
    base = dict(
        db=str(Path(tmp_path) / "funnel.db"),
        secret_keys=("test-secret-key-0123456789",),
        # Not a reserved example name, so that `funnel check` and the preflight
        # pass: tests run the production path.  Nothing ever resolves or
        # contacts it (mail goes to a loopback sink).
        base_url="https://news.backinmotion-physio.co.uk",
        from_addr="news@backinmotion-physio.co.uk",
        site_name="Back in Motion Physiotherapy",
        postal_address="12 Harley Row, London W1 2AB",
        appointment_url="https://backinmotion-physio.co.uk/appointments",
        programme_url="https://backinmotion-physio.co.uk/28-day-programme",
    )
    base.update(overrides)
    return _validate(Settings(**base))


test_settings.__test__ = False  # not a pytest test

__all__ = [
    "Settings",
    "RelayConfig",
    "load_settings",
    "parse_smtp_url",
    "redact",
    "test_settings",
    "DEV_SECRET_KEY",
    "effective",
    "write_dev_config",
]
