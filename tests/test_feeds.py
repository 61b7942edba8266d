"""Feeds: import an RSS/Atom file or URL, watch a feed, and the one HTTP GET's refusals.

The watch runs against a real HTTP server on loopback (hence allow_private) on
the fake clock: the first check notes what the feed holds, each new post makes
exactly one draft broadcast, a repeat makes none, and every check after the
first sends If-None-Match / If-Modified-Since.
"""

from __future__ import annotations

import socket
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from campaigns import feeds
from campaigns.importer import import_paths
from campaigns.worker import tick
from funnel import fetch
from funnel.errors import InputError

DATA = Path(__file__).parent / "data" / "feeds"


def rss(*items: tuple[str, str]) -> bytes:
    body = "".join(
        f"<item><title>{title}</title><link>https://clinic.example/{slug}/</link>"
        f"<guid>https://clinic.example/?p={slug}</guid><pubDate>Mon, 03 Nov 2025 08:00:00 +0000</pubDate>"
        f"<description><![CDATA[<p>{title} explained in a few calm sentences for readers.</p>]]></description></item>"
        for title, slug in items
    )
    return (f'<?xml version="1.0"?><rss version="2.0"><channel><title>Clinic</title>'
            f"<link>https://clinic.example/</link>{body}</channel></rss>").encode()


class Site:
    """A tiny web server: path -> (status, headers, body); records every request's headers."""

    def __init__(self):
        self.routes: dict[str, tuple[int, dict, bytes]] = {}
        self.requests: list[tuple[str, dict]] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                site.requests.append((self.path, dict(self.headers)))
                status, headers, body = site.routes.get(self.path, (404, {}, b"not here"))
                etag = headers.get("ETag")
                if etag and self.headers.get("If-None-Match") == etag:
                    status, body = 304, b""
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def feed(self, path: str, body: bytes, etag: str | None = None) -> str:
        headers = {"Content-Type": "application/rss+xml"}
        if etag:
            headers["ETag"] = etag
        self.routes[path] = (200, headers, body)
        return self.base + path

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site():
    s = Site()
    yield s
    s.close()


def drafts(db) -> list[tuple]:
    return db.execute("SELECT subject, status, body_md FROM campaigns ORDER BY id").fetchall()


# ------------------------------------------------------------------- import
def test_rss_and_atom_files_import_as_articles(tmp_path):
    report = import_paths([DATA / "clinic.rss", DATA / "clinic.atom"], tmp_path / "out")
    arts = {r.article.slug: r.article for r in report.results}
    assert sorted(arts) == ["choosing-a-pillow", "core-strength-at-home-part-1",
                            "core-strength-at-home-part-2", "getting-up-from-the-floor-safely"]
    floor = arts["getting-up-from-the-floor-safely"]
    assert floor.body_md.split("\n\n") == [
        "Roll onto your side first, then push up onto hands and knees.",
        "Bring one foot forward and stand up using your thigh as a support.",
    ]  # the "Read next" teaser went, by the same rule as for pages
    assert floor.category == "Everyday Life" and str(floor.date) == "2025-11-03"
    assert "![A side sleeper's pillow](https://clinic.example/img/pillow.jpg)" in arts["choosing-a-pillow"].body_md
    assert report.series() == ["series core-strength-at-home: parts 1, 2"]


def test_import_by_url(run, site, tmp_path):
    url = site.feed("/feed/", (DATA / "clinic.rss").read_bytes())
    out = tmp_path / "out"
    res = run("content", "import", "--url", url, "--out", out)
    assert res.exit_code == 1 and "private or local address 127.0.0.1" in res.output
    assert not out.exists()
    res = run("content", "import", "--url", url, "--out", out, "--allow-private")
    assert res.exit_code == 0, res.output
    assert (out / "getting-up-from-the-floor-safely.md").exists()


def test_a_feed_that_is_not_xml_is_one_line_naming_the_file(tmp_path):
    f = tmp_path / "feed.xml"
    f.write_text("<html><body>Oops, a web page</body></html>\n", encoding="utf-8")
    with pytest.raises(InputError, match=rf"^{f}:") as err:
        import_paths([f], tmp_path / "out")
    assert "\n" not in str(err.value)
    g = tmp_path / "page.rss"
    g.write_text("<rss>this is <not closed", encoding="utf-8")
    with pytest.raises(InputError, match=rf"^{g}: not an RSS or Atom feed"):
        import_paths([g], tmp_path / "out")


