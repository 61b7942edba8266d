"""One validation for each value (issue 10 item 8).

A webinar title, a subject and a name are checked at entry by the same
header function the sender uses; a time zone is accepted only if it is a
real IANA zone; a name may not hide bidi controls or zero-width characters.
Every door is tried: domain functions, the CLI, a CSV import, a webinar
TOML file and the settings.  Nothing is stored when a value is refused.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import cli
from campaigns import mime, webinars
from funnel import validate
from funnel.db import connect
from funnel.errors import InputError, SettingsError
from funnel.settings import load_settings
from subscribers import lifecycle, optin

ENCODED_NEWLINE = "=?utf-8?q?Spine=0ABcc:_x@evil.example?="
ENCODED_NEWLINE_B64 = "=?UTF-8?B?U3BpbmUKQmNjOiB4QGV2aWwuZXhhbXBsZQ==?="
ODD_ZONES = ["localtime", "posixrules", "right/UTC", "Factory", "posix/Europe/London", "Nowhere/Land"]
INVISIBLE = [
    "\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069",
    "\u200e", "\u200f", "\u061c", "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff",
]


def invoke(*args):
    return CliRunner().invoke(cli.main, list(args), catch_exceptions=False)


def dump(settings) -> list[str]:
    return list(connect(settings.db, migrate=True).conn.iterdump())


def webinar_values(**extra):
    return {
        "slug": "spine-health",
        "title": "Spine Health Webinar",
        "start": "2027-01-14 18:00",
        "timezone": "Europe/London",
        "join_url": "https://meet.backinmotion-physio.co.uk/spine",
        **extra,
    }


# ----------------------------------------------------------------- one header check
def test_the_header_check_is_one_function_shared_by_entry_and_send():
    assert mime.check_header_text is validate.check_header_text
    assert lifecycle.check_header_text is validate.check_header_text  # names (optin uses clean_name)
    assert webinars.check_header_text is validate.check_header_text


@pytest.mark.parametrize("title", [ENCODED_NEWLINE, ENCODED_NEWLINE_B64, "Spine\x00Health"])
def test_webinar_title_with_a_hidden_line_break_is_refused_at_create(db, settings, clock, title):
    with pytest.raises(InputError, match=r"^--title: contains (a line break|a control character)"):
        webinars.create_webinar(db, settings, webinar_values(title=title), clock())
    assert db.execute("SELECT COUNT(*) FROM webinars").fetchone()[0] == 0
    # ... and the sender would have refused it in a Subject all the same
    with pytest.raises(InputError):
        mime.header_value(f"You're registered: {title}", "subject")


def test_webinar_title_refused_by_cli_create_and_edit_and_toml_file(cli_env, settings, tmp_path):
    before = dump(settings)
    r = invoke("webinar", "create", "spine-health", "--title", ENCODED_NEWLINE, "--start", "in 30 days 18:00",
               "--tz", "Europe/London", "--join-url", "https://meet.backinmotion-physio.co.uk/spine")
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == [
        f"Error: --title: contains a line break, which is not allowed in an email header "
        f"(inside the encoded word {ENCODED_NEWLINE[:40]!r})"
    ]
    assert dump(settings) == before

    path = tmp_path / "spine.toml"
    path.write_text(
        'slug = "spine-health"\n'
        f'title = "{ENCODED_NEWLINE_B64}"\n'
        'start = "2027-01-14 18:00"\ntimezone = "Europe/London"\n'
        'join_url = "https://meet.backinmotion-physio.co.uk/spine"\n',
        encoding="utf-8",
    )
    r = invoke("webinar", "create", "--from", str(path))
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
    assert str(path) in r.output and "title" in r.output and "line break" in r.output
    assert dump(settings) == before

    ok = invoke("webinar", "create", "spine-health", "--title", "Spine Health", "--start", "in 30 days 18:00",
                "--tz", "Europe/London", "--join-url", "https://meet.backinmotion-physio.co.uk/spine")
    assert ok.exit_code == 0, ok.output
    before = dump(settings)
    r = invoke("webinar", "edit", "spine-health", "--title", ENCODED_NEWLINE_B64)
    assert r.exit_code == 1 and r.output.startswith("Error: --title: contains a line break")
    assert dump(settings) == before


def test_campaign_subject_with_an_encoded_line_break_is_refused(cli_env, settings, tmp_path):
    body = tmp_path / "news.md"
    body.write_text("Some news.\n", encoding="utf-8")
    before = dump(settings)
    r = invoke("campaign", "create", "--subject", ENCODED_NEWLINE, "--body", str(body))
    assert r.exit_code == 1
    assert r.output.startswith("Error: --subject: contains a line break")
    assert len(r.output.strip().splitlines()) == 1
    assert dump(settings) == before


# ----------------------------------------------------------------- time zones
@pytest.mark.parametrize("zone", ODD_ZONES)
def test_zone_names_only_from_the_iana_list(zone):
    with pytest.raises(InputError, match=rf"^--tz: unknown time zone '{zone}'"):
        validate.zone_name(zone, "--tz")
    assert validate.zone_name(" Europe/London ", "--tz") == "Europe/London"
    assert validate.zone_name("UTC", "--tz") == "UTC"


@pytest.mark.parametrize("zone", ["localtime", "posixrules", "right/UTC", "Factory"])
def test_odd_zone_refused_at_every_door(cli_env, settings, clock, db, tmp_path, zone):
    before = dump(settings)
    # signup (form and API share optin.signup)
    with pytest.raises(InputError, match="^timezone: unknown time zone"):
        optin.signup(db, settings, "sam@example.com", clock(), name="Sam", timezone=zone)
    # CLI subscribers add --tz and webinar register --tz
    r = invoke("subscribers", "add", "sam@example.com", "--tz", zone)
    assert r.exit_code == 1 and f"unknown time zone '{zone}'" in r.output
    # webinar create --tz
    r = invoke("webinar", "create", "w1", "--title", "W", "--start", "in 30 days 18:00", "--tz", zone,
               "--join-url", "https://meet.backinmotion-physio.co.uk/w")
    assert r.exit_code == 1 and r.output.startswith(f"Error: --tz: unknown time zone '{zone}'")
    # series show --tz
    r = invoke("series", "show", "importance-of-exercise", "--timeline", "--tz", zone)
    assert r.exit_code == 1 and r.stderr.startswith(f"Error: --tz: unknown time zone '{zone}'")
    # CSV import names file:line
    csv = tmp_path / "people.csv"
    csv.write_text(f"email,name,timezone\nok@example.com,Ok,Europe/London\nsam@example.com,Sam,{zone}\n")
    r = invoke("subscribers", "import", str(csv))
    assert r.exit_code == 1 and f"{csv}:3: timezone: unknown time zone '{zone}'" in r.output
    assert dump(settings) == before
    # settings
    with pytest.raises(SettingsError, match=f"^FUNNEL_TIMEZONE: unknown time zone '{zone}'"):
        load_settings({**cli_env, "FUNNEL_TIMEZONE": zone})


# ----------------------------------------------------------------- invisible characters in names
@pytest.mark.parametrize("ch", INVISIBLE)
def test_bidi_and_zero_width_characters_refused_in_names(db, settings, clock, ch):
    with pytest.raises(InputError, match=rf"^name: the name contains a (bidi control|zero-width character) "
                                          rf"\(U\+{ord(ch):04X}\)"):
        optin.signup(db, settings, "sam@example.com", clock(), name=f"Sam{ch}Lee")
    assert db.execute("SELECT COUNT(*) FROM subscribers").fetchone()[0] == 0


def test_invisible_characters_refused_by_cli_and_csv_with_file_and_line(cli_env, settings, tmp_path):
    made = invoke("webinar", "create", "spine-health", "--title", "Spine Health", "--start", "in 30 days 18:00",
                  "--tz", "Europe/London", "--join-url", "https://meet.backinmotion-physio.co.uk/spine")
    assert made.exit_code == 0, made.output
    before = dump(settings)
    r = invoke("subscribers", "add", "sam@example.com", "--name", "Sam\u202egnp.exe")
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == [
        "Error: name: the name contains a bidi control (U+202E), which can disguise how it reads; "
        "please remove it"
    ]
    r = invoke("webinar", "register", "spine-health", "sam@example.com", "--name", "Sa\u200bm")
    assert r.exit_code == 1 and "zero-width character (U+200B)" in r.output
    csv = tmp_path / "people.csv"
    csv.write_text("email,name\nok@example.com,Ok\nsam@example.com,Sam\u2067Lee\n", encoding="utf-8")
    r = invoke("subscribers", "import", str(csv))
    assert r.exit_code == 1
    assert f"{csv}:3: name: the name contains a bidi control (U+2067)" in r.output
    assert dump(settings) == before
    # ordinary non-Latin names are fine
    ok = invoke("subscribers", "add", "noor@example.com", "--name", "نور الهدى")
    assert ok.exit_code == 0, ok.output
    assert connect(settings.db).execute("SELECT name FROM subscribers").fetchone()[0] == "نور الهدى"

