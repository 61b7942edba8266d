"""A/B subjects on a fake clock: equal test slices, a decision by human clicks, the winner to the rest."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from click_support import BODY, add_readers, click_links, path_of

import web
from campaigns import broadcasts, report
from campaigns.sender import send_due
from campaigns.worker import tick
from funnel.db import parse_iso
from funnel.errors import InputError

BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/121.0"


@pytest.fixture
def client(settings, clock):
    return web.create_app(settings, clock=clock).test_client()


def start(db, settings, clock, **options) -> int:
    cid = broadcasts.create(
        db, settings, clock(), subject="Back pain: three small habits", body_md=BODY,
        ab_subjects=("Your back will thank you for these",), **options,
    )
    broadcasts.schedule_campaign(db, settings, cid, clock(), send_now=True)
    return cid


def click(client, clock, messages, n: int) -> None:
    """One reader's click on the first link of each of ``n`` messages, a minute apart."""
    for msg in messages[:n]:
        clock.advance(minutes=1)
        r = client.get(path_of(click_links(msg)[0]), headers={"User-Agent": BROWSER})
        assert r.status_code == 302


def by_subject(smtp_server) -> dict[str, list]:
    out: dict[str, list] = {}
    for m in smtp_server.messages:
        out.setdefault(str(m.message["Subject"]), []).append(m)
    return out


A, B = "Back pain: three small habits", "Your back will thank you for these"


def test_b_wins_and_goes_to_the_remaining_800(db, settings, clock, smtp_server, client, run):
    add_readers(db, clock, 1000)
    cid = start(db, settings, clock, test_share="20%", decide_after="4h")
    assert broadcasts.queue(db, settings, cid, clock()) == 200
    assert broadcasts.queue(db, settings, cid, clock()) == 0  # the rest waits for the decision
    send_due(db, settings, clock)
    test = by_subject(smtp_server)
    assert {s: len(m) for s, m in test.items()} == {A: 100, B: 100}
    tested = {m.rcpt_tos[0] for m in smtp_server.messages}

    clock.advance(minutes=30)
    click(client, clock, test[B], 12)
    click(client, clock, test[A], 4)
    assert tick(db, settings, clock())["ab_decided"] == 0  # not before 4 hours
    st = broadcasts.status(db, settings, cid, clock())
    assert (st.variants["A"]["human_clicks"], st.variants["B"]["human_clicks"]) == (4, 12)
    assert st.variants["B"]["rate"] == 12.0 and not st.finished

    clock.set(parse_iso(st.ab.decide_at))
    assert tick(db, settings, clock())["ab_decided"] == 1
    smtp_server.clear()
    send_due(db, settings, clock)
    rest = smtp_server.messages
    assert len(rest) == 800
    assert Counter(str(m.message["Subject"]) for m in rest) == {B: 800}
    assert not tested & {m.rcpt_tos[0] for m in rest}  # nobody gets it twice

    tick(db, settings, clock())
    out = run("campaign", "status", cid).output
    assert "variant A  sent 100  human clicks 4  click rate 4.0%" in out
    assert "variant B  sent 100  human clicks 12  click rate 12.0%" in out
    assert "decision: B goes to the rest; B had more human clicks (12 against 4)" in out
    assert "finished: yes" in out


@pytest.mark.parametrize(
    ("a_clicks", "b_clicks", "reason"),
    [(3, 3, "a tie (3 human clicks each): A goes"),
     (0, 2, "too few human clicks to decide (2, fewer than 5): A goes")],
)
def test_ties_and_low_counts_fall_back_to_a(db, settings, clock, smtp_server, client, run,
                                           a_clicks, b_clicks, reason):
    add_readers(db, clock, 100)
    cid = start(db, settings, clock, test_share="20%", decide_after="1h")
    broadcasts.queue(db, settings, cid, clock())
    send_due(db, settings, clock)
    test = by_subject(smtp_server)
    assert {s: len(m) for s, m in test.items()} == {A: 10, B: 10}
    clock.advance(minutes=5)
    click(client, clock, test[A], a_clicks)
    click(client, clock, test[B], b_clicks)
    # Scanner clicks never decide anything.
    for m in test[B]:
        client.head(path_of(click_links(m)[0]))
    clock.advance(hours=1)
    tick(db, settings, clock())
    smtp_server.clear()
    send_due(db, settings, clock)
    assert Counter(str(m.message["Subject"]) for m in smtp_server.messages) == {A: 80}
    assert broadcasts.ab_test(db, cid).reason == reason
    assert f"decision: A goes to the rest; {reason}" in run("campaign", "status", cid).output
    rep = report.compute(db, settings, now=clock())
    assert f"broadcast {cid} A/B subjects: A went to the rest; {reason}" in rep.notes
    assert reason in report.render_text(rep)


