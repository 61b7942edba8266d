"""The console's broadcasts screen: compose, preview, test send, schedule, pause, resume, cancel."""

# ruff: noqa: F811
from __future__ import annotations

import html
import re
from datetime import timedelta

import pytest
from admin_support import (  # noqa: F401 (fixtures)
    EMAIL,
    admin_user,
    console,
    fast_hash,
    signed_in,
)
from click_support import BODY as LINKS_BODY
from click_support import add_readers, click_links, path_of

from campaigns import broadcasts
from campaigns.sender import send_due
from campaigns.worker import tick
from funnel.db import iso
from subscribers import lifecycle

BODY = "Hello {{ first_name }}, the **hydrotherapy pool** reopens on Monday."


def add_reader(db, address: str, name: str, clock) -> int:
    sid = db.execute(
        "INSERT INTO subscribers (email, email_hash, name, status, created_at, updated_at) "
        "VALUES (?, ?, ?, 'active', ?, ?)",
        (address, lifecycle.email_hash(address), name, iso(clock()), iso(clock())),
    ).lastrowid
    db.execute("INSERT INTO subscriptions (subscriber_id, stream, status, updated_at) "
               "VALUES (?, 'broadcasts', 'subscribed', ?)", (sid, iso(clock())))
    return sid


def text(response) -> str:
    return html.unescape(response.get_data(as_text=True))


def campaigns(db) -> list[tuple]:
    return db.execute("SELECT id, status, subject FROM campaigns ORDER BY id").fetchall()


def compose(signed_in, **fields):
    token = signed_in.token("/admin/broadcasts/new")
    page = text(signed_in.get("/admin/broadcasts/new"))
    nonce = re.search(r'name="nonce" value="([^"]+)"', page).group(1)
    data = {"subject": "Pool news", "preheader": "Monday", "body": BODY, "segment": "all",
            "where": "", "nonce": nonce, **fields}
    return signed_in.post("/admin/broadcasts/new", data, token=token), data


def saved(signed_in, **fields) -> int:
    r, _ = compose(signed_in, **fields)
    assert r.status_code == 303, text(r)
    return int(r.headers["Location"].rstrip("/").split("/")[-1].split("?")[0])


def post(signed_in, cid: int, verb: str, **data):
    token = signed_in.token(f"/admin/broadcasts/{cid}")
    return signed_in.post(f"/admin/broadcasts/{cid}/{verb}", data, token=token)


def tomorrow(clock, hm: str) -> str:
    return f"{clock() + timedelta(days=1):%Y-%m-%d} {hm}"


def test_compose_page_lists_the_merge_tags_and_segments(signed_in, db, clock):
    add_reader(db, "a@example.com", "Ann", clock)
    page = text(signed_in.get("/admin/broadcasts/new"))
    assert "{{ first_name }}" in page and "{{ name }}" in page and "<option selected>all</option>" in page
    r = signed_in.get("/admin/broadcasts/count?segment=all")
    assert r.status_code == 200 and "1 reader would get it now" in text(r)
    r = signed_in.get("/admin/broadcasts/count?segment=nope")
    assert "no segment named 'nope'" in text(r)


def test_an_unknown_merge_tag_is_refused_before_saving(signed_in, db):
    r, _ = compose(signed_in, subject="Hi {{ nmae }}")
    page = text(r)
    assert r.status_code == 400
    assert "Subject: unknown merge tag {{ nmae }}" in page and "Hi {{ nmae }}" in page  # kept
    assert campaigns(db) == []
    r, _ = compose(signed_in, body="Dear {{ patient }}")
    assert r.status_code == 400 and "Message: unknown merge tag {{ patient }}" in text(r)
    assert campaigns(db) == []


def test_double_submit_of_compose_makes_one_draft(signed_in, db):
    r1, data = compose(signed_in)
    token = signed_in.token("/admin/broadcasts/new")
    r2 = signed_in.post("/admin/broadcasts/new", data, token=token)
    assert r1.headers["Location"] == r2.headers["Location"]
    assert len(campaigns(db)) == 1


