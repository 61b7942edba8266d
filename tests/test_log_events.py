"""Events written many at a time (``funnel.db.log_events`` and the ledger marks):
the same rows, with the same types, as one INSERT per event, and the report's
reader sets (reader_bits, kept by triggers) still equal to what the events say."""

from __future__ import annotations

from datetime import timedelta

from conftest import reader_bits, reader_bits_from_events
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from campaigns import enrollment
from funnel import outbox
from funnel.db import log_events, transaction
from subscribers.io import import_csv

KINDS = ("subscribed", "confirmed", "sent", "enrolled", "failed", "preferences", "completed", "registered")
text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)
event = st.tuples(
    st.just("2026-12-04T10:00:00Z"), st.sampled_from(KINDS), st.one_of(st.none(), st.integers(1, 2**40)),
    st.one_of(st.none(), text, st.just("series:x")), st.one_of(st.none(), text, st.just('{"a": [1, "é"]}')),
)


def _events(db):
    return db.execute(
        "SELECT at, kind, subscriber_id, ref, data, typeof(subscriber_id), typeof(ref), typeof(data) "
        "FROM events ORDER BY id"
    ).fetchall()


def _bits_agree(db):
    kept = reader_bits(db)
    assert kept == reader_bits_from_events(db)
    return kept


_PAIR: list = []


def _pair(tmp_path_factory):
    """Two migrated databases, made once (migrating per example would be most of the time)."""
    from funnel.db import connect

    if not _PAIR:
        folder = tmp_path_factory.mktemp("ev")
        _PAIR.extend(connect(folder / f"{n}.db", migrate=True) for n in ("one", "many"))
    for db in _PAIR:
        db.execute("PRAGMA foreign_keys = OFF")  # random reader ids, no subscribers rows
        with transaction(db):
            db.execute("DELETE FROM events")
            db.execute("DELETE FROM reader_bits")
    return _PAIR


@hsettings(max_examples=60, deadline=None)
@given(rows=st.lists(event, max_size=30))
def test_log_events_writes_what_one_insert_per_event_writes(tmp_path_factory, rows):
    one, many = _pair(tmp_path_factory)
    with transaction(one):
        for row in rows:
            one.execute("INSERT INTO events (at, kind, subscriber_id, ref, data) VALUES (?, ?, ?, ?, ?)", row)
    with transaction(many):
        log_events(many, rows)
    assert _events(many) == _events(one)
    assert _bits_agree(many) == _bits_agree(one)


shared = st.tuples(
    st.sampled_from(KINDS), st.one_of(st.none(), text, st.just("series:x"), st.just("a\x00b")),
    st.one_of(st.none(), text, st.just('{"a": [1, "é"]}')),
)


@hsettings(max_examples=60, deadline=None)
@given(same=shared, ids=st.lists(st.one_of(st.none(), st.integers(1, 2**40)), min_size=2, max_size=30),
       odd=st.one_of(st.none(), st.integers(0, 29)), five=st.booleans())
def test_one_event_for_many_readers_writes_what_one_insert_per_event_writes(
        tmp_path_factory, same, ids, odd, five):
    """A chunk that is one event for many readers binds the shared values once
    (the ref and data may hold a NUL there); one different row, or a reader id
    that is not an integer, sends the chunk the general way."""
    one, many = _pair(tmp_path_factory)
    kind, ref, data = same
    rows = [("2026-12-04T10:00:00Z", kind, sid, ref, *((data,) if five else ())) for sid in ids]
    if odd is not None and odd < len(rows):
        rows[odd] = ("2026-12-04T10:00:01Z", *rows[odd][1:])
    with transaction(one):
        for row in rows:
            one.execute("INSERT INTO events (at, kind, subscriber_id, ref, data) VALUES (?, ?, ?, ?, ?)",
                        (*row, None) if len(row) == 4 else row)  # fmt: skip
    with transaction(many):
        log_events(many, rows)
    assert _events(many) == _events(one)
    assert _bits_agree(many) == _bits_agree(one)


def test_shared_event_path_is_taken_only_for_integer_reader_ids():
    from funnel.db import same_but_reader

    rows = [("t", "subscribed", 1, "import"), ("t", "subscribed", None, "import")]
    assert same_but_reader(rows, 2) == ("t", "subscribed", "import")
    assert same_but_reader([*rows, ("t", "subscribed", "3", "import")], 2) is None  # text id: typed as text
    assert same_but_reader([*rows, ("t", "subscribed", True, "import")], 2) is None  # bool is not an id
    assert same_but_reader([*rows, ("t", "subscribed", 4, "import", '{"x": 1}')], 2) is None
    assert same_but_reader([*rows, ("t", "confirmed", 4, "import")], 2) is None
    assert same_but_reader(rows[:1], 2) is None


