"""kill -9 the real `funnel send` again and again: nothing is lost, duplicates stay bounded.

The sink is the live aiosmtpd in this test process; each message is identified
by its Message-ID, which the outbox row keeps across resends.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime

import pytest
from conftest import live_processes

from funnel.db import connect
from subscribers.io import import_csv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 20


def funnel_send(env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "import cli; cli.main()", "send", "-q"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def pending_subscribers(tmp_path, settings, n: int) -> None:
    """n pending readers from a CSV import: n confirmation rows, due now (real time)."""
    csv = tmp_path / "people.csv"
    csv.write_text("email,name\n" + "".join(f"p{i}@example.com,Reader {i}\n" for i in range(n)))
    db = connect(settings.db, migrate=True)
    assert import_csv(db, settings, csv, datetime.now(UTC)).imported == n
    db.close()


def env_for(cli_env: dict, smtp_url: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNNEL_")}
    env.update(cli_env, FUNNEL_SMTP_URL=smtp_url, **extra)
    return env


@pytest.mark.slow
def test_kill_9_twenty_times_then_resume(tmp_path, settings, cli_env, smtp_server):
    n = 2000
    pending_subscribers(tmp_path, settings, n)
    # 200 messages/s keeps the run going through all 20 kills.  The crash limit
    # is raised because random kills, unlike a poison message, may hit the same
    # resent row more than 3 times (parking is tested in test_sender.py).
    env = env_for(
        cli_env,
        smtp_server.url + "?rate=200",
        FUNNEL_BATCH_SIZE=str(BATCH),
        FUNNEL_CRASH_LIMIT="1000",
    )
    rng = random.Random(20261121)
    db = connect(settings.db)
    in_flight_at_kills = 0  # rows in `sending` summed over the kills: bounds the duplicates
    in_flight_rows: set[int] = set()  # distinct rows caught in flight: each must be resent as uncertain
    kills = 0
    for _ in range(20):
        proc = funnel_send(env)
        # Wait until this process itself holds leases (rows in `sending` owned by
        # its pid). Waiting for the sink to grow instead raced under load: the
        # dead sender's last message could land late, and the new process was
        # then killed before it claimed anything, so the final send had nothing
        # left to recover.
        owned = f"%:{proc.pid}:%"
        deadline = time.monotonic() + 20
        while proc.poll() is None and not db.execute(
            "SELECT 1 FROM outbox WHERE status = 'sending' AND lease_owner LIKE ?", (owned,)
        ).fetchone():
            assert time.monotonic() < deadline, "funnel send never started sending"
            time.sleep(0.005)
        time.sleep(rng.uniform(0.05, 0.5))
        if proc.poll() is not None:
            break  # it finished everything before we could kill it
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        kills += 1
        # A row can still be `sending` at the next kill if the next process was
        # killed before it recovered it (the sink may store the dead sender's
        # last message after we looked), so count distinct rows for the
        # uncertain check and the per-kill sum for the duplicate bound.
        ids = [r[0] for r in db.execute("SELECT id FROM outbox WHERE status = 'sending'")]
        in_flight_at_kills += len(ids)
        in_flight_rows.update(ids)
    assert kills == 20, "the send finished too early to be killed 20 times"

    proc = funnel_send(env)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert "uncertain after a crash (resent)" in out.decode()

    rows = db.execute("SELECT message_id, status, uncertain FROM outbox").fetchall()
    assert len(rows) == n and {r[1] for r in rows} == {"sent"}
    received = Counter(m.message["Message-ID"] for m in smtp_server.messages)
    assert set(received) == {r[0] for r in rows}  # every recipient got their message
    duplicates = sum(received.values()) - n
    assert duplicates <= in_flight_at_kills <= kills * BATCH
    assert sum(r[2] for r in rows) >= len(in_flight_rows) > 0  # resent rows were counted uncertain
    # each recipient's copies are the same message
    by_rcpt = {m.rcpt_tos[0]: m.message["Message-ID"] for m in smtp_server.messages}
    assert len(by_rcpt) == n
    db.close()


def test_two_funnel_send_processes_share_the_work(tmp_path, settings, cli_env, smtp_server):
    n = 400
    pending_subscribers(tmp_path, settings, n)
    env = env_for(cli_env, smtp_server.url, FUNNEL_BATCH_SIZE="10")
    procs = [funnel_send(env) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    sent = [int(o[0].split()[0]) for o in outs]
    assert sum(sent) == n
    ids = [m.message["Message-ID"] for m in smtp_server.messages]
    assert len(ids) == len(set(ids)) == n


def funnel_worker(env: dict, connections: int) -> subprocess.Popen:
    """`funnel worker` in a process group of its own (it and its sender processes)."""
    return subprocess.Popen(
        [sys.executable, "-c", "import cli; cli.main()", "worker", "--interval", "0.1",
         "--connections", str(connections)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip


def group_pids(pgid: int) -> set[int]:
    """The live processes of process group *pgid* (Linux /proc)."""
    return live_processes(pgrp=pgid)


def in_flight(db, pids: set[int]) -> list[tuple[str, str]]:
    """(lease owner, lease token) of every row that processes *pids* have in flight."""
    rows = db.execute(
        "SELECT lease_owner, lease_token FROM outbox WHERE status = 'sending'"
    ).fetchall()
    return [(o, t) for o, t in rows if o and int(o.split(":")[1]) in pids]


def wait_until_sent(db, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (
        db.execute("SELECT COUNT(*) FROM outbox WHERE status != 'sent'").fetchone()[0]
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)


def stop_workers(workers: list[subprocess.Popen]) -> list[tuple[str, str]]:
    for proc in workers:
        proc.send_signal(signal.SIGTERM)
    return [proc.communicate(timeout=60) for proc in workers]


@pytest.mark.slow
def test_two_workers_with_two_connections_each_survive_kill_9(
    tmp_path, settings, cli_env, smtp_server
):
    n = 1000
    pending_subscribers(tmp_path, settings, n)
    # 100/s per relay, split over each worker's two connections: the run lasts
    # long enough for four kills.
    env = env_for(
        cli_env, smtp_server.url + "?rate=100", FUNNEL_BATCH_SIZE=str(BATCH),
        FUNNEL_CRASH_LIMIT="1000",
    )  # fmt: skip
    rng = random.Random(20261204)
    db = connect(settings.db)
    workers = [funnel_worker(env, 2) for _ in range(2)]
    in_flight_at_kills = kills = 0
    try:
        for _ in range(4):
            victim = workers.pop(0)
            deadline = time.monotonic() + 30
            # Both of its senders (two processes) hold a batch of their own at once.
            while len({owner for owner, _ in in_flight(db, group_pids(victim.pid))}) < 2:
                assert victim.poll() is None, victim.communicate()[1].decode()
                assert time.monotonic() < deadline, "a worker never sent over two connections"
                time.sleep(0.005)
            time.sleep(rng.uniform(0.05, 0.3))
            pids = group_pids(victim.pid)
            os.killpg(victim.pid, signal.SIGKILL)  # the worker and its sender process
            victim.communicate()
            kills += 1
            in_flight_at_kills += len(in_flight(db, pids))
            workers.append(funnel_worker(env, 2))
        wait_until_sent(db, seconds=90)
    finally:
        outs = stop_workers(workers)
    assert [p.returncode for p in workers] == [0, 0], [o[1] for o in outs]

    rows = db.execute("SELECT message_id, status FROM outbox").fetchall()
    assert len(rows) == n and {r[1] for r in rows} == {"sent"}
    received = Counter(m.message["Message-ID"] for m in smtp_server.messages)
    assert set(received) == {r[0] for r in rows}  # every recipient got their message
    # Only a message in flight at a kill may arrive twice; nothing else ever does.
    assert sum(received.values()) - n <= in_flight_at_kills <= kills * 2 * BATCH
    db.close()


def test_two_workers_with_two_connections_each_send_every_row_once(
    tmp_path, settings, cli_env, smtp_server
):
    n = 400
    pending_subscribers(tmp_path, settings, n)
    env = env_for(cli_env, smtp_server.url, FUNNEL_BATCH_SIZE="10")
    db = connect(settings.db)
    workers = [funnel_worker(env, 2) for _ in range(2)]
    try:
        wait_until_sent(db, seconds=60)
    finally:
        outs = stop_workers(workers)
    assert [p.returncode for p in workers] == [0, 0], [o[1] for o in outs]
    ids = [m.message["Message-ID"] for m in smtp_server.messages]
    assert len(ids) == len(set(ids)) == n
    db.close()