# -------------------------------------------------------------------- watch
def test_watch_makes_one_draft_per_new_post_and_none_for_a_repeat(db, settings, clock, site):
    url = site.feed("/feed/", rss(("Old Post One", "old-1"), ("Old Post Two", "old-2")), etag='"v1"')
    feeds.add_watch(db, url, clock(), every="1h", allow_private=True)

    tick(db, settings, clock())  # first check: the feed's existing posts are the baseline
    assert drafts(db) == []

    clock.advance(minutes=30)
    tick(db, settings, clock())  # not due yet
    assert len(site.requests) == 1

    clock.advance(minutes=31)
    tick(db, settings, clock())  # due, unchanged: 304 thanks to If-None-Match
    assert site.requests[-1][1].get("If-None-Match") == '"v1"'
    assert drafts(db) == []

    site.feed("/feed/", rss(("A New Post on Sleep", "new-1"), ("Old Post One", "old-1"),
                            ("Old Post Two", "old-2")), etag='"v2"')
    clock.advance(hours=1)
    ticked = tick(db, settings, clock())
    assert ticked["feed_drafts"] == 1
    (subject, status, body), = drafts(db)
    assert (subject, status) == ("A New Post on Sleep", "draft")
    assert "A New Post on Sleep explained in a few calm sentences" in body
    assert "[Read it on the website](https://clinic.example/new-1/)" in body

    # The same entry again (a changed ETag, a re-ordered feed): no second draft.
    site.feed("/feed/", rss(("Old Post One", "old-1"), ("A New Post on Sleep", "new-1")), etag='"v3"')
    clock.advance(hours=1)
    tick(db, settings, clock())
    assert len(drafts(db)) == 1
    assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0  # never sent by itself


def test_weekly_digest_makes_one_draft_for_the_weeks_posts(db, settings, clock, site):
    url = site.feed("/feed/", rss(("Old Post", "old")))
    feeds.add_watch(db, url, clock(), every="1d", digest="weekly", allow_private=True)
    tick(db, settings, clock())
    for n in (1, 2):
        site.feed("/feed/", rss(*[(f"Weekly Post Number {k}", f"w{k}") for k in range(1, n + 1)],
                                ("Old Post", "old")))
        clock.advance(days=1)
        tick(db, settings, clock())
    assert drafts(db) == []
    clock.advance(days=6)
    tick(db, settings, clock())
    (subject, status, body), = drafts(db)
    assert subject == "This week: Weekly Post Number 1 and 1 more" and status == "draft"
    assert "## Weekly Post Number 1" in body and "## Weekly Post Number 2" in body


def test_watch_errors_are_reported_and_retried(db, settings, clock, site):
    site.routes["/gone/"] = (404, {}, b"")
    site.routes["/broken/"] = (500, {}, b"")
    site.routes["/loop/"] = (302, {"Location": "/loop2/"}, b"")
    site.routes["/loop2/"] = (302, {"Location": "/loop/"}, b"")
    site.routes["/html/"] = (200, {"Content-Type": "text/html"}, b"<html><p>hello</p></html>")
    for path in ("/gone/", "/broken/", "/loop/", "/html/"):
        feeds.add_watch(db, site.base + path, clock(), allow_private=True)
    with pytest.raises(InputError, match=r"^http://127\.0\.0\.1:9/private/: 127\.0\.0\.1 resolves to the private"):
        feeds.add_watch(db, "http://127.0.0.1:9/private/", clock())  # refused before any fetch
    ticked = tick(db, settings, clock())
    problems = [p.replace(site.base, "BASE") for p in ticked["problems"]]
    assert problems == [
        "BASE/gone/: the server answered 404 Not Found",
        "BASE/broken/: the server answered 500 Internal Server Error",
        "BASE/loop/: the server redirects in a loop (BASE/loop2/ -> BASE/loop/)",
        "BASE/html/: not an RSS or Atom feed",
    ]
    listed = {w.url.replace(site.base, "BASE"): w for w in feeds.list_watches(db)}
    assert listed["BASE/gone/"].last_error.endswith("404 Not Found")
    assert listed["BASE/gone/"].next_check_at == clock() + timedelta(hours=1)
    assert drafts(db) == []


