"""Admin users, their sessions, the login throttle and the audit log.

The admin console (web/admin/) and ``funnel admin`` call these; all the SQL
for admin accounts lives here.

* **Passwords** are hashed with argon2id (argon2-cffi); a login whose stored
  hash was made with other parameters rehashes it (``check_needs_rehash``).
  A new password has at least 12 characters and is not in the bundled list of
  common passwords (funnel/common-passwords.txt).
* **Sessions** are rows keyed by a sha256 of the random id in the cookie, so a
  copy of the database holds no usable session.  Idle timeout 30 minutes,
  absolute 12 hours.  A session used from another address stays valid and the
  change is written to the audit log.
* **Throttle.** Failed logins are counted per submitted account name and per
  address, whether the account exists or not, so a lockout looks the same for
  both.  Too many in the window locks the key for ``LOCK``.
* **Audit.** Every admin action is an ``admin`` event: who, what, target,
  detail and IP in its data, the action in ``ref``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from importlib import resources

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from funnel.db import iso, log_event, parse_iso, transaction
from funnel.errors import InputError, NotFound

#: The hasher's parameters are argon2-cffi's defaults (argon2id, RFC 9106 low-memory).
HASHER = PasswordHasher()
MIN_PASSWORD = 12
IDLE_TIMEOUT = timedelta(minutes=30)
ABSOLUTE_TIMEOUT = timedelta(hours=12)
#: last_seen_at is written at most this often (one write a minute, not one per page).
TOUCH_EVERY = timedelta(seconds=60)
ACCOUNT_LIMIT = 5  # failures per account name in WINDOW before a lock
IP_LIMIT = 20  # failures per address in WINDOW before a lock
WINDOW = timedelta(minutes=15)
LOCK = timedelta(minutes=15)
TOTP_ISSUER = "funnel admin"


class LoginRefused(InputError):
    """A login that did not succeed; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


WRONG = "The email or password is wrong."
LOCKED = "Too many sign-in attempts. Please wait 15 minutes and try again."
BAD_CODE = "That code is wrong or has already been used. Enter the current 6-digit code."


@dataclass(frozen=True)
class Admin:
    id: int
    email: str
    has_totp: bool
    disabled: bool


@dataclass(frozen=True)
class Session:
    id_hash: str
    admin: Admin
    stage: str  # 'active' | 'totp' | 'enrol'
    pending_totp: str | None
    created_at: datetime


# ----------------------------------------------------------------- users
@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    text = resources.files("funnel").joinpath("common-passwords.txt").read_text(encoding="utf-8")
    lines = (line.strip().lower() for line in text.splitlines())
    return frozenset(line for line in lines if line and not line.startswith("# "))


def check_password(password: str, field: str = "password") -> None:
    if len(password) < MIN_PASSWORD:
        raise InputError(f"{field}: must be at least {MIN_PASSWORD} characters long")
    if password.lower() in common_passwords():
        raise InputError(f"{field}: this password is on the list of common passwords; choose another")


def clean_admin_email(raw: str) -> str:
    email = (raw or "").strip()
    if "@" not in email or len(email) > 254 or any(c.isspace() for c in email):
        raise InputError(f"email: {raw!r} is not an email address")
    return email.lower()


def _admin(row) -> Admin:
    return Admin(row["id"], row["email"], bool(row["totp_secret"]), row["disabled_at"] is not None)


def _user_row(db, email: str):
    return db.execute(
        "SELECT * FROM admin_users WHERE email = ?", (email.strip().lower(),)
    ).fetchone()


