"""CSV import, export and erase against a real SQLite file."""

import csv
import io
import json
from pathlib import Path

import pytest

from funnel.db import iso, transaction
from funnel.errors import InputError, RowsRejected
from subscribers import lifecycle, optin, tokens
from subscribers.io import erase, import_csv, write_export


def write(tmp_path: Path, text: str | bytes, name="people.csv") -> Path:
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return p


def count(db, table):
    return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


MESSY = (
    "\ufeffEmail, Name ,TZ,source\r\n"
    "ana@example.com,Ana Silva,Europe/Lisbon,clinic\r\n"
    "\r\n"
    "  BEN@Example.COM ,Ben,,\r\n"
    '"chloé@exämple.com","Chloé ""CJ"" Jones",America/New_York,\r\n'
)


def test_import_messy_file(db, settings, clock, tmp_path):
    report = import_csv(db, settings, write(tmp_path, MESSY), clock())
    assert (report.imported, report.problems) == (3, [])
    rows = db.execute("SELECT email, name, timezone, source, status FROM subscribers ORDER BY id").fetchall()
    assert rows == [
        ("ana@example.com", "Ana Silva", "Europe/Lisbon", "clinic", "pending"),
        ("BEN@example.com", "Ben", None, "import", "pending"),
        ("chloé@exämple.com", 'Chloé "CJ" Jones', "America/New_York", "import", "pending"),
    ]
    assert count(db, "outbox") == 3  # one confirmation each
    assert count(db, "consent") == 3
    # A second import of the same file adds nobody (case-insensitive dedupe against the database).
    again = import_csv(db, settings, write(tmp_path, MESSY.replace("BEN@", "ben@")), clock())
    assert (again.imported, again.already_present) == (0, 3)


def test_bad_rows_reject_the_whole_file(db, settings, clock, tmp_path):
    text = (
        "email,name,timezone\n"
        "good@example.com,Good,\n"
        "not-an-email,Bad,\n"
        "good2@example.com,Eve\u2028,Mars/Base\n"
        "GOOD@example.com,Dupe,\n"
    )
    path = write(tmp_path, text)
    with pytest.raises(RowsRejected) as err:
        import_csv(db, settings, path, clock())
    problems = err.value.report.problems
    assert problems[0].startswith(f"{path}:3: email: 'not-an-email' is not a valid email address")
    assert problems[1] == f"{path}:4: timezone: unknown time zone 'Mars/Base' (use an IANA name like Europe/London)"
    assert problems[2] == f"{path}:5: duplicate of line 2 (GOOD@example.com)"
    assert "nothing was imported" in str(err.value) and "\n" not in str(err.value)
    assert count(db, "subscribers") == 0 and count(db, "outbox") == 0 and count(db, "consent") == 0


def test_import_cache_is_given_back(db, settings, clock, tmp_path):
    """The import's big page cache (subscribers/io.py IMPORT_CACHE_KIB) lasts the import
    only, whether the file is stored or rejected."""
    before = db.execute("PRAGMA cache_size").fetchone()[0]
    import_csv(db, settings, write(tmp_path, MESSY), clock())
    assert db.execute("PRAGMA cache_size").fetchone()[0] == before
    with pytest.raises(RowsRejected):
        import_csv(db, settings, write(tmp_path, "email\nnew@example.com\nnot-an-email\n", "bad.csv"), clock())
    assert db.execute("PRAGMA cache_size").fetchone()[0] == before
    assert count(db, "subscribers") == 3  # the rejected file stored nothing


def _schema(db):
    return db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name").fetchall()