def test_log_events_splits_long_lists(db, monkeypatch):
    import funnel.db as fdb

    monkeypatch.setattr(fdb, "EVENTS_PER_STATEMENT", 3)
    db.execute("PRAGMA foreign_keys = OFF")
    with transaction(db):
        log_events(db, [("2026-12-04T10:00:00Z", "subscribed", i, "import") for i in range(1, 11)])
    assert [r[2] for r in _events(db)] == list(range(1, 11))
    assert _bits_agree(db) == [("subscribed", "", 0, sum(1 << i for i in range(1, 11)))]


def test_an_import_keeps_the_reader_sets(db, settings, clock, tmp_path):
    csv = tmp_path / "people.csv"
    csv.write_text("email,name\n" + "".join(f"p{i}@example.org,P {i}\n" for i in range(150)))
    import_csv(db, settings, csv, clock.now)
    pre = tmp_path / "more.csv"
    pre.write_text("email\n" + "".join(f"q{i}@example.org\n" for i in range(70)))
    import_csv(db, settings, pre, clock.now, pre_confirmed=True, consent_note="signed up at the desk")
    kept = dict(((k, r, w), b) for k, r, w, b in _bits_agree(db))
    assert sum(bin(b & (2**64 - 1)).count("1") for (k, _r, _w), b in kept.items() if k == "subscribed") == 150
    assert sum(bin(b & (2**64 - 1)).count("1") for (k, _r, _w), b in kept.items() if k == "confirmed") == 70


def test_enrolling_and_marking_sends_keep_the_reader_sets(db, settings, clock, tmp_path):
    csv = tmp_path / "people.csv"
    csv.write_text("email\n" + "".join(f"p{i}@example.org\n" for i in range(90)))
    import_csv(db, settings, csv, clock.now, pre_confirmed=True, consent_note="signed up at the desk")
    slug = "importance-of-exercise"
    report = enrollment.enroll_segment(db, settings, slug, clock.now, segment="all", batch=40)
    assert report.enrolled == 90
    kept = _bits_agree(db)
    assert sum(bin(b & (2**64 - 1)).count("1") for k, r, _w, b in kept if (k, r) == ("enrolled", f"series:{slug}")) == 90
    # Queue part 1 and mark the batch as the sender does: one sent, one failed, one retried.
    later = clock.now + timedelta(minutes=1)
    enrollment.apply_version(db, enrollment.load(settings, slug), later)  # as `funnel series apply` does
    enrollment.schedule_series(db, settings, later)
    token, claimed = outbox.claim(db, later, 3, where="AND kind = 'series'")
    assert len(claimed) == 3
    outcomes = [
        outbox.Outcome(claimed[0].id, "sent", smtp_code=250),
        outbox.Outcome(claimed[1].id, "failed", smtp_code=550, error="no such user"),
        outbox.Outcome(claimed[2].id, "retry", smtp_code=451, error="later", retry_at=later),
    ]
    assert outbox.mark(db, token, outcomes, later) == 0
    logged = db.execute(
        "SELECT kind, subscriber_id, ref FROM events WHERE kind IN ('sent', 'failed', 'retry') ORDER BY id"
    ).fetchall()
    assert logged == [("sent", claimed[0].subscriber_id, claimed[0].ref),
                      ("failed", claimed[1].subscriber_id, claimed[1].ref)]
    sent = [(k, r) for k, r, _w, b in _bits_agree(db) if k == "sent"]
    assert sent == [("sent", claimed[0].ref)]


def test_unchanged_reads_again_after_any_write_here_or_elsewhere(db, settings):
    """db.unchanged: one load while nothing changes; a write on this connection or a
    commit on another one (the admin editing the campaign mid-send) loads again."""
    from funnel.db import connect, unchanged

    db.execute("CREATE TABLE box (v TEXT)")
    db.execute("INSERT INTO box VALUES ('a')")
    loads = []

    def read():
        loads.append(1)
        return db.execute("SELECT v FROM box").fetchone()[0]

    assert [unchanged(db, ("box",), read) for _ in range(3)] == ["a", "a", "a"]
    assert len(loads) == 1
    db.execute("UPDATE box SET v = 'b'")  # this connection writes
    assert unchanged(db, ("box",), read) == "b" and len(loads) == 2
    other = connect(settings.db)
    with transaction(other):  # another process commits
        other.execute("UPDATE box SET v = 'c'")
    assert unchanged(db, ("box",), read) == "c" and len(loads) == 3
    assert unchanged(db, ("other key",), lambda: "x") == "x"  # keys are apart
    assert unchanged(db, ("box",), read) == "c" and len(loads) == 3