def test_cli_watch_list_remove(run, tmp_path):
    res = run("feed", "watch", "https://clinic.example/feed/", "--every", "2h")
    assert res.exit_code == 0, res.output
    assert "watching https://clinic.example/feed/ (watch 1, every 2h, digest none)" in res.output
    res = run("feed", "watch", "https://clinic.example/feed/")
    assert res.exit_code == 1 and "is already watched" in res.output
    res = run("feed", "watch", "https://clinic.example/other/", "--every", "5m")
    assert res.exit_code == 1 and "--every: '5m' is too often" in res.output
    res = run("feed", "list")
    assert "  1  https://clinic.example/feed/  every 120 min, digest none, checked never" in res.output
    res = run("feed", "remove", "1")
    assert res.exit_code == 0 and "no longer watching https://clinic.example/feed/" in res.output
    assert "no feeds are watched" in run("feed", "list").output


# --------------------------------------------------------------- the one GET
def test_get_refuses_private_loopback_and_link_local_addresses():
    for url in ("http://127.0.0.1/", "http://10.1.2.3/", "http://169.254.169.254/latest/",
                "http://[::1]/", "http://192.168.0.10/feed"):
        with pytest.raises(InputError, match="private or local address"):
            fetch.get(url)
    with pytest.raises(InputError, match="only http:// and https://"):
        fetch.get("file:///etc/passwd")


def test_get_checks_every_address_a_name_resolves_to(monkeypatch, site):
    """A public-looking name that resolves (also) to a private address is refused."""
    real = socket.getaddrinfo

    def fake(host, port, *args, **kwargs):
        if host == "feeds.clinic.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(fetch.socket, "getaddrinfo", fake)
    with pytest.raises(InputError, match=r"^http://feeds\.clinic\.example/feed/: feeds\.clinic\.example "
                                         r"resolves to the private or local address 10\.0\.0\.7"):
        fetch.get("http://feeds.clinic.example/feed/")


def test_get_conditional_and_size_cap(site):
    url = site.feed("/f/", b"<rss/>", etag='"e1"')
    first = fetch.get(url, allow_private=True)
    assert first.status == 200 and first.etag == '"e1"'
    again = fetch.get(url, allow_private=True, etag=first.etag, last_modified="Mon, 03 Nov 2025 08:00:00 GMT")
    assert again.not_modified
    assert site.requests[-1][1]["If-Modified-Since"] == "Mon, 03 Nov 2025 08:00:00 GMT"
    site.routes["/big/"] = (200, {}, b"x" * 2000)
    with pytest.raises(InputError, match=r"/big/: the answer is 2,000 bytes, more than the 1,000 allowed"):
        fetch.get(site.base + "/big/", allow_private=True, max_bytes=1000)


def test_an_entry_without_text_drafts_its_link_and_one_without_a_title_none(db, settings, clock, site):
    url = site.feed("/feed/", rss(("Old Post", "old")))
    feeds.add_watch(db, url, clock(), allow_private=True)
    tick(db, settings, clock())
    body = rss(("Old Post", "old")).replace(
        b"<item>", b"<item><title>Only a Link</title><link>https://clinic.example/link-only/</link>"
                   b"<guid>link-only</guid></item><item><guid>untitled</guid>"
                   b"<description>text</description></item><item>", 1)
    site.feed("/feed/", body)
    clock.advance(hours=1)
    ticked = tick(db, settings, clock())
    assert ticked["problems"] == [f"{url}: entry 2: the entry has no title, so no draft was made"]
    (subject, status, text), = drafts(db)
    assert (subject, status) == ("Only a Link", "draft")
    assert text == "[Read it on the website](https://clinic.example/link-only/)"
    clock.advance(hours=1)
    assert tick(db, settings, clock())["problems"] == []  # noted once, not retried


def test_get_gives_up_on_long_redirect_chains_and_silent_servers(site):
    for n in range(8):
        site.routes[f"/r{n}/"] = (302, {"Location": f"/r{n + 1}/"}, b"")
    with pytest.raises(InputError, match=r"/r0/: more than 5 redirects$"):
        fetch.get(site.base + "/r0/", allow_private=True)
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        with pytest.raises(InputError, match=rf"^http://127\.0\.0\.1:{port}/: no answer within 0\.5 s$"):
            fetch.get(f"http://127.0.0.1:{port}/", allow_private=True, timeout=0.5)