def test_a_first_import_builds_the_plain_indexes_at_the_end(db, settings, clock, tmp_path):
    """Into empty tables, the import drops their non-UNIQUE indexes and creates them
    again after the rows (funnel.db.indexes_built_after): the schema ends as it
    began, the indexes hold every row, and a rejected file changes neither."""
    from conftest import sql_trace

    before = _schema(db)
    with pytest.raises(RowsRejected), sql_trace(db) as ran:
        import_csv(db, settings, write(tmp_path, "email\nnew@example.com\nnot-an-email\n", "bad.csv"), clock())
    assert any(s.startswith("DROP INDEX [subscribers_status]") for s in ran)
    assert _schema(db) == before and count(db, "subscribers") == 0
    with sql_trace(db) as ran:
        import_csv(db, settings, write(tmp_path, MESSY), clock())
    dropped = sorted(s.split("[")[1].rstrip("]") for s in ran if s.startswith("DROP INDEX"))
    assert {"subscribers_status", "subscribers_email_nocase", "outbox_claim", "events_kind_at_reader",
            "consent_subscriber"} <= set(dropped)  # fmt: skip
    assert not any("autoindex" in name for name in dropped)  # UNIQUE ones check rows as they go in
    assert _schema(db) == before
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]  # every index holds every row
    plan = db.execute("EXPLAIN QUERY PLAN SELECT id FROM subscribers WHERE email = ? COLLATE NOCASE",
                      ("ben@example.com",)).fetchall()  # fmt: skip
    assert "subscribers_email_nocase" in str(plan)
    assert db.execute("SELECT COUNT(*) FROM subscribers INDEXED BY subscribers_status "
                      "WHERE status = 'pending'").fetchone()[0] == 3  # fmt: skip
    # A second import finds the tables in use: their indexes stay as they are.
    with sql_trace(db) as ran:
        import_csv(db, settings, write(tmp_path, "email\nlater@example.com\n", "later.csv"), clock())
    assert not [s for s in ran if s.startswith("DROP INDEX") and "subscriptions" not in s]
    assert _schema(db) == before and count(db, "subscribers") == 4


def test_an_import_sets_reader_bits_once_at_the_end_as_the_trigger_would(db, settings, clock, tmp_path):
    """The import drops the events' insert trigger and ORs the block's reader bits in
    at the end (funnel.db.reader_bits_after): the bits equal the ones computed from
    the events, across a word's sign bit (reader 63) and into a new word, merged
    with bits already there; the trigger is back afterwards and works, and a
    rejected file leaves schema and bits as they were."""
    from conftest import reader_bits, reader_bits_from_events, sql_trace

    from funnel.db import log_events

    before = _schema(db)
    first = "email\n" + "".join(f"r{i}@example.com\n" for i in range(62))
    with sql_trace(db) as ran:
        import_csv(db, settings, write(tmp_path, first, "first.csv"), clock())
    assert "DROP TRIGGER reader_bits_insert" in ran
    assert not [s for s in ran if s.startswith("UPDATE reader_bits")]  # no per-event trigger run
    assert reader_bits(db) == reader_bits_from_events(db) and reader_bits(db)
    with pytest.raises(RowsRejected):
        import_csv(db, settings, write(tmp_path, "email\nz@example.com\nnope\n", "bad.csv"), clock())
    assert _schema(db) == before and reader_bits(db) == reader_bits_from_events(db)
    import_csv(db, settings, write(tmp_path, MESSY), clock())  # readers 63, 64 and 65
    assert db.execute("SELECT MAX(id) FROM subscribers").fetchone()[0] == 65
    assert reader_bits(db) == reader_bits_from_events(db)
    assert {(word, value < 0) for kind, ref, word, value in reader_bits(db) if kind == "subscribed"} == {
        (0, True), (1, False)}  # bit 63 is the sign bit of word 0  # fmt: skip
    assert _schema(db) == before  # the trigger is back, as it was
    with transaction(db):
        log_events(db, [(iso(clock()), "confirmed", 64, None)])
    assert ("confirmed", "", 1, 1) in reader_bits(db) and reader_bits(db) == reader_bits_from_events(db)


def test_no_insert_trigger_of_an_import_table_reads_another_import_table(db):
    """While a first import runs, those tables lack their plain indexes: a trigger
    that fired on each row and looked one of them up would scan it once per row.
    Today the INSERT triggers touch only reader_bits and enrollment_queue, which
    keep their primary keys; this fails if one starts reading an import table."""
    import re

    from subscribers.io import IMPORT_TABLES

    triggers = db.execute("SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger'").fetchall()
    on_insert = [(name, sql) for name, table, sql in triggers
                 if table in IMPORT_TABLES and " INSERT ON " in " ".join(sql.split("BEGIN")[0].split())]  # fmt: skip
    assert {name for name, _ in on_insert} >= {"reader_bits_insert", "enrollment_queue_stream_added"}
    for name, sql in on_insert:
        body = sql.split("BEGIN", 1)[1]
        assert not [t for t in IMPORT_TABLES if re.search(rf"\b{t}\b", body)], name