def test_a_local_campaign_sends_the_winner_at_each_readers_local_time(db, settings, clock):
    ids = add_readers(db, clock, 40)
    db.execute("UPDATE subscribers SET timezone = 'Asia/Tokyo' WHERE id = ?", (ids[0],))
    cid = broadcasts.create(db, settings, clock(), subject="A", body_md=BODY, ab_subjects=("B",),
                            test_share="50%", decide_after="2h")
    at = f"{clock() + timedelta(days=2):%Y-%m-%d} 09:00"
    c = broadcasts.schedule_campaign(db, settings, cid, clock(), at=at, local=True)
    broadcasts.queue_due(db, settings, parse_iso(c.send_at))
    decide = parse_iso(broadcasts.ab_test(db, cid).decide_at)
    assert broadcasts.decide_due(db, settings, decide) == 1
    rest = db.execute(
        "SELECT subscriber_id, due_at FROM outbox WHERE json_extract(data, '$.rest') = 1"
    ).fetchall()
    assert len(rest) == 20
    for sid, due in rest:
        zone = ZoneInfo("Asia/Tokyo" if sid == ids[0] else settings.timezone)
        local = parse_iso(due).astimezone(zone)
        assert (local.hour, local.minute) == (9, 0) and parse_iso(due) >= decide


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--subject", "A", "--subject", "B", "--subject", "C"], "--subject: give one subject, or two"),
        (["--subject", "A", "--subject", "B", "--test-share", "120%"], "--test-share: '120%' is not a share"),
        (["--subject", "A", "--subject", "B", "--decide-after", "soon"], "--decide-after: 'soon' is not a wait"),
        (["--subject", "A", "--test-share", "20%"], "--test-share: only an A/B test has one"),
        (["--subject", "A", "--subject", "A"], "--subject: an A/B test needs two different"),
    ],
)
def test_bad_ab_options_are_one_line_and_store_nothing(run, db, tmp_path, args, message):
    body = tmp_path / "b.md"
    body.write_text("Hello.\n", encoding="utf-8")
    r = run("campaign", "create", *args, "--body", body)
    assert r.exit_code == 1, r.output
    (line,) = [x for x in r.output.splitlines() if x.startswith("Error:")]
    assert message in line
    assert db.execute("SELECT COUNT(*) FROM campaigns").fetchone()[0] == 0


def test_the_domain_refuses_a_zero_wait(db, settings, clock):
    with pytest.raises(InputError, match="--decide-after"):
        broadcasts.create(db, settings, clock(), subject="A", body_md="x", ab_subjects=("B",),
                          decide_after="0h")


def test_a_paused_test_waits_and_decides_once_resumed(db, settings, clock, smtp_server):
    add_readers(db, clock, 50)
    cid = start(db, settings, clock, test_share="20%", decide_after="1h")
    broadcasts.queue(db, settings, cid, clock())
    send_due(db, settings, clock)
    broadcasts.pause(db, cid, clock())
    clock.advance(hours=2)
    assert tick(db, settings, clock())["ab_decided"] == 0  # paused: nothing decided or sent
    broadcasts.resume(db, cid, clock())
    t = tick(db, settings, clock())
    assert t["ab_decided"] == 1, t
    smtp_server.clear()
    send_due(db, settings, clock)
    assert len(smtp_server.messages) == 40
