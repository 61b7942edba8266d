"""People in the admin console: search, a person's page and timeline, actions, CSV import.

Plus the three domain functions the screens (and the CLI) share:
lifecycle.edit_profile, bounces.unsuppress and history.timeline.
"""

# ruff: noqa: F811
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from admin_support import (  # noqa: F401 (fixtures)
    EMAIL,
    admin_user,
    console,
    fast_hash,
    signed_in,
)
from click.testing import CliRunner

import cli
from campaigns.sender import send_due
from funnel.errors import InputError, TransitionError
from subscribers import admins, bounces, history, io, lifecycle, optin, people


def confirmed(db, settings, clock, email, name="Sam Lee", tz="Europe/London") -> int:
    sid = optin.signup(db, settings, email, clock(), name=name, timezone=tz, source="web").subscriber_id
    io_sub = lifecycle.get(db, sid)
    from subscribers import tokens

    optin.confirm(db, settings, tokens.confirm_token(settings, sid, io_sub.confirm_nonce, clock()),
                  clock())
    return sid


def actions(db) -> list[str]:
    return [r["action"] for r in admins.audit_log(db, 200)]


# ----------------------------------------------------------------- search
def test_search_by_email_or_name_prefix_filters_and_pages(db, settings, clock):
    for i in range(7):
        optin.signup(db, settings, f"walker{i}@example.com", clock(), name=f"Robin Walker {i}")
    optin.signup(db, settings, "zed@example.com", clock(), name="Ada Lovelace")
    active = confirmed(db, settings, clock, "ada.k@example.com", name="Ada King")

    def emails(**kw):
        return [r["email"] for r in people.search(db, settings, people.Filters(**kw), clock()).rows]

    assert emails(q="walker") == [f"walker{i}@example.com" for i in reversed(range(7))]
    assert emails(q="WALKER3") == ["walker3@example.com"]
    assert emails(q="ada") == ["ada.k@example.com", "zed@example.com"]  # email, then name prefix
    assert emails(q="ada", status="active") == ["ada.k@example.com"]
    assert emails(stream="broadcasts") == ["ada.k@example.com"]
    assert emails(segment="status=pending, tz=Asia/Tokyo") == []
    assert len(emails(segment="status=pending, tz=Europe/London")) == 8  # unknown zone = the clinic's
    assert emails(q="x' OR 1=1 --") == []
    with pytest.raises(InputError, match="status"):
        emails(status="nonsense")
    with pytest.raises(InputError):
        emails(segment="favourite=blue")

    first = people.search(db, settings, people.Filters(q="walker"), clock(), limit=3)
    second = people.search(db, settings, people.Filters(q="walker"), clock(), before=first.next_before,
                           limit=3)
    third = people.search(db, settings, people.Filters(q="walker"), clock(), before=second.next_before,
                          limit=3)
    seen = [r["email"] for r in first.rows + second.rows + third.rows]
    assert seen == [f"walker{i}@example.com" for i in reversed(range(7))] and third.next_before is None
    assert active


def test_search_uses_the_indexes(db, settings, clock):
    where = people.Filters(q="sam")
    plan = " ".join(str(r) for r in db.execute(
        "EXPLAIN QUERY PLAN SELECT s.id FROM subscribers s WHERE "
        "((s.email COLLATE NOCASE >= ? AND s.email COLLATE NOCASE < ?) "
        "OR (s.name COLLATE NOCASE >= ? AND s.name COLLATE NOCASE < ?)) ORDER BY s.id DESC LIMIT 51",
        ("sam", "sam\U0010ffff", "sam", "sam\U0010ffff")).fetchall())
    assert "subscribers_email_nocase" in plan and "subscribers_name_nocase" in plan, plan
    assert where.expressions() == []


def test_people_page_lists_and_filters(signed_in, db, settings, clock):
    confirmed(db, settings, clock, "sam@example.com")
    optin.signup(db, settings, "pat@example.com", clock(), name="Pat")
    body = signed_in.get("/admin/people/?q=sa").get_data(as_text=True)
    assert "sam@example.com" in body and "pat@example.com" not in body
    body = signed_in.get("/admin/people/?status=pending").get_data(as_text=True)
    assert "pat@example.com" in body and "sam@example.com" not in body
    bad = signed_in.get("/admin/people/?segment=colour%3Dblue")
    assert bad.status_code == 400 and "colour" in bad.get_data(as_text=True)


