"""Connection settings, CHECK constraints and migrations of funnel/db.py."""

import sqlite3

import pytest

from funnel.db import (
    OUTBOX_STATES,
    SUBSCRIBER_STATES,
    SUBSCRIPTION_STATES,
    connect,
    init_db,
    migrations,
    pending_migrations,
    transaction,
)


def test_connection_settings(settings):
    db = connect(settings.db, migrate=True)
    pragma = lambda name: db.execute(f"PRAGMA {name}").fetchone()[0]  # noqa: E731
    assert pragma("journal_mode") == "wal"
    assert pragma("busy_timeout") >= 5000
    assert pragma("foreign_keys") == 1
    assert pragma("synchronous") == 2  # FULL
    assert pragma("journal_size_limit") == 64 * 2**20


def test_the_wal_file_shrinks_after_a_big_write_while_other_connections_stay_open(tmp_path, monkeypatch):
    """A long-running web server and worker keep connections open, so SQLite never
    deletes the WAL; the size limit cuts it back once the log starts over."""
    import funnel.db as fdb

    monkeypatch.setattr(fdb, "WAL_SIZE_LIMIT", 2**20)
    path = tmp_path / "t.db"
    writer, web = connect(path), connect(path)
    writer.execute("CREATE TABLE t (v BLOB)")
    web.execute("SELECT COUNT(*) FROM t").fetchone()  # the web server's connection, open throughout
    wal = tmp_path / "t.db-wal"
    with transaction(writer):
        writer.conn.executemany("INSERT INTO t VALUES (randomblob(1000))", [()] * 8000)
    assert wal.stat().st_size > 7 * 2**20
    for _ in range(3):  # the next commits checkpoint and start the log over
        with transaction(writer):
            writer.execute("INSERT INTO t VALUES (x'00')")
    assert wal.stat().st_size <= 2**20
    assert web.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 8003


def test_nested_transactions_roll_back_alone_at_any_depth(tmp_path):
    db = connect(tmp_path / "t.db")
    db.execute("CREATE TABLE t (v TEXT)")
    values = lambda: sorted(v for (v,) in db.execute("SELECT v FROM t"))  # noqa: E731

    class Boom(Exception):
        pass

    with transaction(db):
        db.execute("INSERT INTO t VALUES ('outer')")
        with transaction(db):
            db.execute("INSERT INTO t VALUES ('middle')")
            with pytest.raises(Boom), transaction(db):
                db.execute("INSERT INTO t VALUES ('inner, undone')")
                raise Boom
            with transaction(db):
                db.execute("INSERT INTO t VALUES ('inner, kept')")
        with pytest.raises(Boom), transaction(db):
            db.execute("INSERT INTO t VALUES ('second middle, undone')")
            with transaction(db):
                db.execute("INSERT INTO t VALUES ('its child, undone')")
            raise Boom
    assert not db.conn.in_transaction
    assert values() == ["inner, kept", "middle", "outer"]
    with pytest.raises(Boom), transaction(db):
        db.execute("INSERT INTO t VALUES ('all undone')")
        with transaction(db):
            db.execute("INSERT INTO t VALUES ('nested, undone with it')")
        raise Boom
    assert values() == ["inner, kept", "middle", "outer"]


def test_init_twice_applies_nothing_the_second_time(settings):
    db = connect(settings.db)
    first = init_db(db)
    assert first == [m.name for m in migrations._migrations]
    assert init_db(db) == [] and pending_migrations(db) == []


@pytest.mark.parametrize(
    "table, column, good, states",
    [
        ("subscribers", "status", "pending", SUBSCRIBER_STATES),
        ("subscriptions", "status", "subscribed", SUBSCRIPTION_STATES),
        ("outbox", "status", "queued", OUTBOX_STATES),
    ],
)
def test_check_constraints_mirror_the_enums(db, settings, clock, table, column, good, states):
    from funnel import outbox
    from subscribers import optin

    sid = optin.signup(db, settings, "a@example.com", clock()).subscriber_id
    if table == "subscriptions":
        db.execute(
            "INSERT INTO subscriptions (subscriber_id, stream, status, updated_at) VALUES (?, 'x', ?, 'now')",
            (sid, good),
        )
    if table == "outbox":
        outbox.enqueue(db, settings, dedupe_key="k", kind="test", subscriber_id=sid, to_addr="a@example.com",
                       due_at=clock(), now=clock())
    for state in states:  # every known state is accepted...
        db.execute(f"UPDATE {table} SET {column} = ?", (state,))
    with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
        db.execute(f"UPDATE {table} SET {column} = 'limbo'")  # ...and nothing else
