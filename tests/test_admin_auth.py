"""The admin console's login: passwords, sessions, TOTP, throttle and lockout, audit."""

# ruff: noqa: F811
from __future__ import annotations

import json
import time

import pyotp
import pytest
from admin_support import (  # noqa: F401 (fixtures)
    EMAIL,
    PASSWORD,
    Console,
    admin_user,
    console,
    fast_hash,
    signed_in,
)
from argon2 import PasswordHasher

from funnel.errors import InputError
from subscribers import admins
from web import create_app
from web.admin import auth


def audit_actions(db) -> list[str]:
    return [r["action"] for r in reversed(admins.audit_log(db, 100))]


def sessions(db) -> list[dict]:
    return [dict(zip(("id_hash", "stage"), r, strict=True))
            for r in db.execute("SELECT id_hash, stage FROM admin_sessions").fetchall()]


# ----------------------------------------------------------------- passwords
def test_a_password_must_be_long_and_not_common(db, clock, fast_hash):
    with pytest.raises(InputError, match="at least 12 characters"):
        admins.add_user(db, "a@clinic.example", "short-pass", clock())
    with pytest.raises(InputError, match="common passwords"):
        admins.add_user(db, "a@clinic.example", "Password1234", clock())
    assert admins.list_users(db) == []
    user = admins.add_user(db, "A@Clinic.example", PASSWORD, clock())
    assert user.email == "a@clinic.example"
    stored = db.execute("SELECT password_hash FROM admin_users").fetchone()[0]
    assert stored.startswith("$argon2id$") and PASSWORD not in stored


def test_login_rehashes_when_the_parameters_change(console, db, monkeypatch):
    before = db.execute("SELECT password_hash FROM admin_users").fetchone()[0]
    assert "t=1," in before
    monkeypatch.setattr(admins, "HASHER", PasswordHasher(time_cost=2, memory_cost=512, parallelism=1))
    assert console.login().status_code == 303
    after = db.execute("SELECT password_hash FROM admin_users").fetchone()[0]
    assert after != before and "t=2," in after and "m=512," in after
    assert admins.HASHER.verify(after, PASSWORD)


# ----------------------------------------------------------------- login
def test_login_sets_a_strict_host_cookie_and_opens_the_dashboard(console, db):
    assert console.get("/admin/").status_code == 302
    r = console.login()
    assert r.status_code == 303 and r.headers["Location"].endswith("/admin/")
    header = next(h for h in r.headers.getlist("Set-Cookie") if h.startswith("__Host-funnel_admin="))
    attributes = {a.strip().split("=")[0].lower() for a in header.split(";")[1:]}
    assert {"secure", "httponly", "path"} <= attributes and "domain" not in attributes
    assert "SameSite=Strict" in header and "Path=/" in header
    value = header.split(";")[0].split("=", 1)[1]
    # The database holds a hash of the id, never the id.
    (row,) = sessions(db)
    assert value not in row["id_hash"] and row["stage"] == "active"
    page = console.get("/admin/")
    assert page.status_code == 200 and "Dashboard" in page.get_data(as_text=True)
    assert "login" in audit_actions(db)


def test_wrong_password_and_unknown_user_get_the_same_answer(console, db, monkeypatch):
    monkeypatch.setattr(auth, "LOGIN_FLOOR_SECONDS", 0.2)
    answers = []
    for email, password in ((EMAIL, "not-the-password-1"), ("nobody@clinic.example", PASSWORD)):
        started = time.perf_counter()
        r = console.login(email, password)
        elapsed = time.perf_counter() - started
        body = r.get_data(as_text=True).replace(email, "EMAIL")
        body = body.split('name="csrf" value="')[0] + body.split('name="csrf" value="')[1].split('"', 1)[1]
        answers.append((r.status_code, body))
        assert elapsed >= 0.2
        granted = [h for h in r.headers.getlist("Set-Cookie")
                   if h.startswith("__Host-funnel_admin=") and not h.startswith("__Host-funnel_admin=;")]
        assert granted == []
    assert answers[0] == answers[1]
    assert answers[0][0] == 401 and admins.WRONG in answers[0][1]
    assert sessions(db) == []
    assert audit_actions(db).count("login_failed") == 2


def test_disabled_user_cannot_log_in(console, db, clock):
    admins.disable_user(db, EMAIL, clock())
    r = console.login()
    assert r.status_code == 401 and admins.WRONG in r.get_data(as_text=True)
    assert sessions(db) == []


def test_a_new_session_id_at_login(console, db):
    console.client.set_cookie("__Host-funnel_admin", "planted-by-an-attacker",
                              domain="news.backinmotion-physio.co.uk", secure=True)
    assert console.login().status_code == 303
    assert console.session_cookie().value != "planted-by-an-attacker"
    first = console.session_cookie().value
    assert console.login().status_code == 303  # logging in again: another id, the old row gone
    assert console.session_cookie().value != first
    assert len(sessions(db)) == 1