def test_preview_is_the_rendered_email_at_two_widths(signed_in):
    token = signed_in.token("/admin/broadcasts/new")
    r = signed_in.post("/admin/broadcasts/preview",
                       {"subject": "Pool news for {{ name }}", "preheader": "", "body": BODY},
                       token=token)
    assert r.status_code == 200
    assert "'unsafe-inline'" in r.headers["Content-Security-Policy"]  # the email's own styles
    assert "script-src" not in r.headers["Content-Security-Policy"]  # default-src 'none'
    page = text(r)
    assert 'width="375"' in page and 'width="800"' in page
    assert "Pool news for Alex" in page
    assert "hydrotherapy pool</strong>" in page and "Hello Alex," in page  # the srcdoc, unescaped
    r = signed_in.post("/admin/broadcasts/preview", {"subject": "Hi {{ nmae }}", "body": "x"},
                       token=token)
    assert "unknown merge tag {{ nmae }}" in text(r)


def test_saved_preview_and_campaign_page(signed_in, db):
    cid = saved(signed_in)
    r = signed_in.get(f"/admin/broadcasts/{cid}/preview")
    assert r.status_code == 200 and "hydrotherapy pool" in text(r)
    page = signed_in.get(f"/admin/broadcasts/{cid}").get_data(as_text=True)
    assert "Pool news" in page and ">draft<" in page and "Send me a test" in page
    assert "Pool news" in signed_in.get("/admin/broadcasts/").get_data(as_text=True)


def test_test_send_reaches_the_admin_through_the_outbox(signed_in, db, settings, clock,
                                                       smtp_server):
    add_reader(db, "reader@example.com", "Reader", clock)
    cid = saved(signed_in)
    r = post(signed_in, cid, "test")
    assert r.status_code == 303 and "done=test" in r.headers["Location"]
    assert send_due(db, settings, clock).sent == 1
    (m,) = smtp_server.messages
    assert m.rcpt_tos == [EMAIL] and m.message["Subject"] == "[Test] Pool news"
    assert "hydrotherapy pool" in m.part("plain")
    assert broadcasts.get(db, cid).status == "draft"
    assert broadcasts.status(db, settings, cid, clock()).total == 0
    audit = db.execute("SELECT ref, data FROM events WHERE kind = 'admin' AND ref = 'broadcast_test'")
    assert len(audit.fetchall()) == 1


def test_schedule_pause_resume_cancel_change_the_db(signed_in, db, clock):
    cid = saved(signed_in)
    r = post(signed_in, cid, "schedule", when=tomorrow(clock, "23:59"), zone="utc",
             action="schedule")
    assert r.status_code == 303, text(r)
    c = broadcasts.get(db, cid)
    assert c.status == "scheduled" and c.send_at.startswith(tomorrow(clock, "23:59").replace(" ", "T"))
    assert post(signed_in, cid, "pause").status_code == 303
    assert broadcasts.get(db, cid).status == "paused"
    assert post(signed_in, cid, "resume").status_code == 303
    assert broadcasts.get(db, cid).status == "scheduled"
    r = post(signed_in, cid, "cancel", confirm="Pool")
    assert r.status_code == 400 and "type Pool news exactly" in text(r)
    assert broadcasts.get(db, cid).status == "scheduled"
    assert post(signed_in, cid, "cancel", confirm="pool news").status_code == 303
    assert broadcasts.get(db, cid).status == "cancelled"
    actions = [r[0] for r in db.execute("SELECT ref FROM events WHERE kind = 'admin' "
                                        "AND ref LIKE 'broadcast_%' ORDER BY id")]
    assert actions == ["broadcast_create", "broadcast_schedule", "broadcast_pause",
                       "broadcast_resume", "broadcast_cancel"]


def test_double_submit_of_schedule_schedules_once(signed_in, db, clock):
    cid = saved(signed_in)
    first = post(signed_in, cid, "schedule", when=tomorrow(clock, "23:59"), zone="utc",
                 action="schedule")
    assert first.status_code == 303
    send_at = broadcasts.get(db, cid).send_at
    again = post(signed_in, cid, "schedule", when=tomorrow(clock, "23:30"), zone="utc",
                 action="schedule")
    assert again.status_code == 400
    assert f"campaign {cid} is already scheduled; nothing was changed" in text(again)
    assert broadcasts.get(db, cid).send_at == send_at
    assert db.execute("SELECT COUNT(*) FROM events WHERE ref = 'broadcast_schedule'").fetchone()[0] == 1


