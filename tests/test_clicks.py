"""Click tracking: bulk links go through /c/, the redirect only reaches the message's own link,
the first human click counts, and a click on a site page carries attribution for 30 days."""

from __future__ import annotations

import random
import re
from datetime import timedelta

import pytest
from click_support import add_readers, click_links, html_links, path_of, send_broadcast

import web
from campaigns import clicks, report
from campaigns.sender import send_due
from funnel.db import iso, log_event, transaction
from subscribers import io, optin

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0"
FOOTER = ("/u/", "/p/", "/m/")


@pytest.fixture
def client(settings, clock):
    return web.create_app(settings, clock=clock).test_client()


def counts(db) -> dict[str, int]:
    return dict(db.execute("SELECT verdict, COUNT(*) FROM clicks GROUP BY verdict").fetchall())


def test_every_bulk_link_but_the_footer_goes_through_c(db, settings, clock, smtp_server):
    add_readers(db, clock, 1)
    send_broadcast(db, settings, clock)
    (msg,) = smtp_server.messages
    base = settings.base_url
    for url in html_links(msg) + msg.links():
        if not url.startswith("http"):
            continue
        assert url.startswith(base + "/c/") or any(url.startswith(base + p) for p in FOOTER), url
    footer = [u for u in msg.links() if any(u.startswith(base + p) for p in FOOTER)]
    assert len({u.split("/")[3] for u in footer}) == 3  # unsubscribe, preferences, view
    assert "/c/" not in msg.message["List-Unsubscribe"]
    # The three body links, the same index in both parts; one signature for the message.
    links = click_links(msg)
    assert len(links) == 3 and len({u.rsplit(".", 1)[0] for u in links}) == 1
    assert set(links) == {u for u in msg.links() if "/c/" in u}


def _untracked(settings, msg) -> list[str]:
    """http links of both parts that neither go through /c/ nor are footer links."""
    base = settings.base_url
    return [u for u in html_links(msg) + msg.links() if u.startswith("http")
            and not u.startswith(base + "/c/") and not any(u.startswith(base + p) for p in FOOTER)]


def test_a_series_step_from_the_real_signup_path_is_tracked(db, settings, clock, smtp_server):
    from campaigns.worker import tick
    from subscribers import lifecycle, tokens

    r = optin.signup(db, settings, "walker@example.com", clock())
    send_due(db, settings, clock)
    (confirm,) = smtp_server.messages
    assert not click_links(confirm) and "/confirm/" in " ".join(confirm.links())
    sub = lifecycle.get(db, r.subscriber_id)
    optin.confirm(db, settings, tokens.confirm_token(settings, sub.id, sub.confirm_nonce, clock()),
                  clock())
    tick(db, settings, clock())
    send_due(db, settings, clock)
    (part1,) = [m for m in smtp_server.messages if m is not confirm]
    assert db.execute("SELECT kind FROM outbox WHERE id = ?",
                      (int(part1.message["X-Funnel-Row"]),)).fetchone()[0] == "series"
    assert click_links(part1) and _untracked(settings, part1) == []


def test_confirmation_mail_is_not_tracked(db, settings, clock, smtp_server):
    optin.signup(db, settings, "new@example.com", clock(), source="test")
    send_due(db, settings, clock)
    (msg,) = smtp_server.messages
    assert msg.links() and not click_links(msg)


def test_tracking_off_leaves_links_alone(db, settings, clock, smtp_server):
    off = settings.replace(click_tracking=False)
    add_readers(db, clock, 1)
    send_broadcast(db, off, clock)
    (msg,) = smtp_server.messages
    assert not click_links(msg)
    assert "https://backinmotion-physio.co.uk/walking" in msg.links()