# ----------------------------------------------------------------- throttle
def test_account_lockout_hides_whether_the_account_exists(console, db, clock):
    for email in (EMAIL, "ghost@clinic.example"):
        codes = [console.login(email, "wrong-password-xyz").status_code for _ in range(admins.ACCOUNT_LIMIT)]
        assert codes == [401] * (admins.ACCOUNT_LIMIT - 1) + [429]
    # Locked: the right password is refused the same way as for the unknown account.
    known, unknown = console.login(), console.login("ghost@clinic.example", PASSWORD)
    assert known.status_code == unknown.status_code == 429
    assert admins.LOCKED in known.get_data(as_text=True)
    assert admins.LOCKED in unknown.get_data(as_text=True)
    assert sessions(db) == []
    clock.advance(minutes=16)
    assert console.login().status_code == 303


def test_per_ip_lockout_across_accounts(console, db, clock):
    for i in range(admins.IP_LIMIT - 1):
        assert console.login(f"guess{i}@clinic.example", "wrong-password-xyz").status_code == 401
    assert console.login("guess-last@clinic.example", "wrong-password-xyz").status_code == 429
    assert console.login().status_code == 429  # the right password, from the locked address
    other = Console(console.app, ip="198.51.100.7")
    assert other.login().status_code == 303  # another address is not affected
    clock.advance(minutes=16)
    assert console.login().status_code == 303


def test_failures_age_out_of_the_window(console, clock):
    for _ in range(admins.ACCOUNT_LIMIT - 1):
        assert console.login(EMAIL, "wrong-password-xyz").status_code == 401
    clock.advance(minutes=16)
    for _ in range(admins.ACCOUNT_LIMIT - 1):
        assert console.login(EMAIL, "wrong-password-xyz").status_code == 401
    assert console.login().status_code == 303


# ----------------------------------------------------------------- timeouts
def test_idle_timeout(signed_in, clock):
    clock.advance(minutes=29)
    assert signed_in.get("/admin/").status_code == 200
    clock.advance(minutes=29)  # active 29 minutes ago: still fine
    assert signed_in.get("/admin/").status_code == 200
    clock.advance(minutes=31)
    r = signed_in.get("/admin/")
    assert r.status_code == 302 and "/admin/login" in r.headers["Location"]


def test_absolute_timeout(signed_in, clock):
    started = clock()
    while clock() - started < admins.ABSOLUTE_TIMEOUT:  # busy all day, never idle
        assert signed_in.get("/admin/").status_code == 200
        clock.advance(minutes=20)
    r = signed_in.get("/admin/")
    assert r.status_code == 302 and "/admin/login" in r.headers["Location"]


def test_logout_and_logout_everywhere(console, db, clock):
    other = Console(console.app, ip="198.51.100.7")
    assert console.login().status_code == 303 and other.login().status_code == 303
    assert len(sessions(db)) == 2
    r = console.post("/admin/logout", token=console.token("/admin/"))
    assert r.status_code == 303 and len(sessions(db)) == 1
    assert console.get("/admin/").status_code == 302
    assert other.get("/admin/").status_code == 200
    assert console.login().status_code == 303
    console.post("/admin/logout", {"everywhere": "yes"}, token=console.token("/admin/"))
    assert sessions(db) == []
    assert other.get("/admin/").status_code == 302
    assert {"logout", "logout_everywhere"} <= set(audit_actions(db))


def test_a_session_used_from_another_address_stays_valid_and_is_logged(signed_in, db):
    stolen = signed_in.session_cookie().value
    thief = Console(signed_in.app, ip="192.0.2.99")
    thief.client.set_cookie("__Host-funnel_admin", stolen, domain="news.backinmotion-physio.co.uk",
                            secure=True)
    assert thief.get("/admin/").status_code == 200
    (row,) = [r for r in admins.audit_log(db) if r["action"] == "session_new_ip"]
    assert row["ip"] == "192.0.2.99" and row["who"] == EMAIL and "203.0.113.5" in row["detail"]
    assert thief.get("/admin/").status_code == 200  # logged once per change
    assert audit_actions(db).count("session_new_ip") == 1


# ----------------------------------------------------------------- CSRF
def test_a_post_with_a_token_from_another_session_is_refused(console, db):
    console.login()
    old_token = console.token("/admin/")
    console.login()  # a new session: the old page's token is stale
    r = console.post("/admin/logout", token=old_token)
    assert r.status_code == 403 and len(sessions(db)) == 1
    assert console.post("/admin/logout").status_code == 403  # no token at all


