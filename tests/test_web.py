"""The public site through Flask's test client, against a real SQLite file.

Every bad input gets a friendly page and changes nothing (the database dump is
compared before and after); mail is only queued, and checked at the live SMTP
server after ``send_due``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import free_port

import cli
import web
from campaigns.sender import send_due
from funnel import outbox
from funnel.db import connect
from funnel.settings import test_settings
from subscribers import lifecycle, optin, tokens
from web import common, pages

REPO = Path(__file__).resolve().parents[1]
CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


def dump(db) -> list[str]:
    return list(db.conn.iterdump())


class Site:
    """A test client that reads form tokens from pages, like a browser."""

    def __init__(self, app, clock):
        self.app = app
        self.client = app.test_client()
        self.clock = clock

    def get(self, path, **kw):
        return self.client.get(path, **kw)

    def token(self, path="/"):
        r = self.client.get(path)
        assert r.status_code == 200, r.status_code
        return CSRF_RE.search(r.get_data(as_text=True)).group(1)

    def signup(
        self,
        email="reader@example.com",
        name="Sam",
        tz="Europe/Paris",
        consent="yes",
        wait=3,
        **extra,
    ):
        token = self.token("/")
        self.clock.advance(seconds=wait)
        data = {"csrf": token, "email": email, "name": name, "tz": tz, "website": "", **extra}
        if consent:
            data["consent"] = consent
        return self.client.post("/subscribe", data=data)

    def post(self, path, data=None, token_from=None, **kw):
        data = dict(data or {})
        if token_from is not None:
            data["csrf"] = self.token(token_from)
        return self.client.post(path, data=data, **kw)


@pytest.fixture
def site(settings, clock):
    app = web.create_app(settings, clock=clock)
    yield Site(app, clock)
    app.extensions["funnel"].close()


def text(r) -> str:
    return r.get_data(as_text=True)


def active_subscriber(db, settings, clock, email="active@example.com", name="Ana") -> int:
    sid = optin.signup(db, settings, email, clock(), name=name).subscriber_id
    token = tokens.confirm_token(settings, sid, lifecycle.get(db, sid).confirm_nonce, clock())
    optin.confirm(db, settings, token, clock())
    return sid


# ----------------------------------------------------------------- signup
def test_signup_form_has_every_part(site, settings):
    r = site.get("/")
    html = text(r)
    assert r.status_code == 200
    assert 'name="email"' in html and 'type="email"' in html and 'name="name"' in html
    assert 'name="consent"' in html and settings.consent_text in html
    assert re.search(r'<input type="hidden" name="tz" value="" data-fill="timezone">', html)
    honeypot = re.search(r'<input id="website-signup" name="website"[^>]*>', html).group(0)
    assert 'tabindex="-1"' in honeypot and 'autocomplete="off"' in honeypot
    assert 'class="hp" aria-hidden="true"' in html
    assert '<script src="/static/tz.js" defer></script>' in html
    assert "<script>" not in html and "style=" not in html  # CSP: no inline script or style
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith("__Host-funnel_csrf=") and "Secure" in cookie
    assert "SameSite=Lax" in cookie and "HttpOnly" in cookie and "Path=/" in cookie


def test_signup_queues_confirmation_and_sends_nothing_inline(site, settings, smtp_server):
    r = site.signup("reader@example.com", name="Sam Lee", tz="America/New_York")
    assert r.status_code == 303 and r.headers["Location"] == "/check-your-inbox"
    page = site.get("/check-your-inbox")
    assert "Step 1 of 2" in text(page) and "Check your inbox" in text(page)
    db = connect(settings.db)
    sub = lifecycle.find(db, "reader@example.com")
    assert (sub.status, sub.name, sub.timezone, sub.source) == (
        "pending",
        "Sam Lee",
        "America/New_York",
        "web",
    )
    consent = db.execute(
        "SELECT action, ip, user_agent, consent_text_version FROM consent"
    ).fetchall()
    assert consent == [("requested", "127.0.0.1", consent[0][2], settings.consent_version)]
    assert consent[0][2].startswith("Werkzeug")
    assert db.execute("SELECT kind, status FROM outbox").fetchall() == [("confirm", "queued")]
    assert smtp_server.messages == []  # queued only; the worker sends


def test_consent_version_is_the_one_shown_on_the_form(settings, clock, tmp_path):
    app = web.create_app(settings, clock=clock)
    site = Site(app, clock)
    token = site.token("/")
    newer = web.create_app(settings.replace(consent_version="2027-01-v2"), clock=clock)
    clock.advance(seconds=5)
    r = newer.test_client()
    r.set_cookie(**_cookie(site))
    resp = r.post("/subscribe", data={"csrf": token, "email": "v@example.com", "consent": "yes"})
    assert resp.status_code == 303
    db = connect(settings.db)
    assert db.execute("SELECT consent_text_version FROM consent").fetchone() == (
        settings.consent_version,
    )


def _cookie(site):
    cookie = site.client.get_cookie("__Host-funnel_csrf")
    return {"key": cookie.key, "value": cookie.value}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"email": ""}, "An email address is required"),
        ({"email": "not-an-address"}, "is not a valid email address"),
        ({"email": "a@b@example.com"}, "is not a valid email address"),
        ({"name": "x" * 10_000}, "longer than 100 characters"),
        ({"name": "Sam\r\nBcc: victim@example.com"}, "line break"),
        ({"name": "Sam\u202egnp.exe"}, "The name contains a bidi control (U+202E)"),
        ({"name": "Sa\u200bm"}, "The name contains a zero-width character (U+200B)"),
        ({"consent": None}, "tick the box"),
    ],
)
def test_bad_signup_input_gets_a_friendly_page_and_changes_nothing(site, settings, fields, message):
    db = connect(settings.db)
    before = dump(db)
    args = {"email": "ok@example.com", **fields}
    r = site.signup(**args)
    assert r.status_code == 400
    html = text(r)
    assert message in html and "<form" in html and "Traceback" not in html
    assert dump(db) == before


def test_html_and_template_syntax_in_a_name_stay_text_in_page_and_email(
    site, settings, smtp_server
):
    evil = "{{7*7}}<script>alert(1)</script>"
    # On the page: the form comes back (bad email) with the name escaped in its value.
    r = site.signup("broken", name=evil)
    html = text(r)
    assert r.status_code == 400
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert" not in html
    assert "{{7*7}}" in html
    # In the email, received by a live SMTP server.
    assert site.signup("evil@example.com", name=evil).status_code == 303
    db = connect(settings.db)
    assert lifecycle.find(db, "evil@example.com").name == evil
    summary = send_due(db, settings, site.clock)
    assert summary.sent == 1
    (msg,) = smtp_server.messages
    body_html, body_text = msg.part("html"), msg.part("plain")
    assert "<script>alert" not in body_html and "&lt;script&gt;" in body_html
    assert "{{7*7}}" in body_html and "{{7*7}}" in body_text and "49" not in body_text


def test_unknown_time_zone_falls_back_to_the_default(site, settings):
    assert site.signup("tz@example.com", tz="Mars/Olympus_Mons").status_code == 303
    assert site.signup("tz2@example.com", tz="").status_code == 303
    db = connect(settings.db)
    assert lifecycle.find(db, "tz@example.com").timezone is None
    assert lifecycle.find(db, "tz2@example.com").timezone is None


def test_honeypot_and_too_fast_store_nothing_but_look_the_same(site, settings):
    db = connect(settings.db)
    before = dump(db)
    real = site.signup("someone@example.com", wait=3)
    db.execute("DELETE FROM outbox")  # compare against a dump without this signup
    bot = site.signup("bot@example.com", website="http://spam.example", wait=3)
    fast = site.signup("fast@example.com", wait=0.5)
    for r in (bot, fast):
        assert (r.status_code, r.headers["Location"]) == (
            real.status_code,
            real.headers["Location"],
        )
        assert text(r) == text(real)
    assert lifecycle.find(db, "bot@example.com") is None
    assert lifecycle.find(db, "fast@example.com") is None
    assert before != dump(db)  # only the real one was stored


def test_same_answer_whatever_the_address_state(site, settings, clock):
    db = connect(settings.db)
    active_subscriber(db, settings, clock, "active@example.com")
    sid = active_subscriber(db, settings, clock, "gone@example.com")
    lifecycle.unsubscribe(db, sid, clock())
    sid = active_subscriber(db, settings, clock, "bounced@example.com")
    lifecycle.suppress(db, sid, "bounced", clock())
    optin.signup(db, settings, "pending@example.com", clock())
    answers = []
    for email in (
        "new@example.com",
        "pending@example.com",
        "active@example.com",
        "gone@example.com",
        "bounced@example.com",
        "never-seen@example.com",
    ):
        r = site.signup(email)
        headers = {k: v for k, v in r.headers.items() if k not in ("Set-Cookie", "Date")}
        answers.append((r.status_code, headers, text(r)))
    assert all(a == answers[0] for a in answers), answers
    assert answers[0][0] == 303


def test_signup_answer_time_has_a_floor(site):
    started = time.perf_counter()
    site.signup("timing@example.com")
    assert time.perf_counter() - started >= common.SIGNUP_FLOOR_SECONDS


def test_rate_limit_per_address_answers_429_then_recovers(tmp_path, smtp_server, clock):
    s = test_settings(tmp_path, smtp_urls=(smtp_server.url,), signup_rate_per_minute=3)
    site = Site(web.create_app(s, clock=clock), clock)
    for i in range(3):
        assert site.signup(f"r{i}@example.com", wait=3).status_code == 303
    r = site.signup("r9@example.com", wait=3)
    assert r.status_code == 429 and "wait a minute" in text(r)
    assert lifecycle.find(connect(s.db), "r9@example.com") is None
    other = site.client.post(
        "/subscribe",
        data={"csrf": site.token(), "email": "x@example.com", "consent": "yes"},
        environ_base={"REMOTE_ADDR": "203.0.113.7"},
    )
    assert other.status_code == 303  # another address has its own window
    clock.advance(seconds=61)
    assert site.signup("r9@example.com", wait=3).status_code == 303


def test_limiter_forgets_old_hits():
    limiter = common.SlidingWindowLimiter(2, window=60, max_keys=3)
    assert limiter.allow("a", 0) and limiter.allow("a", 1) and not limiter.allow("a", 2)
    assert limiter.allow("a", 61)
    for i, key in enumerate("bcdef"):
        assert limiter.allow(key, 200 + i)
    assert len(limiter._hits) <= 3


# ----------------------------------------------------------------- CSRF, sizes, methods
def test_posts_without_a_valid_csrf_token_get_403_and_change_nothing(site, settings, clock):
    db = connect(settings.db)
    sid = active_subscriber(db, settings, clock)
    prefs = tokens.subscriber_token(settings, "preferences", sid, clock())
    unsub = tokens.subscriber_token(settings, "unsubscribe", sid, clock())
    confirm_sid = optin.signup(db, settings, "p@example.com", clock()).subscriber_id
    confirm = tokens.confirm_token(
        settings, confirm_sid, lifecycle.get(db, confirm_sid).confirm_nonce, clock()
    )
    before = dump(db)
    good = site.token("/")
    clock.advance(seconds=5)
    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    targets = [
        ("/subscribe", {"email": "x@example.com", "consent": "yes"}),
        (f"/p/{prefs}", {"name": "Mallory", "streams": []}),
        (f"/u/{unsub}", {"scope": "all"}),
        (f"/confirm/{confirm}", {}),
        ("/dev/inbox/clear", {}),
    ]
    for path, data in targets:
        assert site.client.post(path, data=data).status_code == 403, path  # no token
        r = site.client.post(path, data={**data, "csrf": forged})
        assert r.status_code == 403 and "This form has expired" in text(r), path
        # A token minted for another browser's cookie.
        stranger = web.create_app(settings, clock=clock).test_client()
        r = stranger.post(path, data={**data, "csrf": good})
        assert r.status_code == 403, path
        # A good token but the request comes from another site.
        r = site.client.post(
            path, data={**data, "csrf": good}, headers={"Origin": "https://evil.example"}
        )
        assert r.status_code == 403, path
    assert dump(db) == before


def test_form_tokens_expire_after_a_day(site, settings):
    token = site.token("/")
    site.clock.advance(hours=25)
    r = site.client.post(
        "/subscribe", data={"csrf": token, "email": "late@example.com", "consent": "yes"}
    )
    assert r.status_code == 403


def test_oversized_body_gets_413(site, settings):
    db = connect(settings.db)
    before = dump(db)
    token = site.token("/")
    site.clock.advance(seconds=5)
    r = site.client.post(
        "/subscribe",
        data={
            "csrf": token,
            "email": "big@example.com",
            "consent": "yes",
            "name": "x" * (settings.max_request_bytes + 10),
        },
    )
    assert r.status_code == 413 and "too" in text(r).lower() and "<h1>" in text(r)
    assert dump(db) == before


def test_wrong_methods_get_a_friendly_405(site):
    for method, path in [
        ("get", "/subscribe"),
        ("put", "/"),
        ("delete", "/subscribe"),
        ("get", "/subscribe/embed"),
        ("post", "/check-your-inbox"),
    ]:
        r = getattr(site.client, method)(path)
        assert r.status_code == 405, (method, path)
        assert "That didn&#39;t work" in text(r) and "Allow" in r.headers


def test_unknown_pages_get_a_friendly_404(site):
    r = site.get("/nope")
    assert r.status_code == 404 and "Page not found" in text(r)


def test_security_headers_everywhere(site, settings, clock):
    db = connect(settings.db)
    sid = active_subscriber(db, settings, clock)
    for path in [
        "/",
        "/check-your-inbox",
        "/nope",
        f"/p/{tokens.subscriber_token(settings, 'preferences', sid, clock())}",
        "/static/style.css",
    ]:
        r = site.get(path)
        h = r.headers
        r.close()
        csp = h["Content-Security-Policy"]
        assert (
            "default-src 'self'" in csp
            and "frame-ancestors 'none'" in csp
            and "script-src 'self'" in csp
        )
        assert "'unsafe-inline'" not in csp
        assert h["X-Content-Type-Options"] == "nosniff"
        assert h["Referrer-Policy"] == "no-referrer"
        assert h["X-Frame-Options"] == "DENY"


def test_cookie_is_not_secure_on_plain_http(tmp_path, smtp_server, clock):
    s = test_settings(tmp_path, smtp_urls=(smtp_server.url,), base_url="http://127.0.0.1:8000")
    r = web.create_app(s, clock=clock).test_client().get("/")
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith("funnel_csrf=") and "Secure" not in cookie and "SameSite=Lax" in cookie


# ----------------------------------------------------------------- confirm
def test_confirm_get_changes_nothing_and_post_confirms(site, settings, clock):
    db = connect(settings.db)
    sid = optin.signup(db, settings, "c@example.com", clock()).subscriber_id
    token = tokens.confirm_token(settings, sid, lifecycle.get(db, sid).confirm_nonce, clock())
    before = dump(db)
    for _ in range(3):
        r = site.get(f"/confirm/{token}")
        assert r.status_code == 200
    html = text(r)
    # One button the reader presses; no script that could press it for them.
    assert '<button type="submit" class="big">Confirm my subscription</button>' in html
    assert "<script" not in html and "submit()" not in html
    assert dump(db) == before and lifecycle.get(db, sid).status == "pending"
    r = site.post(f"/confirm/{token}", token_from=f"/confirm/{token}")
    assert r.status_code == 303 and r.headers["Location"] == "/confirmed"
    assert lifecycle.get(db, sid).status == "active"
    done = text(site.get("/confirmed"))
    assert "You're in" in done and "Part 1 is on its way" in done
    again = site.post(f"/confirm/{token}", token_from=f"/confirm/{token}")
    assert again.status_code == 400 and "doesn't work any more" in text(again)
    assert "Send me a new link" in text(again)


def test_bad_confirm_links_offer_a_new_link_and_reveal_nothing(site, settings, clock):
    db = connect(settings.db)
    sid = optin.signup(db, settings, "c@example.com", clock()).subscriber_id
    token = tokens.confirm_token(settings, sid, lifecycle.get(db, sid).confirm_nonce, clock())
    tampered = site.get(f"/confirm/{token[:-2]}xx")
    clock.advance(days=4)
    expired = site.get(f"/confirm/{token}")
    garbage = site.get("/confirm/hello")
    bodies = set()
    for r in (tampered, expired, garbage):
        assert r.status_code == 400
        html = text(r)
        assert "doesn't work any more" in html and 'name="email"' in html
        assert "c@example.com" not in html
        bodies.add(CSRF_RE.sub("", html))
    assert lifecycle.get(db, sid).status == "pending"


# ----------------------------------------------------------------- unsubscribe
def _queue(db, settings, sid, clock, stream, n=2):
    ids = []
    for i in range(n):
        ids.append(
            outbox.enqueue(
                db,
                settings,
                dedupe_key=f"t:{stream}:{sid}:{i}",
                kind="broadcast",
                subscriber_id=sid,
                to_addr="x@example.com",
                due_at=clock() + timedelta(days=1),
                now=clock(),
                stream=stream,
            )
        )
    return ids


def _statuses(db, ids):
    return [db.execute("SELECT status FROM outbox WHERE id = ?", (i,)).fetchone()[0] for i in ids]


def test_one_click_unsubscribes_from_the_emails_stream(settings, clock):
    app = web.create_app(settings, clock=clock)
    client = app.test_client()  # no cookies, no CSRF: like a mail provider
    db = connect(settings.db)
    sid = active_subscriber(db, settings, clock)
    series = "series:importance-of-exercise"
    series_rows = _queue(db, settings, sid, clock, series)
    news_rows = _queue(db, settings, sid, clock, "broadcasts")
    token = tokens.subscriber_token(settings, "unsubscribe", sid, clock(), st=series)
    for _ in range(3):  # repeatable
        r = client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
        assert r.status_code == 200 and "Location" not in r.headers
        assert "You're unsubscribed" in text(r)
    assert lifecycle.subscriptions(db, sid)[series]["status"] == "unsubscribed"
    assert lifecycle.subscriptions(db, sid)["broadcasts"]["status"] == "subscribed"
    assert _statuses(db, series_rows) == ["cancelled", "cancelled"]
    assert _statuses(db, news_rows) == ["queued", "queued"]
    assert lifecycle.get(db, sid).status == "active"


def test_one_click_without_a_stream_unsubscribes_from_everything(settings, clock):
    client = web.create_app(settings, clock=clock).test_client()
    db = connect(settings.db)
    sid = active_subscriber(db, settings, clock)
    rows = _queue(db, settings, sid, clock, "broadcasts") + _queue(
        db, settings, sid, clock, "webinars"
    )
    token = tokens.subscriber_token(settings, "unsubscribe", sid, clock())
    # RFC 8058 allows multipart/form-data too.
    r = client.post(
        f"/u/{token}", data={"List-Unsubscribe": "One-Click"}, content_type="multipart/form-data"
    )
    assert r.status_code == 200
    assert lifecycle.get(db, sid).status == "unsubscribed"
    assert set(_statuses(db, rows)) == {"cancelled"}
    assert client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert (
        client.post("/u/forged.token.here", data={"List-Unsubscribe": "One-Click"}).status_code
        == 400
    )


def test_unsubscribe_page_buttons(site, settings, clock):
    db = connect(settings.db)
    sid = active_subscriber(db, settings, clock)
    token = tokens.subscriber_token(settings, "unsubscribe", sid, clock(), st="broadcasts")
    before = dump(db)
    page = site.get(f"/u/{token}")
    html = text(page)
    assert page.status_code == 200 and dump(db) == before
    assert "Unsubscribe from News and occasional updates" in html
    assert "Unsubscribe from everything" in html and "Change my preferences instead" in html
    pref_link = re.search(r'href="(/p/[^"]+)"', html).group(1)
    assert site.get(pref_link).status_code == 200
    r = site.post(f"/u/{token}", {"scope": "stream"}, token_from=f"/u/{token}")
    assert (
        r.status_code == 200
        and lifecycle.subscriptions(db, sid)["broadcasts"]["status"] == "unsubscribed"
    )
    assert lifecycle.get(db, sid).status == "active"
    r = site.post(f"/u/{token}", {"scope": "all"}, token_from=f"/u/{token}")
    assert r.status_code == 200 and lifecycle.get(db, sid).status == "unsubscribed"
    assert site.post(f"/u/{token}", {"scope": "bogus"}, token_from=f"/u/{token}").status_code == 400


# ----------------------------------------------------------------- preferences
def test_preferences_change_streams_pause_zone_and_name(site, settings, clock):
    db = connect(settings.db)
    sid = active_subscriber(db, settings, clock, name="Ana")
    token = tokens.subscriber_token(settings, "preferences", sid, clock())
    page = text(site.get(f"/p/{token}"))
    assert 'value="broadcasts" checked' in page and 'value="Europe/London" selected' in page
    series = "series:importance-of-exercise"
    r = site.post(
        f"/p/{token}",
        {
            "streams": [series, "webinars"],
            "pause_weeks": "2",
            "timezone": "Asia/Tokyo",
            "name": "Ana Maria",
        },
        token_from=f"/p/{token}",
    )
    assert r.status_code == 303 and r.headers["Location"].endswith("saved=1")
    subs = lifecycle.subscriptions(db, sid)
    assert subs["broadcasts"]["status"] == "unsubscribed"
    assert subs[series]["status"] == "paused" and subs["webinars"]["status"] == "paused"
    assert subs[series]["paused_until"] == (clock() + timedelta(weeks=2)).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"
    )
    sub = lifecycle.get(db, sid)
    assert (sub.timezone, sub.name) == ("Asia/Tokyo", "Ana Maria")
    saved = text(site.get(r.headers["Location"]))
    assert "Your preferences are saved" in saved and "Keep my break until" in saved
    # Resume.
    site.post(
        f"/p/{token}",
        {
            "streams": [series, "webinars"],
            "pause_weeks": "0",
            "timezone": "Asia/Tokyo",
            "name": "Ana Maria",
        },
        token_from=f"/p/{token}",
    )
    assert lifecycle.subscriptions(db, sid)[series] == {
        "status": "subscribed",
        "paused_until": None,
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"timezone": "Nowhere/Land"}, "unknown time zone"),
        ({"timezone": "localtime"}, "unknown time zone"),
        ({"timezone": "right/UTC"}, "unknown time zone"),
        ({"name": "Ana\u2066x"}, "bidi control (U+2066)"),
        ({"streams": ["series:not-a-thing"]}, "not a list you can subscribe to"),
        ({"pause_weeks": "many"}, "not a number of weeks"),
        ({"pause_weeks": "99"}, "choose from 0 to 52"),
        ({"name": "<b>" * 200}, "longer than 100"),
    ],
)
def test_bad_preferences_change_nothing(site, settings, clock, values, message):
    db = connect(settings.db)
    sid = active_subscriber(db, settings, clock)
    token = tokens.subscriber_token(settings, "preferences", sid, clock())
    before = dump(db)
    data = {"streams": ["broadcasts"], "timezone": "Europe/London", "name": "Ana", **values}
    r = site.post(f"/p/{token}", data, token_from=f"/p/{token}")
    assert r.status_code == 400 and message.lower() in text(r).lower()
    assert "<b><b>" not in text(r)
    assert dump(db) == before


def test_unsubscribed_reader_sees_preferences_but_cannot_turn_streams_on(site, settings, clock):
    db = connect(settings.db)
    sid = active_subscriber(db, settings, clock)
    lifecycle.unsubscribe(db, sid, clock())
    token = tokens.subscriber_token(settings, "preferences", sid, clock())
    assert "unsubscribed from everything" in text(site.get(f"/p/{token}"))
    r = site.post(
        f"/p/{token}",
        {"streams": ["broadcasts"], "timezone": "Europe/London"},
        token_from=f"/p/{token}",
    )
    assert r.status_code == 400 and lifecycle.get(db, sid).status == "unsubscribed"


# ----------------------------------------------------------------- view in browser
def test_view_in_browser_renders_the_email_and_writes_nothing(site, settings, clock, smtp_server):
    assert site.signup("view@example.com", name="Vic").status_code == 303
    db = connect(settings.db)
    send_due(db, settings, clock)
    (msg,) = smtp_server.messages
    view = next(u for u in msg.links() if "/m/" in u)
    path = view.removeprefix(settings.base_url)
    before = dump(db)
    r = site.get(path)
    assert r.status_code == 200 and dump(db) == before
    html = text(r)
    assert "Vic" in html and "/confirm/" in html
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "sandbox" in csp
    # Another reader's row, a forged token and a row-less token are all 404.
    other = active_subscriber(db, settings, clock, "other@example.com")
    row = db.execute("SELECT id FROM outbox WHERE to_addr = 'view@example.com'").fetchone()[0]
    stolen = tokens.subscriber_token(settings, "view", other, clock(), r=row)
    assert site.get(f"/m/{stolen}").status_code == 404
    assert (
        site.get(f"/m/{tokens.subscriber_token(settings, 'view', other, clock(), r=0)}").status_code
        == 404
    )
    assert site.get(path[:-3] + "abc").status_code == 400


# ----------------------------------------------------------------- dev inbox
def test_dev_inbox_only_in_dev_mode_and_from_loopback(tmp_path, smtp_server, clock, settings):
    prod = web.create_app(settings, clock=clock).test_client()
    assert prod.get("/dev/inbox").status_code == 404
    dev = web.create_app(settings.replace(dev=True), clock=clock).test_client()
    assert dev.get("/dev/inbox").status_code == 200
    assert dev.get("/dev/inbox", environ_base={"REMOTE_ADDR": "192.0.2.10"}).status_code == 403
    assert dev.get("/dev/inbox", headers={"Host": "rebind.evil.example"}).status_code == 403
    assert dev.get("/dev/inbox/99").status_code == 404


# ----------------------------------------------------------------- embed snippet
def test_snippet_flow_stores_nothing_until_our_own_page_is_submitted(site, settings):
    snippet = pages.form_snippet(settings)
    assert f'action="{settings.base_url}/subscribe/embed"' in snippet
    assert (
        'name="website"' in snippet
        and 'tabindex="-1"' in snippet
        and settings.consent_text in snippet
    )
    db = connect(settings.db)
    before = dump(db)
    # A cross-origin post, no cookie, no token: shows our own prefilled form.
    r = site.client.post(
        "/subscribe/embed",
        data={"email": "emb@example.com", "name": "<i>Em</i>", "consent": "yes"},
        headers={"Origin": "https://clinic.example"},
    )
    html = text(r)
    assert (
        r.status_code == 200
        and 'value="emb@example.com"' in html
        and "&lt;i&gt;Em&lt;/i&gt;" in html
    )
    assert dump(db) == before
    token = CSRF_RE.search(html).group(1)
    site.clock.advance(seconds=1.5)
    r = site.client.post(
        "/subscribe", data={"csrf": token, "email": "emb@example.com", "consent": "yes"}
    )
    assert r.status_code == 303
    assert lifecycle.find(db, "emb@example.com").source == "embed"
    bot = site.client.post("/subscribe/embed", data={"email": "b@example.com", "website": "x"})
    assert bot.status_code == 303


def test_form_snippet_command(cli_env):
    r = CliRunner().invoke(cli.main, ["form", "snippet"])
    assert r.exit_code == 0, r.output
    assert (
        r.output.startswith("<!--") and f"{cli_env['FUNNEL_BASE_URL']}/subscribe/embed" in r.output
    )


def test_healthz_follows_the_worker_heartbeat_on_the_apps_clock(site, settings, clock):
    from funnel import health

    r = site.get("/healthz")
    assert r.status_code == 503 and r.mimetype == "text/plain"
    assert r.get_data(as_text=True).startswith("worker: has never ticked")
    db = connect(settings.db)
    health.beat(db, "worker", clock())
    r = site.get("/healthz")
    assert (r.status_code, r.get_data(as_text=True)) == (200, "ok\n")
    assert r.headers["Cache-Control"] == "no-store"
    clock.advance(seconds=settings.healthz_worker_seconds + 1)
    r = site.get("/healthz")
    assert r.status_code == 503
    assert r.get_data(as_text=True).startswith("worker: last tick 91 s ago")
    # The /healthz write test left its own stamp, at the app's (fake) time.
    assert health.last_beat(db, "web") == clock()


# ----------------------------------------------------------------- funnel up
@pytest.mark.slow
def test_funnel_up_serves_catches_mail_and_stops_on_ctrl_c(cli_env, tmp_path):
    port, smtp_port = free_port(), free_port()
    env = {
        **os.environ,
        **cli_env,
        "FUNNEL_DEV": "1",
        "FUNNEL_BASE_URL": f"http://127.0.0.1:{port}",
        "FUNNEL_SMTP_URL": f"smtp://127.0.0.1:{smtp_port}",
        "FUNNEL_DB": str(tmp_path / "up.db"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "up", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        out = "".join(lines)
        assert f"http://127.0.0.1:{port}/dev/inbox" in out, out
        assert f"smtp://127.0.0.1:{smtp_port}" in out and "applied" in out
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            assert r.status == 200 and b"consent" in r.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/dev/inbox", timeout=5) as r:
            assert b"Dev inbox" in r.read()
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, rest
    assert "stopped" in rest and "Traceback" not in rest


def test_group_commit_shares_transactions_and_isolates_a_bad_write(settings, clock):
    import threading

    from funnel.errors import InputError

    connect(settings.db, migrate=True).close()
    group = common.GroupCommit()
    results: dict[int, object] = {}

    def one(i: int) -> None:
        conn = connect(settings.db)
        email = "not-an-address" if i == 7 else f"g{i}@example.com"
        try:
            results[i] = group.run(conn, lambda d: optin.signup(d, settings, email, clock()).action)
        except InputError as exc:
            results[i] = exc
        finally:
            conn.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(results.pop(7), InputError)
    assert set(results.values()) == {"created"} and len(results) == 23
    db = connect(settings.db)
    assert db.execute("SELECT COUNT(*) FROM subscribers").fetchone()[0] == 23
    assert db.execute("SELECT COUNT(*) FROM outbox WHERE kind = 'confirm'").fetchone()[0] == 23
    # One batch with a bad write in the middle: the others are committed together.
    items = [
        common._Pending(lambda d, e=e: optin.signup(d, settings, e, clock()).action)
        for e in ("b1@example.com", "broken", "b2@example.com")
    ]
    common.GroupCommit._commit(db, items)
    assert [i.result for i in items] == ["created", None, "created"]
    assert isinstance(items[1].error, InputError) and all(i.done for i in items)
    assert lifecycle.find(db, "b2@example.com") is not None