def test_an_import_batch_records_each_readers_consent(db, settings, clock, tmp_path):
    """A batch's consent rows share everything but the reader (one statement for the
    batch); a mixed list goes row by row.  Both store the same columns and types."""
    import_csv(db, settings, write(tmp_path, MESSY), clock())
    rows = db.execute("SELECT subscriber_id, typeof(subscriber_id), purpose, action, at, source, ip, "
                      "user_agent, consent_text_version, note FROM consent ORDER BY id").fetchall()  # fmt: skip
    stamp = iso(clock())
    assert rows == [(sid, "integer", "newsletter", "requested", stamp, "import:people.csv", None, None,
                     settings.consent_version, None) for sid in (1, 2, 3)]  # fmt: skip
    mixed = [lifecycle.Consent(1, "withdrawn", clock(), source="x"),
             lifecycle.Consent(2, "confirmed", clock(), ip="192.0.2.1", note="a\x00b")]  # fmt: skip
    with transaction(db):
        lifecycle.record_consent(db, mixed)
        lifecycle.record_consent(db, [lifecycle.Consent(sid, "imported", clock(), note="n\x00") for sid in (1, 3)])
    assert db.execute("SELECT subscriber_id, action, source, ip, note FROM consent WHERE id > 3 "
                      "ORDER BY id").fetchall() == [  # fmt: skip
        (1, "withdrawn", "x", None, None), (2, "confirmed", "", "192.0.2.1", "a\x00b"),
        (1, "imported", "", None, "n\x00"), (3, "imported", "", None, "n\x00"),
    ]


def test_repeated_zones_and_sources_are_checked_on_every_line(db, settings, clock, tmp_path):
    """Zones and sources are checked once per distinct value (import speed), but a bad
    value is still reported on each line that has it, and good ones are stored."""
    text = ("email,timezone,source\n"
            "a@example.com,Mars/Base,ok\n"
            "b@example.com,Europe/Paris,ok\n"
            "c@example.com,Mars/Base,ok\n"
            "d@example.com,Europe/Paris,bad\x07\n")
    with pytest.raises(RowsRejected) as err:
        import_csv(db, settings, write(tmp_path, text), clock())
    lines = [p.split(": ", 1)[0].rsplit(":", 1)[1] for p in err.value.report.problems]
    assert lines == ["2", "4", "5"]
    report = import_csv(db, settings, write(tmp_path, text), clock(), skip_invalid=True)
    assert report.imported == 1
    assert db.execute("SELECT email, timezone, source FROM subscribers").fetchall() == [
        ("b@example.com", "Europe/Paris", "ok")]