# ----------------------------------------------------------------- TOTP
def test_totp_is_asked_when_the_user_has_it(console, db, clock):
    secret = admins.totp_setup(db, EMAIL, clock())
    r = console.login()
    assert r.status_code == 303 and "/admin/login/code" in r.headers["Location"]
    # The half-signed-in session opens nothing else.
    assert console.get("/admin/").headers["Location"].endswith("/admin/login/code")
    wrong = console.post("/admin/login/code", {"code": "000000"}, token=console.token("/admin/login/code"))
    assert wrong.status_code == 401
    half = console.session_cookie().value
    ok = console.code(secret, clock())
    assert ok.status_code == 303 and ok.headers["Location"].endswith("/admin/")
    assert console.session_cookie().value != half  # a new id once both factors passed
    assert console.get("/admin/").status_code == 200
    # The same code cannot be used twice.
    again = Console(console.app)
    again.login()
    assert again.code(secret, clock()).status_code == 401


def test_required_totp_sends_a_user_without_it_to_enrol(settings, db, clock, admin_user):
    app = create_app(settings.replace(admin_require_totp=True), clock=clock)
    console = Console(app)
    r = console.login()
    assert "/admin/login/enrol" in r.headers["Location"]
    page = console.get("/admin/login/enrol")
    body = page.get_data(as_text=True)
    assert page.status_code == 200 and "<svg" in body
    secret = body.split('id="secret">')[1].split("<")[0]
    assert console.get("/admin/").status_code == 302
    done = console.post("/admin/login/enrol", {"code": pyotp.TOTP(secret).at(clock())},
                        token=console.token("/admin/login/enrol"))
    assert done.status_code == 303
    assert console.get("/admin/").status_code == 200
    assert admins.get_user(db, EMAIL).has_totp
    assert "totp_enrolled" in audit_actions(db)


def test_audit_rows_say_who_what_when_and_where(console, db, clock):
    console.login(EMAIL, "wrong-password-xyz")
    console.login()
    rows = db.execute("SELECT at, ref, data FROM events WHERE kind = 'admin' ORDER BY id").fetchall()
    actions = [r[1] for r in rows]
    assert actions[-2:] == ["login_failed", "login"]
    data = json.loads(rows[-1][2])
    assert data == {"who": EMAIL, "target": EMAIL, "ip": "203.0.113.5"}
    assert rows[-1][0].startswith(clock().strftime("%Y-%m-%dT%H:%M"))


# ----------------------------------------------------------------- CLI
def test_cli_manages_users(cli_env, db, fast_hash, tmp_path):
    from click.testing import CliRunner

    import cli

    def run(*args, input=None):
        return CliRunner().invoke(cli.main, list(args), input=input)

    weak = run("admin", "add-user", EMAIL, input="Password1234\nPassword1234\n")
    assert weak.exit_code == 1 and "common passwords" in weak.output
    done = run("admin", "add-user", EMAIL, input=f"{PASSWORD}\n{PASSWORD}\n")
    assert done.exit_code == 0, done.output
    assert PASSWORD not in done.output  # the prompt never echoes it
    assert admins.get_user(db, EMAIL).email == EMAIL
    listed = run("admin", "list-users")
    assert EMAIL in listed.output and "active" in listed.output and "totp off" in listed.output
    qr = tmp_path / "totp.svg"
    setup = run("admin", "totp-setup", EMAIL, "--qr", str(qr))
    assert setup.exit_code == 0 and qr.read_text().startswith("<?xml") and "<svg" in qr.read_text()
    secret = setup.output.split("key ")[1].split()[0]
    assert pyotp.TOTP(secret).now().isdigit() and admins.get_user(db, EMAIL).has_totp
    assert run("admin", "disable-user", EMAIL).exit_code == 0
    assert admins.get_user(db, EMAIL).disabled
    again = run("admin", "reset-password", EMAIL, input="another-long-phrase-7\nanother-long-phrase-7\n")
    assert again.exit_code == 0 and not admins.get_user(db, EMAIL).disabled
    for command in ("add-user", "list-users", "disable-user", "reset-password", "totp-setup"):
        assert "Example:" in run("admin", command, "--help").output


def test_migration_widens_the_events_check_keeping_rows_and_indexes(db, clock):
    from funnel import db as schema

    sql = db.execute("SELECT sql FROM sqlite_master WHERE name = 'events'").fetchone()[0]
    old = sql.replace(", 'admin'", "")
    assert old != sql
    with schema.transaction(db):  # an events table as it was before migration 0021
        db.execute("ALTER TABLE events RENAME TO events_before")
        db.execute(old)
        db.execute("INSERT INTO events SELECT * FROM events_before")
        db.execute("DROP TABLE events_before")
        db.execute("CREATE INDEX events_kind_at ON events(kind, at)")
        db.execute("CREATE INDEX events_subscriber ON events(subscriber_id)")
        schema.log_event(db, "subscribed", clock(), None, "web")
    with pytest.raises(Exception, match="CHECK"):
        schema.log_event(db, "admin", clock())
    with schema.transaction(db):
        schema._widen_event_kinds(db)
    schema.log_event(db, "admin", clock(), ref="login")
    assert [r[0] for r in db.execute("SELECT kind FROM events ORDER BY id")][-2:] == ["subscribed", "admin"]
    indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'events' "
                                        "AND type = 'index'")}
    assert {"events_kind_at", "events_subscriber"} <= indexes