def test_click_redirects_counts_once_and_attributes(db, settings, clock, smtp_server, client):
    add_readers(db, clock, 1)
    cid = send_broadcast(db, settings, clock)
    (msg,) = smtp_server.messages
    clock.advance(minutes=5)
    targets = {}
    for url in click_links(msg):
        clock.advance(seconds=3)  # a person, not a crawler opening every link at once
        r = client.get(path_of(url), headers={"User-Agent": BROWSER})
        assert r.status_code == 302
        targets[r.headers["Location"]] = r
    assert set(targets) == {
        "https://backinmotion-physio.co.uk/stretch?a=1&b=2",
        settings.url("/appointment"),
        "https://backinmotion-physio.co.uk/walking",
    }
    # Only the site's own page gets the attribution cookie.
    cookie = targets[settings.url("/appointment")].headers["Set-Cookie"]
    assert cookie.startswith("funnel_attr=") and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Max-Age=2592000" in cookie
    assert "Set-Cookie" not in targets["https://backinmotion-physio.co.uk/walking"].headers
    assert counts(db) == {"human": 3}
    clock.advance(minutes=1)
    client.get(path_of(click_links(msg)[0]), headers={"User-Agent": BROWSER})
    assert counts(db) == {"human": 3, "repeat": 1}

    value = cookie.split(";")[0].split("=", 1)[1]
    attr = clicks.attribution(db, settings, value, clock())
    assert attr is not None and attr["attr_kind"] == "broadcast"
    assert attr["attr_broadcast_id"] == cid and attr["attr_series"] is None
    assert attr["attr_click_id"] == db.execute(
        "SELECT id FROM clicks WHERE link = ?", (settings.url("/appointment"),)
    ).fetchone()[0]
    assert clicks.attribution(db, settings, value, clock() + timedelta(days=29)) is not None
    assert clicks.attribution(db, settings, value, clock() + timedelta(days=31)) is None
    assert clicks.attribution(db, settings, value[:-2] + "xx", clock()) is None
    assert clicks.attribution(db, settings, None, clock()) is None


def test_view_in_browser_shows_the_same_tracked_links(db, settings, clock, smtp_server, client):
    add_readers(db, clock, 1)
    send_broadcast(db, settings, clock)
    (msg,) = smtp_server.messages
    view = next(u for u in msg.links() if u.startswith(settings.url("/m/")))
    page = client.get(path_of(view)).get_data(as_text=True)
    for url in click_links(msg):
        assert url.replace("&", "&amp;") in page or url in page


# ----------------------------------------------------------------- no open redirect
def _two_messages(db, settings, clock, smtp_server):
    add_readers(db, clock, 2)
    send_broadcast(db, settings, clock)
    small = "Just [one link](https://backinmotion-physio.co.uk/one).\n"
    send_broadcast(db, settings, clock, subject="One link", body=small)
    by_subject = {m.message["Subject"]: m for m in smtp_server.messages}
    clock.advance(minutes=5)
    return click_links(by_subject["Stretch with us"]), click_links(by_subject["One link"])


def test_tampered_tokens_and_foreign_indexes_are_404(db, settings, clock, smtp_server, client):
    three, one = _two_messages(db, settings, clock, smtp_server)
    assert len(three) == 3 and len(one) == 1
    token, index = path_of(three[0]).rsplit(".", 1)
    other = path_of(one[0]).rsplit(".", 1)[0]
    bad = [
        token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB") + "." + index,  # signature
        token.replace("/c/", "/c/x") + "." + index,  # payload
        token + ".99",  # unknown index
        token + ".",  # no index
        token,  # no index at all
        other + ".1",  # another message's token, an index only the first message has
        other + ".2",
        "/c/" + "a" * 40 + ".0",
        "/c/..0",
    ]
    for path in bad:
        for method in (client.get, client.head):
            r = method(path, headers={"User-Agent": BROWSER})
            assert r.status_code == 404, path
            assert "Location" not in r.headers
    assert counts(db) == {}
    assert client.get(other + ".0", headers={"User-Agent": BROWSER}).headers["Location"] == (
        "https://backinmotion-physio.co.uk/one"
    )