def test_skip_invalid_imports_the_good_rows(db, settings, clock, tmp_path):
    text = "email,name\ngood@example.com,Good\nbad@,Bad\nok@example.com,\"Line\nBreak\"\nfine@example.com,\n"
    report = import_csv(db, settings, write(tmp_path, text), clock(), skip_invalid=True)
    assert report.imported == 2
    assert len(report.problems) == 2
    assert "name: the name contains a line break" in report.problems[1]
    assert {r[0] for r in db.execute("SELECT email FROM subscribers")} == {"good@example.com", "fine@example.com"}


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "the file is empty"),
        (b"   \n", "the file is empty"),
        (b"name,timezone\nAna,\n", ":1: missing column 'email'"),
        (b"email,shoe_size\na@example.com,9\n", ":1: unknown column 'shoe_size'"),
        (b"email,name\na@example.com,Andr\xe9\n", ":2: the file is not UTF-8 text"),
    ],
)
def test_broken_files(db, settings, clock, tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(InputError, match=message):
        import_csv(db, settings, path, clock())
    assert count(db, "subscribers") == 0


def test_pre_confirmed_needs_a_consent_note(db, settings, clock, tmp_path):
    path = write(tmp_path, "email\na@example.com\n")
    with pytest.raises(InputError, match="^--consent-note: "):
        import_csv(db, settings, path, clock(), pre_confirmed=True)
    report = import_csv(db, settings, path, clock(), pre_confirmed=True, consent_note="paper form, 2026")
    assert report.imported == 1
    sub = lifecycle.find(db, "a@example.com")
    assert sub.status == "active"
    assert db.execute("SELECT action, note FROM consent").fetchall() == [("imported", "paper form, 2026")]
    assert count(db, "outbox") == 0
    assert lifecycle.subscriptions(db, sub.id)["broadcasts"]["status"] == "subscribed"


def test_export_csv_and_json_with_consent(db, settings, clock):
    sid = optin.signup(db, settings, "ana@example.com", clock(), name="Ana", ip="203.0.113.5", source="form").subscriber_id
    optin.confirm(db, settings, tokens.confirm_token(settings, sid, lifecycle.get(db, sid).confirm_nonce, clock()),
                  clock(), ip="203.0.113.6")
    optin.signup(db, settings, "ben@example.com", clock())
    out = io.StringIO()
    assert write_export(db, out, "csv") == 2
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert rows[0]["email"] == "ana@example.com" and rows[0]["consent_ip"] == "203.0.113.6"
    assert rows[1]["status"] == "pending"
    out = io.StringIO()
    assert write_export(db, out, "json", email="ANA@example.com") == 1
    (person,) = json.loads(out.getvalue())
    assert [c["action"] for c in person["consent"]] == ["requested", "confirmed"]
    assert person["consent"][0]["ip"] == "203.0.113.5"


def test_erase_leaves_only_a_hash_and_the_file_forgets_the_address(db, settings, clock):
    address = "forget.me.please@example.com"
    sid = optin.signup(db, settings, address, clock(), name="Forgettable Name", ip="203.0.113.77",
                       user_agent="UniqueAgent/1.0").subscriber_id
    optin.signup(db, settings, "keep@example.com", clock(), name="Keeper")
    from funnel import devmail

    devmail.store(db, "bounce+1@clinic.example", [address], b"Subject: hi\r\nTo: " + address.encode() + b"\r\n\r\nhello\r\n", clock())
    erase(db, address, clock())
    sub = lifecycle.get(db, sid)
    assert (sub.status, sub.email, sub.name) == ("erased", None, "")
    assert lifecycle.is_suppressed(db, address)
    assert optin.signup(db, settings, address, clock()).action == "suppressed"
    db.close()
    blob = b"".join(p.read_bytes() for p in Path(settings.db).parent.glob("funnel.db*"))
    for needle in (address, "Forgettable", "203.0.113.77", "UniqueAgent"):
        assert needle.encode() not in blob, needle
    assert b"keep@example.com" in blob


def test_erase_unknown_address_still_suppresses(db, settings, clock):
    with pytest.raises(InputError, match="suppressed anyway"):
        erase(db, "stranger@example.com", clock())
    assert lifecycle.is_suppressed(db, "stranger@example.com")


def test_a_first_import_still_skips_suppressed_addresses(db, settings, clock, tmp_path):
    """With nobody stored the import skips its lookups, but only when nobody is suppressed either."""
    with pytest.raises(InputError, match="suppressed anyway"):
        erase(db, "stranger@example.com", clock())
    assert count(db, "subscribers") == 0
    report = import_csv(db, settings, write(tmp_path, "email\nStranger@example.com\nnew@example.com\n"), clock())
    assert (report.imported, report.already_present) == (1, 1)
    assert db.execute("SELECT email FROM subscribers").fetchall() == [("new@example.com",)]


def test_export_after_unsubscribe_and_fresh_signup_shows_the_current_consent(db, settings, clock):
    confirmed_at = clock()
    sid = optin.signup(db, settings, "ana@example.com", clock(), source="form").subscriber_id
    optin.confirm(db, settings, tokens.confirm_token(settings, sid, lifecycle.get(db, sid).confirm_nonce, clock()),
                  clock(), ip="203.0.113.6", source="link")
    lifecycle.unsubscribe(db, sid, clock.advance(days=1), source="link")
    optin.signup(db, settings, "ana@example.com", clock.advance(days=1), source="clinic-desk", ip="198.51.100.2")
    out = io.StringIO()
    write_export(db, out, "csv")
    (row,) = list(csv.DictReader(io.StringIO(out.getvalue())))
    # A fresh signup changes no state until the owner confirms (issue 10 item 2): still
    # unsubscribed, the old confirmation kept as history, the new request on record.
    assert row["status"] == "unsubscribed" and row["confirmed_at"] == iso(confirmed_at)
    assert (row["consent_source"], row["consent_ip"]) == ("clinic-desk", "198.51.100.2")