# ----------------------------------------------------------------- person
def test_person_page_shows_state_consent_and_a_timeline_with_view_links(signed_in, db, settings, clock):
    sid = optin.signup(db, settings, "sam@example.com", clock(), name="Sam Lee", ip="192.0.2.1",
                       source="web").subscriber_id
    send_due(db, settings, clock)
    page = signed_in.get(f"/admin/people/{sid}")
    body = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "pending" in body and "192.0.2.1" in body and "requested" in body  # the consent ledger
    link = re.search(rf'href="(/admin/people/{sid}/messages/(\d+))"', body)
    assert link, body
    shown = signed_in.get(link.group(1))
    assert shown.status_code == 200 and "confirm" in shown.get_data(as_text=True).lower()
    assert "frame-ancestors 'self'" in shown.headers["Content-Security-Policy"]
    kinds = [e.kind for e in history.timeline(db, "sam@example.com")]
    assert "email" in kinds and "subscribed" in kinds and "sent" not in kinds


def test_edit_unsubscribe_and_resend(signed_in, db, settings, clock, smtp_server):
    sid = confirmed(db, settings, clock, "sam@example.com")
    token = signed_in.token(f"/admin/people/{sid}")
    r = signed_in.post(f"/admin/people/{sid}/edit", {"name": "Samira Lee", "timezone": "Asia/Tokyo"},
                       token=token)
    assert r.status_code == 303
    sub = lifecycle.get(db, sid)
    assert (sub.name, sub.timezone) == ("Samira Lee", "Asia/Tokyo")
    bad = signed_in.post(f"/admin/people/{sid}/edit", {"name": "x", "timezone": "Mars/Base"}, token=token)
    assert bad.status_code == 400 and lifecycle.get(db, sid).timezone == "Asia/Tokyo"
    signed_in.post(f"/admin/people/{sid}/unsubscribe", {"stream": "broadcasts"}, token=token)
    assert lifecycle.subscriptions(db, sid)["broadcasts"]["status"] == "unsubscribed"
    assert lifecycle.get(db, sid).status == "active"
    # Resend is only for people waiting to confirm.
    assert signed_in.post(f"/admin/people/{sid}/resend", token=token).status_code == 400
    pending = optin.signup(db, settings, "pat@example.com", clock()).subscriber_id
    clock.advance(hours=25)
    signed_in.login()  # the console session timed out meanwhile
    before = db.execute("SELECT COUNT(*) FROM outbox WHERE subscriber_id = ?", (pending,)).fetchone()[0]
    assert signed_in.post(f"/admin/people/{pending}/resend", token=signed_in.token("/admin/")).status_code == 303
    after = db.execute("SELECT COUNT(*) FROM outbox WHERE subscriber_id = ?", (pending,)).fetchone()[0]
    assert after == before + 1
    assert {"edit_profile", "unsubscribe", "resend_confirmation"} <= set(actions(db))


def test_unsuppress_needs_a_reason_and_is_logged(signed_in, db, settings, clock):
    sid = confirmed(db, settings, clock, "sam@example.com")
    lifecycle.suppress(db, sid, "bounced", clock(), detail="mailbox full")
    assert lifecycle.is_suppressed(db, "sam@example.com")
    token = signed_in.token(f"/admin/people/{sid}")
    r = signed_in.post(f"/admin/people/{sid}/unsuppress", {"reason": "  "}, token=token)
    assert r.status_code == 400 and "reason" in r.get_data(as_text=True)
    assert lifecycle.get(db, sid).status == "bounced"
    r = signed_in.post(f"/admin/people/{sid}/unsuppress", {"reason": "mailbox emptied"}, token=token)
    assert r.status_code == 303
    assert lifecycle.get(db, sid).status == "active" and not lifecycle.is_suppressed(db, "sam@example.com")
    assert lifecycle.subscriptions(db, sid)["broadcasts"]["status"] == "subscribed"
    (row,) = [r for r in admins.audit_log(db) if r["action"] == "unsuppress"]
    assert row["who"] == EMAIL and row["detail"] == "mailbox emptied" and row["ip"] == "203.0.113.5"


def test_unsuppress_refuses_complaints(db, settings, clock):
    sid = confirmed(db, settings, clock, "sam@example.com")
    lifecycle.suppress(db, sid, "complained", clock())
    with pytest.raises(TransitionError, match="not bounced"):
        bounces.unsuppress(db, "sam@example.com", "they said sorry", "admin", clock())
    assert lifecycle.is_suppressed(db, "sam@example.com")


def test_edit_profile_domain_function(db, settings, clock):
    confirmed(db, settings, clock, "sam@example.com")
    sub = lifecycle.edit_profile(db, "sam@example.com", name="  Sam   Q  ", now=clock())
    assert sub.name == "Sam Q" and sub.timezone == "Europe/London"
    assert lifecycle.edit_profile(db, "sam@example.com", tz="", now=clock()).timezone is None
    with pytest.raises(InputError, match="name"):
        lifecycle.edit_profile(db, "sam@example.com", name="a\nBcc: x@evil.example", now=clock())