def test_erased_reader_and_deleted_campaign_are_404(db, settings, clock, smtp_server, client):
    three, one = _two_messages(db, settings, clock, smtp_server)
    first = smtp_server.messages[0].rcpt_tos[0]
    mine = [m for m in smtp_server.messages if m.rcpt_tos == [first]]
    io.erase(db, first, clock())
    for m in mine:
        for url in click_links(m):
            assert client.get(path_of(url), headers={"User-Agent": BROWSER}).status_code == 404
    others = [m for m in smtp_server.messages if m.rcpt_tos != [first]]
    one_link = next(m for m in others if m.message["Subject"] == "One link")
    cid = db.execute(
        "SELECT campaign_id FROM outbox WHERE to_addr IS NOT NULL AND campaign_id IS NOT NULL "
        "ORDER BY id DESC LIMIT 1"
    ).fetchone()[0]
    db.execute("PRAGMA foreign_keys = OFF")
    db.execute("DELETE FROM campaigns WHERE id = ?", (cid,))
    db.execute("PRAGMA foreign_keys = ON")
    r = client.get(path_of(click_links(one_link)[0]), headers={"User-Agent": BROWSER})
    assert r.status_code == 404
    assert counts(db) == {}


# ----------------------------------------------------------------- the report
def test_report_counts_clicks_per_email_and_top_links(db, settings, clock, smtp_server, client):
    add_readers(db, clock, 3)
    cid = send_broadcast(db, settings, clock)
    clock.advance(minutes=5)
    first = click_links(smtp_server.messages[0])
    for url in first[:2]:
        clock.advance(seconds=5)
        client.get(path_of(url), headers={"User-Agent": BROWSER})
    client.head(path_of(click_links(smtp_server.messages[1])[0]))
    rep = report.compute(db, settings, now=clock())
    (rate,) = rep.click_rates
    assert (rate.group, rate.sent, rate.clicked, rate.filtered) == ("broadcast", 3, 1, 1)
    assert rate.label == f"broadcast {cid}: Stretch with us"
    assert dict(rep.top_links) == {
        "https://backinmotion-physio.co.uk/stretch?a=1&b=2": 1, settings.url("/appointment"): 1,
    }
    assert next(s for s in rep.steps if s.label == "Clicked a link in an email").count == 1
    text = report.render_text(rep)
    assert "Click rate per email" in text and "33.3%" in text and "Top links" in text
    page = report.render_html(rep)
    assert "Click rate per email" in page and "Top links" in page
    assert "Stretch with us" in page and 'href="http' not in page


def _seed(db, clock, people: dict[str, list[int]]):
    now = clock()
    with transaction(db):
        for sid in sorted({s for sids in people.values() for s in sids}):
            db.execute(
                "INSERT INTO subscribers (id, email, email_hash, status, created_at, updated_at) "
                "VALUES (?, ?, ?, 'active', ?, ?)", (sid, f"p{sid}@example.com", f"h{sid}", iso(now), iso(now)),
            )  # fmt: skip
        for kind, sids in people.items():
            for sid in sids:
                if kind.startswith("part"):
                    log_event(db, "sent", now, sid, f"series:importance-of-exercise:0{kind[-1]}-x")
                else:
                    log_event(db, kind, now, sid, "webinar:spine-health")


def _percentages(rep) -> list[float]:
    return [p for _s, a, b in rep.rows() for p in (a, b) if p is not None]


def test_no_stage_shows_over_100_percent(db, settings, clock):
    # Everyone had part 1, one reader part 3, three were invited: once "300%".
    _seed(db, clock, {"subscribed": [1, 2, 3], "confirmed": [1, 2, 3], "part1": [1, 2, 3],
                      "part3": [1], "invited": [1, 2, 3], "registered": [2]})
    rep = report.compute(db, settings)
    rows = {s.label: (a, b) for s, a, b in rep.rows()}
    assert rows["Invited to a webinar"] == (100.0, 100.0)  # of part 1, which contains them
    assert rows["Registered"] == (pytest.approx(100 / 3), pytest.approx(100 / 3))
    assert max(_percentages(rep)) <= 100.0


