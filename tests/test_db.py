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