@pytest.mark.parametrize("when, message", [
    ("whenever", "--at: 'whenever' is not a time"),
    ("2001-01-01 09:00", "is in the past"),
])
def test_bad_schedule_time_is_one_sentence_and_changes_nothing(signed_in, db, when, message):
    cid = saved(signed_in)
    r = post(signed_in, cid, "schedule", when=when, zone="clinic", action="schedule")
    assert r.status_code == 400 and message in text(r)
    assert broadcasts.get(db, cid).status == "draft"


def test_progress_fragment_polls_while_sending(signed_in, db, settings, clock):
    add_reader(db, "p@example.com", "P", clock)
    cid = saved(signed_in)
    post(signed_in, cid, "schedule", action="now", zone="clinic")
    broadcasts.queue(db, settings, cid, clock())
    r = signed_in.get(f"/admin/broadcasts/{cid}/progress")
    body = text(r)
    assert 'hx-trigger="every 5s"' in body and ">sending<" in body and "<td>queued</td><td>1</td>" in body


def test_a_draft_can_be_edited_until_it_is_scheduled(signed_in, db, clock):
    cid = saved(signed_in)
    page = text(signed_in.get(f"/admin/broadcasts/{cid}/edit"))
    assert "Edit the draft" in page and "hydrotherapy pool" in page
    token = signed_in.token(f"/admin/broadcasts/{cid}/edit")
    data = {"subject": "Pool news, {{ name }}", "preheader": "", "body": "Now *Tuesday*.",
            "segment": "all", "where": ""}
    r = signed_in.post(f"/admin/broadcasts/{cid}/edit", {**data, "body": "{{ oops }}"}, token=token)
    assert r.status_code == 400 and "unknown merge tag {{ oops }}" in text(r)
    assert broadcasts.get(db, cid).subject == "Pool news"
    r = signed_in.post(f"/admin/broadcasts/{cid}/edit", data, token=token)
    assert r.status_code == 303
    c = broadcasts.get(db, cid)
    assert (c.subject, c.body_md) == ("Pool news, {{ name }}", "Now *Tuesday*.")
    post(signed_in, cid, "schedule", action="now", zone="clinic")
    r = signed_in.post(f"/admin/broadcasts/{cid}/edit", data, token=token)
    assert r.status_code == 400 and "only a draft can be edited" in text(r)


# ----------------------------------------------------------------- A/B subjects and clicks
def ab_row(db, cid: int):
    return db.execute("SELECT subject_b, test_share, decide_after_seconds FROM ab_tests "
                      "WHERE campaign_id = ?", (cid,)).fetchone()


def test_composing_with_a_subject_b_makes_an_ab_test(signed_in, db):
    page = text(signed_in.get("/admin/broadcasts/new"))
    assert 'name="test_share" type="text" maxlength="8" value="20%"' in page
    assert 'name="decide_after" type="text" maxlength="12" value="4h"' in page
    cid = saved(signed_in, subject_b="Pool news for {{ first_name }}")
    assert ab_row(db, cid) == ("Pool news for {{ first_name }}", 0.2, 4 * 3600)
    plain = saved(signed_in, subject="Plain", nonce="another")
    assert ab_row(db, plain) is None  # no subject B: the defaults alone make no test
    page = text(signed_in.get(f"/admin/broadcasts/{cid}"))
    assert "A/B subjects" in page and "20% of the audience, decided 240 min after it starts" in page
    assert "Decision: after the test slices go out" in page


@pytest.mark.parametrize("fields, message", [
    ({"subject_b": "Pool B", "test_share": "120%"}, "Test share: '120%' is not a share"),
    ({"subject_b": "Pool B", "decide_after": "soon"}, "Decide after: 'soon' is not a wait"),
    ({"subject_b": "Pool B {{ nmae }}"}, "Subject B: unknown merge tag {{ nmae }}"),
    ({"subject_b": "Pool news"}, "Subject B: an A/B test needs two different"),
])
def test_bad_ab_fields_name_the_field_and_store_nothing(signed_in, db, fields, message):
    r, _ = compose(signed_in, **fields)
    page = text(r)
    assert r.status_code == 400 and message in page
    assert f'value="{fields["subject_b"]}"' in page  # kept for correcting
    assert campaigns(db) == [] and db.execute("SELECT COUNT(*) FROM ab_tests").fetchone()[0] == 0


