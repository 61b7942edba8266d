"""The suite passes on any date: run it with the clock moved to two awkward instants.

Each child run sets ``FUNNEL_TEST_NOW``: the fake clock starts there and
tests/conftest.py moves the real clock (time-machine, ticking) to the same
instant, in the child and in the ``funnel`` processes it starts.  A test that
hard-codes a date, or code that reads the real clock instead of the injected
one, fails in at least one of them.  2028-02-29 is a leap day; 2031-07-01 is
in summer time, years past every date the tests were written on.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO, SHIFTED

SHIFTS = ("2028-02-29T12:00:00Z", "2031-07-01T12:00:00Z")
#: Left out of the shifted runs to keep ``make test`` near 4 minutes: twenty kill -9
#: cycles at a throttled 200 messages/s measure crash recovery, not dates (the
#: main run has it), and test_two_funnel_send_processes_share_the_work still
#: runs real ``funnel send`` children on the shifted clock.
NOT_DATED = ("tests/test_crash.py::test_kill_9_twenty_times_then_resume",)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(SHIFTED, reason="already inside a clock-shifted run"),
]


def test_suite_passes_with_the_clock_moved_to_2028_and_2031(tmp_path):
    procs = {}
    for when in SHIFTS:
        log = tmp_path / f"pytest-{when[:10]}.log"
        out = log.open("wb")
        env = {**os.environ, "FUNNEL_TEST_NOW": when}
        procs[when] = (
            subprocess.Popen(
                [
                    sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    "-m", "not browser", "--ignore", str(REPO / "tests" / "test_clock_shift.py"),
                    "--basetemp", str(tmp_path / when[:10]),
                    *(arg for test in NOT_DATED for arg in ("--deselect", test)),
                ],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            ),
            log,
            out,
        )  # fmt: skip
    failures = []
    for when, (proc, log, out) in procs.items():
        code = proc.wait(timeout=900)
        out.close()
        text = log.read_text(errors="replace")
        summary = text.strip().splitlines()[-1] if text.strip() else "(no output)"
        print(f"FUNNEL_TEST_NOW={when}: exit {code}: {summary}")
        if code != 0:
            failures.append(f"--- FUNNEL_TEST_NOW={when} exited {code}; last lines:\n"
                            + "\n".join(text.splitlines()[-60:]))
    assert not failures, "\n".join(failures)