def _rows(db, sql: str, params=()) -> list[dict]:
    cur = db.execute(sql, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def _one(db, sql: str, params=()) -> dict | None:
    rows = _rows(db, sql, params)
    return rows[0] if rows else None


def get_user(db, email: str) -> Admin:
    row = _one(db, "SELECT * FROM admin_users WHERE email = ?", (email.strip().lower(),))
    if row is None:
        raise NotFound(f"email: no admin user {email!r}")
    return _admin(row)


def add_user(db, email: str, password: str, now: datetime) -> Admin:
    email = clean_admin_email(email)
    check_password(password)
    with transaction(db):
        if _user_row(db, email) is not None:
            raise InputError(f"email: an admin user {email!r} already exists")
        db.execute(
            "INSERT INTO admin_users (email, password_hash, created_at, updated_at) VALUES (?, ?, ?, ?)",
            (email, HASHER.hash(password), iso(now), iso(now)),
        )
        audit(db, "cli", "add_user", email, now)
    return get_user(db, email)


def list_users(db) -> list[dict]:
    return _rows(
        db,
        "SELECT u.email, u.totp_secret IS NOT NULL AS totp, u.disabled_at, u.created_at, "
        "(SELECT COUNT(*) FROM admin_sessions s WHERE s.user_id = u.id) AS sessions "
        "FROM admin_users u ORDER BY u.email",
    )


def disable_user(db, email: str, now: datetime, actor: str = "cli") -> Admin:
    user = get_user(db, email)
    with transaction(db):
        db.execute(
            "UPDATE admin_users SET disabled_at = ?, updated_at = ? WHERE id = ?",
            (iso(now), iso(now), user.id),
        )
        db.execute("DELETE FROM admin_sessions WHERE user_id = ?", (user.id,))
        audit(db, actor, "disable_user", user.email, now)
    return get_user(db, email)


def reset_password(db, email: str, password: str, now: datetime, actor: str = "cli") -> Admin:
    """A new password; every session of the user ends.  Also re-enables a disabled user."""
    user = get_user(db, email)
    check_password(password)
    with transaction(db):
        db.execute(
            "UPDATE admin_users SET password_hash = ?, disabled_at = NULL, updated_at = ? WHERE id = ?",
            (HASHER.hash(password), iso(now), user.id),
        )
        db.execute("DELETE FROM admin_sessions WHERE user_id = ?", (user.id,))
        audit(db, actor, "reset_password", user.email, now)
    return get_user(db, email)


def totp_setup(db, email: str, now: datetime, actor: str = "cli") -> str:
    """Give the user a new TOTP secret (replacing any old one); returns it."""
    user = get_user(db, email)
    secret = pyotp.random_base32()
    with transaction(db):
        db.execute(
            "UPDATE admin_users SET totp_secret = ?, totp_last_step = NULL, updated_at = ? WHERE id = ?",
            (secret, iso(now), user.id),
        )
        audit(db, actor, "totp_setup", user.email, now)
    return secret


def totp_uri(secret: str, email: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=TOTP_ISSUER)


# ----------------------------------------------------------------- audit
def audit(db, who: str, action: str, target: str | None, now: datetime, *,
          detail: str | None = None, ip: str | None = None, subscriber_id: int | None = None) -> None:
    """One ``admin`` event: who did what to which target, from where (in the caller's transaction)."""
    data = {"who": who, "target": target, "ip": ip}
    if detail:
        data["detail"] = detail
    log_event(db, "admin", now, subscriber_id=subscriber_id, ref=action,
              data=json.dumps(data, ensure_ascii=False))


def record(db, who: str, action: str, target: str | None, now: datetime, **kwargs) -> None:
    """:func:`audit` in its own transaction (for the doors)."""
    with transaction(db):
        audit(db, who, action, target, now, **kwargs)


def audit_log(db, limit: int = 50) -> list[dict]:
    rows = _rows(db, "SELECT at, ref AS action, data FROM events WHERE kind = 'admin' "
                     "ORDER BY id DESC LIMIT ?", (limit,))
    for row in rows:
        row.update(json.loads(row.pop("data") or "{}"))
    return rows


# ----------------------------------------------------------------- throttle
def _locked(db, key: str, now: datetime) -> bool:
    row = _one(db, "SELECT locked_until FROM admin_throttle WHERE key = ?", (key,))
    return bool(row and row["locked_until"] and parse_iso(row["locked_until"]) > now)


def _fail(db, key: str, limit: int, now: datetime) -> bool:
    """Count one failure for ``key``; True when it is now locked."""
    row = _one(db, "SELECT failures, first_at FROM admin_throttle WHERE key = ?", (key,))
    if row is None or parse_iso(row["first_at"]) <= now - WINDOW:
        failures, first = 1, now
    else:
        failures, first = row["failures"] + 1, parse_iso(row["first_at"])
    locked = iso(now + LOCK) if failures >= limit else None
    db.execute(
        "INSERT INTO admin_throttle (key, failures, first_at, locked_until) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (key) DO UPDATE SET failures = excluded.failures, first_at = excluded.first_at, "
        "locked_until = COALESCE(excluded.locked_until, admin_throttle.locked_until)",
        (key, 0 if locked else failures, iso(first), locked),
    )
    return locked is not None


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return HASHER.hash(secrets.token_urlsafe(16))


def _verify(stored: str | None, password: str) -> bool:
    """argon2 verify; an unknown user costs the same (a dummy hash is checked)."""
    try:
        return HASHER.verify(stored or _dummy_hash(), password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


# ----------------------------------------------------------------- login
def _hash_id(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def _new_session(db, user_id: int, stage: str, ip: str, user_agent: str, now: datetime,
                 pending_totp: str | None = None) -> str:
    session_id = secrets.token_urlsafe(32)
    db.execute(
        "INSERT INTO admin_sessions (id_hash, user_id, stage, pending_totp, created_at, last_seen_at, "
        "ip, last_ip, user_agent) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (_hash_id(session_id), user_id, stage, pending_totp, iso(now), iso(now), ip, ip,
         user_agent[:300]),
    )
    return session_id


def login(db, email: str, password: str, now: datetime, *, ip: str, user_agent: str = "",
          require_totp: bool = False, old_session: str | None = None) -> tuple[str, str]:
    """Check a password; returns (new session id, stage) or raises :class:`LoginRefused`.

    Unknown account, wrong password and disabled account answer the same
    (401, :data:`WRONG`); a locked account name or address answers 429
    (:data:`LOCKED`) whether the account exists or not, even with the right
    password.  A session id the browser already had is ended: the new one is
    minted here (no fixation).
    """
    name = (email or "").strip().lower()[:254]
    account_key, ip_key = f"account:{name}", f"ip:{ip}"
    refused: LoginRefused | None = None
    with transaction(db):  # failures are counted and audited even though the login is refused
        row = _one(db, "SELECT * FROM admin_users WHERE email = ?", (name,))
        locked = _locked(db, account_key, now) or _locked(db, ip_key, now)
        good = _verify(row["password_hash"] if row else None, password)  # always pay the hash
        if locked:
            audit(db, name, "login_locked", name, now, ip=ip)
            refused = LoginRefused(LOCKED, 429)
        elif not good or row["disabled_at"] is not None:
            now_locked = _fail(db, account_key, ACCOUNT_LIMIT, now)
            now_locked = _fail(db, ip_key, IP_LIMIT, now) or now_locked
            audit(db, name, "login_failed", name, now, ip=ip,
                  detail="locked" if now_locked else None)
            refused = LoginRefused(LOCKED if now_locked else WRONG, 429 if now_locked else 401)
        else:
            session_id, stage = _open(db, row, password, now, ip=ip, user_agent=user_agent,
                                      require_totp=require_totp, old_session=old_session)
    if refused is not None:
        raise refused
    return session_id, stage


def _open(db, row: dict, password: str, now: datetime, *, ip: str, user_agent: str,
          require_totp: bool, old_session: str | None) -> tuple[str, str]:
    """The password was right: rehash if due, clear the account's failures, mint a session."""
    if HASHER.check_needs_rehash(row["password_hash"]):
        db.execute("UPDATE admin_users SET password_hash = ?, updated_at = ? WHERE id = ?",
                   (HASHER.hash(password), iso(now), row["id"]))
    db.execute("DELETE FROM admin_throttle WHERE key = ?", (f"account:{row['email']}",))
    if old_session:
        db.execute("DELETE FROM admin_sessions WHERE id_hash = ?", (_hash_id(old_session),))
    if row["totp_secret"]:
        stage, pending = "totp", None
    elif require_totp:
        stage, pending = "enrol", pyotp.random_base32()
    else:
        stage, pending = "active", None
    session_id = _new_session(db, row["id"], stage, ip, user_agent, now, pending)
    audit(db, row["email"], "login" if stage == "active" else "login_password_ok", row["email"],
          now, ip=ip)
    return session_id, stage


def _code_step(secret: str, code: str, last_step: int | None, now: datetime) -> int | None:
    """The time step ``code`` is valid for (±1 step), unless it was used already."""
    code = "".join(c for c in (code or "") if c.isdigit())
    if len(code) != 6:
        return None
    totp = pyotp.TOTP(secret)
    step_now = totp.timecode(now)
    for step in (step_now, step_now - 1, step_now + 1):
        if secrets.compare_digest(totp.generate_otp(step), code):
            return None if last_step is not None and step <= last_step else step
    return None


def second_factor(db, session_id: str, code: str, now: datetime, *, ip: str) -> str:
    """Finish a login with a TOTP code (stage 'totp', or 'enrol' with the offered secret).

    Returns a NEW session id (the old row is deleted), or raises
    :class:`LoginRefused`.  Wrong codes count towards the account's lockout.
    """
    refused: LoginRefused | None = None
    with transaction(db):  # a wrong code is counted and audited, then refused
        session = _session_row(db, session_id)
        if session is None or session["stage"] == "active":
            raise LoginRefused("Your sign-in has expired. Please sign in again.", 401)
        user = _one(db, "SELECT * FROM admin_users WHERE id = ?", (session["user_id"],))
        account_key = f"account:{user['email']}"
        secret = session["pending_totp"] if session["stage"] == "enrol" else user["totp_secret"]
        step = _code_step(secret, code, user["totp_last_step"], now)
        if _locked(db, account_key, now):
            db.execute("DELETE FROM admin_sessions WHERE id_hash = ?", (session["id_hash"],))
            refused = LoginRefused(LOCKED, 429)
        elif step is None:
            locked = _fail(db, account_key, ACCOUNT_LIMIT, now)
            audit(db, user["email"], "totp_failed", user["email"], now, ip=ip)
            if locked:
                db.execute("DELETE FROM admin_sessions WHERE id_hash = ?", (session["id_hash"],))
            refused = LoginRefused(LOCKED if locked else BAD_CODE, 429 if locked else 401)
        else:
            new_id = _promote(db, session, user, secret, step, now, ip=ip)
    if refused is not None:
        raise refused
    return new_id


def _promote(db, session: dict, user: dict, secret: str, step: int, now: datetime, *,
             ip: str) -> str:
    """Both factors passed: store the secret and step, replace the session by a new one."""
    db.execute("UPDATE admin_users SET totp_secret = ?, totp_last_step = ?, updated_at = ? "
               "WHERE id = ?", (secret, step, iso(now), user["id"]))
    db.execute("DELETE FROM admin_sessions WHERE id_hash = ?", (session["id_hash"],))
    db.execute("DELETE FROM admin_throttle WHERE key = ?", (f"account:{user['email']}",))
    new_id = _new_session(db, user["id"], "active", ip, session["user_agent"], now)
    if session["stage"] == "enrol":
        audit(db, user["email"], "totp_enrolled", user["email"], now, ip=ip)
    audit(db, user["email"], "login", user["email"], now, ip=ip)
    return new_id


# ----------------------------------------------------------------- sessions
def _session_row(db, session_id: str) -> dict | None:
    return _one(db, "SELECT * FROM admin_sessions WHERE id_hash = ?", (_hash_id(session_id),))


def session(db, session_id: str | None, now: datetime, *, ip: str) -> Session | None:
    """The live session for a cookie value, or None (unknown, idle, too old, user disabled).

    Writes only when needed: last_seen_at at most once a minute, an expired
    row is deleted, and a use from another address is audited (once per change).
    """
    if not session_id or len(session_id) > 100:
        return None
    row = _session_row(db, session_id)
    if row is None:
        return None
    user = _one(db, "SELECT * FROM admin_users WHERE id = ?", (row["user_id"],))
    created, seen = parse_iso(row["created_at"]), parse_iso(row["last_seen_at"])
    expired = now - seen >= IDLE_TIMEOUT or now - created >= ABSOLUTE_TIMEOUT
    if expired or user["disabled_at"] is not None:
        with transaction(db):
            db.execute("DELETE FROM admin_sessions WHERE id_hash = ?", (row["id_hash"],))
        return None
    if now - seen >= TOUCH_EVERY or ip != row["last_ip"]:
        with transaction(db):
            db.execute("UPDATE admin_sessions SET last_seen_at = ?, last_ip = ? WHERE id_hash = ?",
                       (iso(now), ip, row["id_hash"]))
            if ip != row["last_ip"]:
                audit(db, user["email"], "session_new_ip", user["email"], now, ip=ip,
                      detail=f"session started from {row['ip']}, last used from {row['last_ip']}")
    return Session(row["id_hash"], _admin(user), row["stage"], row["pending_totp"],
                   created)


def logout(db, session_id: str, now: datetime, *, ip: str, everywhere: bool = False) -> None:
    row = _session_row(db, session_id or "")
    if row is None:
        return
    user = _one(db, "SELECT email FROM admin_users WHERE id = ?", (row["user_id"],))
    with transaction(db):
        if everywhere:
            db.execute("DELETE FROM admin_sessions WHERE user_id = ?", (row["user_id"],))
        else:
            db.execute("DELETE FROM admin_sessions WHERE id_hash = ?", (row["id_hash"],))
        audit(db, user["email"], "logout_everywhere" if everywhere else "logout", user["email"],
              now, ip=ip)


def csrf_binding(session: Session) -> str:
    """A value tying a form token to this session: a token from another session is stale."""
    return hashlib.sha256(("funnel.admin.csrf:" + session.id_hash).encode()).hexdigest()[:24]


__all__ = [
    "Admin",
    "LoginRefused",
    "Session",
    "add_user",
    "audit",
    "audit_log",
    "check_password",
    "csrf_binding",
    "disable_user",
    "get_user",
    "list_users",
    "login",
    "logout",
    "record",
    "reset_password",
    "second_factor",
    "session",
    "totp_setup",
    "totp_uri",
]