def test_editing_a_draft_changes_or_drops_subject_b(signed_in, db):
    cid = saved(signed_in, subject_b="Pool B", test_share="30%", decide_after="90m")
    page = text(signed_in.get(f"/admin/broadcasts/{cid}/edit"))
    assert 'value="Pool B"' in page and 'value="30%"' in page and 'value="90m"' in page
    token = signed_in.token(f"/admin/broadcasts/{cid}/edit")
    data = {"subject": "Pool news", "preheader": "", "body": BODY, "segment": "all", "where": "",
            "subject_b": "Pool C", "test_share": "10", "decide_after": "1d"}
    r = signed_in.post(f"/admin/broadcasts/{cid}/edit", {**data, "test_share": "0%"}, token=token)
    assert r.status_code == 400 and "Test share: '0%'" in text(r)
    assert ab_row(db, cid) == ("Pool B", 0.3, 5400)
    assert signed_in.post(f"/admin/broadcasts/{cid}/edit", data, token=token).status_code == 303
    assert ab_row(db, cid) == ("Pool C", 0.1, 86400)
    r = signed_in.post(f"/admin/broadcasts/{cid}/edit", {**data, "subject_b": ""}, token=token)
    assert r.status_code == 303 and ab_row(db, cid) is None


BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/121.0"


def test_campaign_page_shows_per_link_clicks_and_the_decision(signed_in, db, settings, clock,
                                                              smtp_server):
    add_readers(db, clock, 20)
    cid = saved(signed_in, subject="Stretch with us", body=LINKS_BODY, subject_b="Walk with us",
                test_share="50%", decide_after="10m")
    post(signed_in, cid, "schedule", action="now", zone="clinic")
    assert broadcasts.queue(db, settings, cid, clock()) == 10
    send_due(db, settings, clock)
    got = {}
    for m in smtp_server.messages:
        got.setdefault(str(m.message["Subject"]), []).append(m)
    assert {s: len(v) for s, v in got.items()} == {"Stretch with us": 5, "Walk with us": 5}
    db.execute("UPDATE outbox SET sent_at = ? WHERE campaign_id = ?",
               (iso(clock() - timedelta(hours=1)), cid))  # long delivered: clicks are human

    def follow(message, index: int, agent: str = BROWSER) -> None:
        url = click_links(message)[index]
        r = signed_in.client.get(path_of(url), headers={"User-Agent": agent})
        assert r.status_code == 302

    for m in got["Walk with us"]:
        follow(m, 0)
    follow(got["Walk with us"][0], 2)
    follow(got["Stretch with us"][0], 2)
    follow(got["Stretch with us"][1], 0, agent="Barracuda Sentinel (EE)")  # a scanner
    body = text(signed_in.get(f"/admin/broadcasts/{cid}/progress"))
    assert "7 human clicks · 1 by link scanners (not counted)" in body
    links = re.findall(r'<td class="text">([^<]+)</td><td>(\d+)</td>',
                       body.split('id="links"')[1])
    assert links == [("https://backinmotion-physio.co.uk/stretch?a=1&b=2", "5"),
                     ("https://backinmotion-physio.co.uk/walking", "2")]
    variants = re.findall(r"<tr><td>([AB])</td><td class=\"text\">([^<]+)</td>"
                          r"<td>(\d+)</td><td>(\d+)</td><td>([^<]+)</td>", body)
    assert variants == [("A", "Stretch with us", "5", "1", "20.0%"),
                        ("B", "Walk with us", "5", "6", "100.0%")]
    assert "Decision: due" in body

    clock.advance(minutes=11)
    assert tick(db, settings, clock())["ab_decided"] == 1
    page = text(signed_in.get(f"/admin/broadcasts/{cid}"))
    assert "Decision: B goes to the rest; B had more human clicks (6 against 1)" in page
    assert "<td>queued</td><td>10</td>" in page  # the winner, queued to the other ten
