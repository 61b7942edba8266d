"""CSV exports are safe to open in a spreadsheet; JSON stays verbatim (issue 10 item 7).

Hostile values enter the way the public does (a signup with a name and a user
agent, a webinar registration), then `funnel subscribers export` and
`funnel webinar export` write real files that we read back with the csv module.
"""

from __future__ import annotations

import csv
import json
from datetime import timedelta

import pytest
from click.testing import CliRunner

import cli
from campaigns import webinars
from funnel.spreadsheet import neutralise
from subscribers import lifecycle, optin, tokens

FORMULA_NAME = '=HYPERLINK("http://x","y")'
FORMULA_UA = "=cmd|' /C calc'!A0"


def read(path) -> list[str]:
    """The CSV file's lines, as csv.reader wants them (newlines kept)."""
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


@pytest.mark.parametrize("cell, expected", [
    ("=1+2", "'=1+2"), ("+1", "'+1"), ("-1", "'-1"), ("@SUM(A1)", "'@SUM(A1)"),
    ("\tx", "'\tx"), ("\rx", "'\rx"), ("Ana", "Ana"), ("a=b", "a=b"), ("", ""), (None, None), (3, 3),
])  # fmt: skip
def test_neutralise_follows_owasp(cell, expected):
    assert neutralise(cell) == expected


def test_subscribers_export_neutralises_formulas_and_json_stays_verbatim(db, settings, clock,
                                                                          cli_env, tmp_path):
    sid = optin.signup(
        db, settings, "mallory@example.com", clock(), name=FORMULA_NAME, source="form",
        ip="203.0.113.9", user_agent=FORMULA_UA,
    ).subscriber_id  # fmt: skip
    optin.confirm(db, settings, tokens.confirm_token(settings, sid, lifecycle.get(db, sid).confirm_nonce,
                  clock()), clock(), ip="203.0.113.9", user_agent=FORMULA_UA)
    optin.signup(db, settings, "ana@example.com", clock(), name="Ana -- physio", user_agent="Mozilla/5.0")
    out = tmp_path / "people.csv"
    r = CliRunner().invoke(cli.main, ["subscribers", "export", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = {row["email"]: row for row in csv.DictReader(read(out))}
    assert rows["mallory@example.com"]["name"] == "'" + FORMULA_NAME
    assert rows["mallory@example.com"]["consent_user_agent"] == "'" + FORMULA_UA
    assert rows["ana@example.com"]["name"] == "Ana -- physio"  # only a leading character counts
    assert rows["ana@example.com"]["consent_user_agent"] == "Mozilla/5.0"
    # No cell of the file starts with a formula character
    for row in csv.reader(read(out)):
        assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in row), row

    r = CliRunner().invoke(cli.main, ["subscribers", "export", "--format", "json",
                                      "--email", "mallory@example.com"])
    assert r.exit_code == 0, r.output
    (person,) = json.loads(r.stdout)
    assert person["name"] == FORMULA_NAME
    assert {c["user_agent"] for c in person["consent"]} == {FORMULA_UA}


def test_webinar_export_neutralises_formulas(db, settings, clock, cli_env, tmp_path):
    webinars.create_webinar(db, settings, {
        "slug": "spine-health", "title": "Spine Health Webinar",
        "start": (clock() + timedelta(days=10)).strftime("%Y-%m-%d %H:%M"),
        "timezone": "Europe/London", "join_url": "https://meet.clinic.example/spine",
    }, clock())  # fmt: skip
    webinars.register(db, settings, "spine-health", clock(), email="mallory@example.com",
                      name=FORMULA_NAME, source="web", ip="203.0.113.9", user_agent=FORMULA_UA)
    webinars.register(db, settings, "spine-health", clock(), email="pat@example.com", name="Pat")
    out = tmp_path / "reg.csv"
    r = CliRunner().invoke(cli.main, ["webinar", "export", "spine-health", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = {row["email"]: row for row in csv.DictReader(read(out))}
    assert rows["mallory@example.com"]["name"] == "'" + FORMULA_NAME
    assert rows["pat@example.com"]["name"] == "Pat"
    r = CliRunner().invoke(cli.main, ["webinar", "export", "spine-health"])
    assert "'=HYPERLINK" in r.stdout and "\n=HYPERLINK" not in r.stdout and ",=" not in r.stdout