@pytest.mark.parametrize("seed", range(25))
def test_no_percentage_over_100_for_any_event_log(db, settings, clock, seed):
    rnd = random.Random(seed)
    kinds = ["subscribed", "confirmed", "part1", "part2", "part3", "invited", "registered",
             "attended", "clicked_offer"]
    _seed(db, clock, {k: rnd.sample(range(1, 21), rnd.randint(0, 20)) for k in kinds})
    assert all(0 <= p <= 100.0 for p in _percentages(report.compute(db, settings)))


# ----------------------------------------------------------------- opens
def test_opens_are_off_by_default(db, settings, clock, smtp_server):
    add_readers(db, clock, 1)
    send_broadcast(db, settings, clock)
    assert "/px/" not in smtp_server.messages[0].part("html")


def test_opens_with_track_opens_flag_apple_and_are_reported_as_unreliable(
        db, settings, clock, smtp_server):
    on = settings.replace(track_opens=True)
    client = web.create_app(on, clock=clock).test_client()
    add_readers(db, clock, 3)
    send_broadcast(db, on, clock)
    pixels = [re.search(r'<img src="([^"]+/px/[^"]+)"', m.part("html")).group(1)
              for m in smtp_server.messages]
    assert len(set(pixels)) == 3
    assert "/px/" not in smtp_server.messages[0].part("plain")
    clock.advance(minutes=5)
    r = client.get(path_of(pixels[0]), headers={"User-Agent": BROWSER})
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/gif"
    client.get(path_of(pixels[1]), headers={"User-Agent": "Mozilla/5.0"})  # Apple's proxy
    client.get(path_of(pixels[1]), headers={"User-Agent": BROWSER},
               environ_base={"REMOTE_ADDR": "17.58.1.2"})
    assert client.get(path_of(pixels[2])[:-3] + "abc").status_code == 404
    assert db.execute("SELECT COUNT(*), SUM(apple) FROM opens").fetchone() == (3, 2)
    rep = report.compute(db, on, now=clock())
    (rate,) = rep.click_rates
    assert (rate.opened, rate.apple) == (2, 1)
    text = report.render_text(rep)
    assert "Opens (unreliable" in text and "opened 2 of 3; 1 only by Apple's proxy" in text
    assert "Opens (unreliable)" in report.render_html(rep)


# ----------------------------------------------------------------- per-recipient links
def test_an_invites_personal_link_redirects_to_that_readers_registration(
        db, settings, clock, smtp_server, client):
    from test_webinars import active, create

    from campaigns import webinars

    now = clock()
    sids = {e: active(db, settings, e, now) for e in ("ann@example.com", "ben@example.com")}
    send_due(db, settings, clock)
    smtp_server.clear()
    w = create(db, settings, now)
    webinars.invite(db, settings, w.slug, "all", now)
    send_due(db, settings, clock)
    clock.advance(minutes=5)
    for email, sid in sids.items():
        (msg,) = smtp_server.to(email)
        assert not [u for u in msg.links() if "/w/spine-health?t=" in u]  # only through /c/
        places = []
        for url in click_links(msg):
            clock.advance(seconds=5)
            places.append(client.get(path_of(url), headers={"User-Agent": BROWSER}).headers["Location"])
        mine = [p for p in places if "/w/spine-health?t=" in p]
        assert len(mine) == 1
        token = mine[0].split("?t=", 1)[1]
        assert webinars.read_invite_token(settings, w.slug, token, clock()) == sid
    links = {link for (link,) in db.execute("SELECT DISTINCT link FROM clicks")}
    assert "{register_url}" in links  # personal links are counted by name, not by their token
    assert not [x for x in links if "?t=" in x]
