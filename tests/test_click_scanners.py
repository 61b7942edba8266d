"""Link scanners never count as readers: their clicks are filtered, counted apart, and still redirect."""

from __future__ import annotations

import pytest
from click_support import add_readers, click_links, path_of, send_broadcast

import web
from campaigns import clicks

BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1) AppleWebKit/605.1.15 (KHTML, like Gecko) Safari/605.1.15"
SCANNER = "Mozilla/5.0 (compatible; Barracuda Sentinel link scanner)"


@pytest.fixture
def sent(db, settings, clock, smtp_server):
    add_readers(db, clock, 1)
    send_broadcast(db, settings, clock)
    (msg,) = smtp_server.messages
    return click_links(msg)


@pytest.fixture
def client(settings, clock):
    return web.create_app(settings, clock=clock).test_client()


def tally(db) -> dict[str, int]:
    return dict(db.execute("SELECT verdict, COUNT(*) FROM clicks GROUP BY verdict").fetchall())


def reasons(db) -> set[str]:
    return {r for (r,) in db.execute("SELECT DISTINCT reason FROM clicks WHERE reason IS NOT NULL")}


def test_a_scanner_hammering_every_link_counts_no_human(db, clock, sent, client):
    assert len(sent) == 3
    filtered = 0
    for _ in range(5):
        for url in sent:
            for method in (client.get, client.head):
                r = method(path_of(url), headers={"User-Agent": SCANNER})
                assert r.status_code == 302  # a filtered click still redirects
                filtered += 1
                assert tally(db) == {"scanner": filtered}
        clock.advance(seconds=1)
    assert reasons(db) == {"head", "user_agent"}


def test_right_after_delivery_even_a_browser_is_a_scanner(db, clock, sent, client):
    clock.advance(seconds=3)
    client.get(path_of(sent[0]), headers={"User-Agent": BROWSER})
    assert tally(db) == {"scanner": 1} and reasons(db) == {"after_delivery"}
    clock.advance(minutes=2)
    client.get(path_of(sent[0]), headers={"User-Agent": BROWSER})
    assert tally(db) == {"scanner": 1, "human": 1}


def test_head_and_empty_user_agent_are_scanners(db, clock, sent, client):
    clock.advance(minutes=2)
    assert client.head(path_of(sent[0]), headers={"User-Agent": BROWSER}).status_code == 302
    client.get(path_of(sent[1]), headers={"User-Agent": ""})
    assert tally(db) == {"scanner": 2} and reasons(db) == {"head", "user_agent"}


def test_every_link_within_a_second_is_a_crawler(db, clock, sent, client):
    clock.advance(minutes=2)
    for url in sent:  # a sandbox opening every link with a browser's user agent
        assert client.get(path_of(url), headers={"User-Agent": BROWSER}).status_code == 302
    assert tally(db) == {"scanner": 3} and reasons(db) == {"burst"}
    # A reader later clicking one of them is counted.
    clock.advance(minutes=10)
    client.get(path_of(sent[1]), headers={"User-Agent": BROWSER})
    assert tally(db) == {"scanner": 3, "human": 1}


def test_the_rules_are_data():
    rules = clicks.rules()
    assert rules.after_delivery.total_seconds() > 0 and rules.burst.total_seconds() == 1
    assert "barracuda" in rules.user_agents