def test_export_is_what_the_cli_writes(signed_in, db, settings, clock, tmp_path, cli_env):
    sid = confirmed(db, settings, clock, "sam@example.com")
    r = signed_in.post(f"/admin/people/{sid}/export", token=signed_in.token(f"/admin/people/{sid}"))
    assert r.status_code == 200 and "attachment" in r.headers["Content-Disposition"]
    out = tmp_path / "sam.json"
    done = CliRunner().invoke(cli.main, ["subscribers", "export", "--format", "json", "--email",
                                         "sam@example.com", "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert r.get_data(as_text=True) == out.read_text(encoding="utf-8")
    assert json.loads(r.get_data(as_text=True))[0]["email"] == "sam@example.com"


def test_erase_needs_the_address_typed(signed_in, db, settings, clock):
    sid = confirmed(db, settings, clock, "sam@example.com")
    token = signed_in.token(f"/admin/people/{sid}")
    r = signed_in.post(f"/admin/people/{sid}/erase", {"confirm": "sam@example.org"}, token=token)
    assert r.status_code == 400 and lifecycle.get(db, sid).status == "active"
    r = signed_in.post(f"/admin/people/{sid}/erase", {"confirm": "Sam@Example.com "}, token=token)
    assert r.status_code == 303
    assert lifecycle.get(db, sid).status == "erased"
    # The audit row names the subscriber by id, never by the erased address.
    dump = " ".join(str(r) for r in db.execute("SELECT data FROM events").fetchall())
    assert "sam@example.com" not in dump and "erase" in actions(db)


# ----------------------------------------------------------------- import
def upload(console, path: Path, name: str | None = None):
    with path.open("rb") as f:
        return console.post("/admin/people/import", {"file": (f, name or path.name)},
                            token=console.token("/admin/people/import"),
                            content_type="multipart/form-data")


def test_import_previews_then_stores(signed_in, db, tmp_path):
    good = tmp_path / "list.csv"
    good.write_text("email,name,timezone\nada@example.com,Ada,Europe/London\nbo@example.com,Bo,\n",
                    encoding="utf-8")
    r = upload(signed_in, good)
    body = r.get_data(as_text=True)
    assert r.status_code == 200 and "ada@example.com" in body and "2 good rows" in body
    assert db.execute("SELECT COUNT(*) FROM subscribers").fetchone()[0] == 0  # nothing stored yet
    token = re.search(r'name="token" value="([^"]+)"', body).group(1)
    done = signed_in.post("/admin/people/import/commit", {"token": token, "filename": "list.csv"},
                          token=signed_in.token("/admin/"))
    assert done.status_code == 200 and "imported 2" in done.get_data(as_text=True)
    assert {r[0] for r in db.execute("SELECT status FROM subscribers")} == {"pending"}
    again = signed_in.post("/admin/people/import/commit", {"token": token, "filename": "list.csv"},
                           token=signed_in.token("/admin/"))
    assert again.status_code == 400  # the upload is used up


def test_import_reports_file_line_errors_like_the_cli(signed_in, db, settings, clock, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("email,name\nada@example.com,Ada\nnot-an-address,Bo\nada@example.com,Again\n",
                   encoding="utf-8")
    body = upload(signed_in, bad).get_data(as_text=True)
    with pytest.raises(Exception) as cli_error:
        io.import_csv(db, settings, bad, clock())
    for problem in cli_error.value.report.problems:
        assert problem.replace(str(bad), "bad.csv").replace("'", "&#39;") in body
    assert "bad.csv:3:" in body and "bad.csv:4:" in body and "Import " not in body.split("First rows")[1]
    assert db.execute("SELECT COUNT(*) FROM subscribers").fetchone()[0] == 0


def test_import_wrong_encoding_gives_the_cli_error(signed_in, db, settings, clock, tmp_path):
    latin = tmp_path / "latin.csv"
    latin.write_bytes("email,name\nzoe@example.com,Zo\u00eb\n".encode("latin-1"))
    with pytest.raises(InputError) as cli_error:
        io.import_csv(db, settings, latin, clock())
    r = upload(signed_in, latin)
    assert r.status_code == 400
    expected = str(cli_error.value).replace(str(latin), "latin.csv")
    assert expected.replace("'", "&#39;") in r.get_data(as_text=True)


def test_import_refuses_more_than_50_mb(signed_in, tmp_path, monkeypatch):
    monkeypatch.setattr(people, "UPLOAD_LIMIT", 1000)
    big = tmp_path / "big.csv"
    big.write_text("email\n" + "".join(f"p{i}@example.com\n" for i in range(200)), encoding="utf-8")
    r = upload(signed_in, big)
    assert r.status_code == 400 and "larger than 50 MB" in r.get_data(as_text=True)
    assert not list((tmp_path / "admin-imports").glob("*.csv"))
