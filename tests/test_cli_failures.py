"""Every CLI failure is one line (issue 10 item 8).

Each command that writes is run as a real `funnel` process against a real
SQLite file in three bad situations: an argument that is not valid UTF-8
(bytes in argv, as a shell passes them), a full disk (a small tmpfs filled
to the last block) and a read-only database (the tmpfs remounted read-only).
Each must exit with status 1, print exactly one line on stderr naming the
problem, print no traceback, and leave the database as it was.  Commands
that queue mail meet the problem in the preflight (campaigns.check), the
others when SQLite writes; both say so in one line.

The tmpfs needs root (mount); without it those cases skip, saying so.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FUNNEL = [sys.executable, "-c", "import sys, cli; sys.argv[0] = 'funnel'; cli.main()"]

ACTIVE = "ana@example.com"


def _env(cli_env, db: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNNEL_")}
    env.update(cli_env)
    env["FUNNEL_DB"] = str(db)
    env["PYTHONPATH"] = str(REPO)
    return env


def funnel(env: dict, *args: str | bytes) -> subprocess.CompletedProcess:
    argv = [a if isinstance(a, bytes) else a.encode() for a in [*FUNNEL, *args]]
    return subprocess.run(argv, env=env, cwd=env["FUNNEL_WORKDIR"], capture_output=True, timeout=120)


def snapshot(db: Path) -> list[str]:
    """Everything the database holds, read without writing (immutable=1)."""
    conn = sqlite3.connect(f"file:{db}?immutable=1", uri=True)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def write_commands(work: Path) -> list[tuple[str, list[str | bytes]]]:
    """(name, argv) for each command that writes; every one would succeed on a healthy disk."""
    csv = work / "people.csv"
    body = work / "news.md"
    return [
        ("init (new file)", ["init"]),
        ("subscribers add", ["subscribers", "add", "new@example.com", "--name", "New"]),
        ("subscribers import", ["subscribers", "import", str(csv)]),
        ("subscribers unsubscribe", ["subscribers", "unsubscribe", ACTIVE]),
        ("subscribers erase", ["subscribers", "erase", ACTIVE, "--yes"]),
        ("campaign create", ["campaign", "create", "--subject", "News", "--body", str(body)]),
        ("campaign schedule", ["campaign", "schedule", "1", "--in", "2h"]),
        ("webinar create", ["webinar", "create", "second", "--title", "Second", "--start", "in 30 days 18:00",
                            "--tz", "Europe/London", "--join-url", "https://meet.backinmotion-physio.co.uk/2"]),
        ("webinar register", ["webinar", "register", "spine", "new@example.com", "--name", "New"]),
        ("series enroll", ["series", "enroll", "importance-of-exercise", "--segment", "all"]),
        ("send", ["send"]),
    ]


@pytest.fixture
def world(cli_env, tmp_path):
    """A database with an active reader, a draft campaign and a webinar, built by the CLI."""
    work = tmp_path / "work"
    work.mkdir()
    db = work / "funnel.db"
    env = _env(cli_env, db)
    env["FUNNEL_WORKDIR"] = str(work)
    (work / "people.csv").write_text("email,name\nbo@example.com,Bo\n", encoding="utf-8")
    (work / "news.md").write_text("Some news.\n", encoding="utf-8")
    (work / "ana.csv").write_text(f"email,name\n{ACTIVE},Ana\n", encoding="utf-8")
    for args in (
        ["init"],
        ["subscribers", "import", str(work / "ana.csv"), "--pre-confirmed", "--consent-note", "paper form"],
        ["campaign", "create", "--subject", "Draft", "--body", str(work / "news.md")],
        ["webinar", "create", "spine", "--title", "Spine", "--start", "in 20 days 18:00", "--tz",
         "Europe/London", "--join-url", "https://meet.backinmotion-physio.co.uk/spine"],
    ):
        r = funnel(env, *args)
        assert r.returncode == 0, (args, r.stderr.decode())
    return work, db, env


def assert_one_line(r: subprocess.CompletedProcess, name: str, *needles: str) -> str:
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 1, (name, r.returncode, err)
    assert "Traceback" not in err, (name, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, (name, err)
    assert lines[0].startswith("Error: "), (name, err)
    assert any(n in lines[0] for n in needles), (name, lines[0])
    return lines[0]


# ----------------------------------------------------------------- invalid UTF-8
def test_invalid_utf8_arguments_are_one_line_and_change_nothing(world):
    work, db, env = world
    before = snapshot(db)
    for name, args in write_commands(work):
        # corrupt the last argument (an address, a name, a subject, a path...);
        # init and send take none, so they get one extra, undecodable argument
        args = [*args, b"\xff"] if name in ("init (new file)", "send") else [*args[:-1], args[-1].encode() + b"\xff"]
        r = funnel(env, *args)
        line = assert_one_line(r, name, "is not valid UTF-8")
        assert "\\xff" in line  # the bad byte is shown, escaped
    assert funnel(env, "subscribers", "add", b"\xff@example.com").returncode == 1
    assert snapshot(db) == before


# ----------------------------------------------------------------- full disk and read-only database
@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / f"mnt-{uuid.uuid4().hex[:8]}"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"could not mount a tmpfs in CI: {r.stderr.decode().strip()}")
        pytest.skip(f"could not mount a tmpfs: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _move_onto(world, mnt: Path) -> tuple[Path, dict]:
    work, db, env = world
    target = mnt / "funnel.db"
    shutil.copyfile(db, target)
    env = {**env, "FUNNEL_DB": str(target)}
    return target, env


def _fill(mnt: Path) -> None:
    fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    assert os.statvfs(mnt).f_bavail == 0


def test_full_disk_is_one_line_and_changes_nothing(world, tmpfs):
    work, _, _ = world
    db, env = _move_onto(world, tmpfs)
    before = snapshot(db)
    _fill(tmpfs)
    for name, args in write_commands(work):
        run_env = {**env, "FUNNEL_DB": str(tmpfs / "fresh.db")} if name.startswith("init") else env
        r = funnel(run_env, *args)
        assert_one_line(r, name, "disk holding the database is full", "cannot be written (disk I/O error)")
        for leftover in tmpfs.glob("funnel.db-*"):  # a -shm stub the failed open left behind
            leftover.unlink()
    (tmpfs / "filler").unlink()
    assert snapshot(db) == before
    # with space again the same command works: nothing was left half-written
    r = funnel(env, "subscribers", "add", "new@example.com")
    assert r.returncode == 0, r.stderr.decode()


def test_read_only_database_is_one_line_and_changes_nothing(world, tmpfs):
    work, _, _ = world
    db, env = _move_onto(world, tmpfs)
    before = snapshot(db)
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    for name, args in write_commands(work):
        run_env = {**env, "FUNNEL_DB": str(tmpfs / "fresh.db")} if name.startswith("init") else env
        r = funnel(run_env, *args)
        assert_one_line(r, name, "read-only", "is not writable")
    assert snapshot(db) == before
