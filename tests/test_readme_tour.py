"""The README's admin tour, run line by line as a newcomer would after `make up`.

The shell blocks marked ``<!-- tour`` in README.md are run in order, each line
through bash, from a scratch folder set up the way `make up` leaves the
checkout: ``funnel init --dev`` wrote ``./funnel.toml`` (dev mode, a temp
database), ``funnel`` is on PATH (what ``. .venv/bin/activate`` does) and
``docs/samples`` is there.  The tour's scratch folder ``/tmp/funnel-tour`` is
redirected to a temp folder.  Long-running commands (``worker``, ``up``,
``serve``) are skipped; the dev inbox of ``funnel up`` is stood in for by the
live SMTP sink, named by FUNNEL_SMTP_URL.

Every line must exit 0.  Then the database, the files written and the mail
received are checked: the tour did what its comments say.

The tour's times are relative ("tomorrow 09:00", "in 14 days 18:00"), so it
stays valid on any date; a test checks it holds no fixed date.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from funnel.db import connect, iso, parse_iso

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SCRATCH = "/tmp/funnel-tour"
LONG_RUNNING = {"worker", "up", "serve"}


def tour_blocks(text: str) -> list[tuple[str, list[str]]]:
    """[(marker, [command line, ...])] for each ```sh block after a ``<!-- tour`` comment.

    Backslash continuations are joined.
    """
    blocks = []
    pattern = re.compile(r"<!-- (tour[^>]*)-->\s*```sh\n(.*?)```", re.S)
    for m in pattern.finditer(text):
        joined = m.group(2).replace("\\\n", " ")
        lines = [ln.strip() for ln in joined.splitlines()]
        blocks.append((m.group(1).strip(), [ln for ln in lines if ln and not ln.startswith("#")]))
    return blocks


def test_tour_blocks_are_found_and_cover_the_admin_commands():
    blocks = tour_blocks(README.read_text(encoding="utf-8"))
    assert [marker for marker, _ in blocks] == [
        "tour: tests/test_readme_tour.py runs these lines in order",
        "tour: after the webinar",
    ]
    commands = " ".join(line for _, lines in blocks for line in lines)
    for command in ("funnel init", "subscribers import", "content import", "series build",
                    "preview", "campaign schedule", "webinar create", "webinar attendance"):
        assert command in commands
    # The tour never writes into the checkout's own content/...
    assert "content/" not in commands.replace("docs/samples", "")
    # ...and holds no fixed date that the calendar would overtake.
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", commands)
    assert '--at "tomorrow 09:00"' in commands and '--start "in 14 days 18:00"' in commands


@pytest.mark.slow
def test_readme_tour_runs_line_by_line(tmp_path, smtp_server):
    text = README.read_text(encoding="utf-8")
    assert "make up" in text.split("## ", 1)[0]  # the quick start still opens with make up
    blocks = tour_blocks(text)
    scratch = tmp_path / "funnel-tour"
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "docs").symlink_to(REPO / "docs")
    bundled_before = sorted(str(p) for p in (REPO / "content").rglob("*"))

    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("FUNNEL_") and k not in ("PYTHONPATH",)}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["FUNNEL_SMTP_URL"] = smtp_server.url  # funnel up's dev inbox

    def sh(line: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", "set -e; " + line], cwd=checkout, env=env,
                              capture_output=True, text=True, timeout=120)

    made = sh("funnel init --dev")  # what `make up` runs first
    assert made.returncode == 0, made.stderr
    assert (checkout / "funnel.toml").is_file()

    outputs: dict[str, str] = {}

    def run_block(lines: list[str]) -> None:
        for line in lines:
            if line.startswith(". .venv/bin/activate"):
                continue  # PATH already holds the venv's bin/
            words = shlex.split(line, comments=True)
            if words[:1] == ["funnel"] and len(words) > 1 and words[1] in LONG_RUNNING:
                continue
            line = line.replace(SCRATCH, str(scratch))
            done = sh(line)
            assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
            assert "Traceback" not in done.stderr, done.stderr
            outputs[line.replace(str(scratch), SCRATCH)] = done.stdout

    (_, now_lines), (_, after_lines) = blocks
    run_block(now_lines)

    db = connect(str(checkout / "funnel.db"))
    status = {r["email"]: r["status"] for r in db.query("select email, status from subscribers")}
    assert status["sam@example.com"] == "pending"  # added: a confirmation is on its way
    assert status["june.park@example.com"] == status["ravi.menon@example.com"] == "active"  # paper
    assert status["priya.shah@example.com"] == "pending"  # the CSV import asks for confirmation
    assert status["tom.okafor@example.com"] == "unsubscribed"
    assert "marco.rossi@example.com" not in status  # erased: only a hash is left
    assert (scratch / "sam.json").read_text().count("sam@example.com") >= 1
    assert len(list((scratch / "articles").glob("walking-for-a-stiff-back-*.md"))) == 2
    assert (scratch / "series" / "walking" / "series.toml").is_file()
    assert list((scratch / "preview").glob("importance-of-exercise-*.eml"))
    (campaign,) = list(db.query("select status, subject from campaigns"))
    assert campaign["status"] == "scheduled"
    assert campaign["subject"] == "Clinic news: longer opening hours"
    webinar = next(db.query("select * from webinars where slug = 'back-care-qa'"))
    assert webinar["sequence"] >= 1  # the edit moved it: an updated invite
    regs = {r["email"]: r["status"] for r in db.query(
        "select s.email, r.status from registrations r join subscribers s on s.id = r.subscriber_id")}
    assert regs == {"priya.shah@example.com": "registered", "june.park@example.com": "registered"}
    received = {rcpt for m in smtp_server.messages for rcpt in m.rcpt_tos}
    # `funnel send` delivered the confirmations of the added and imported readers...
    assert {"sam@example.com", "priya.shah@example.com", "lena.berg@example.com"} <= received
    # ...and enrolled the readers imported as pre-confirmed (part 1 goes out at once, or
    # after the quiet hours in their zone: the real clock decides, so it is not asserted).
    enrolled = {r["email"] for r in db.query(
        "select s.email from enrollments e join subscribers s on s.id = e.subscriber_id "
        "where e.series = 'importance-of-exercise'")}
    assert {"june.park@example.com", "ravi.menon@example.com"} <= enrolled
    # ...and the registrations queued their confirmations for the worker.
    queued = {r["to_addr"] for r in db.query(
        "select to_addr from outbox where kind like 'webinar%' and ref like '%back-care-qa%'")}
    assert {"priya.shah@example.com", "june.park@example.com"} <= queued

    # "After the webinar": the webinar has taken place (moved into the past here).  The
    # time comes from the commands' own clock (the row's created_at), not this process's.
    created = parse_iso(webinar["created_at"])
    db.execute("update webinars set starts_at = ? where slug = 'back-care-qa'",
               [iso(created - timedelta(hours=3))])
    db.conn.commit()
    run_block(after_lines)
    attendance = next(v for k, v in outputs.items() if "webinar attendance" in k)
    assert "1 attended, 1 no-show" in attendance
    assert "<svg" in (scratch / "report.html").read_text(encoding="utf-8")

    # The checkout's content/ is untouched.
    assert sorted(str(p) for p in (REPO / "content").rglob("*")) == bundled_before
