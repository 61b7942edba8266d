"""bench/summary.py's issue-15 table, and bench/import.py's same-run ratio, on small inputs."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
summary = importlib.import_module("summary")
import_bench = importlib.import_module("import")

RSS_OUTPUT = [
    "peak RSS (ru_maxrss), each phase in its own process:",
    "    10,000 recipients: send_due   61.2 MB RSS, Python heap peak   3.0 MB; creating them + queueing   70.1 MB",
    "   200,000 recipients: send_due   88.4 MB RSS, Python heap peak   3.1 MB; creating them + queueing   95.0 MB",
    "  sender: 20x the recipients adds +27.2 MB RSS (SQLite's page cache filling towards its 32 MB cap) and "
    "+0.1 MB of Python heap: flat; target < 150 MB and flat: met",
]


def test_rss_check_lines_become_figures():
    assert summary.rss_figures(RSS_OUTPUT) == {
        "rss_peaks_mb": {10_000: 61.2, 200_000: 88.4}, "rss_flat": True, "rss_met": True,
    }
    assert summary.rss_figures(["imported 10 rows"]) is None


def test_every_issue_15_figure_has_a_line_with_its_verdict():
    figures = {"import_ratio": 2.4, "report_s": 0.8, "enrol_s": 3.0, "subscribers": 100_000,
               "dkim_off": 500.0, "dkim_rsa": 450.0, **summary.rss_figures(RSS_OUTPUT)}
    lines = summary.targets_table(figures, 0.1)
    table = {line[:52].strip(): line for line in lines[2:]}
    assert len(table) == len(summary.TARGETS)
    assert table["scale: import vs sqlite-utils"].endswith("MISSED")
    assert table["scale: funnel report s"].endswith("met")
    assert "30.00" in table["scale: enrol every reader s (per 1M)"]  # 3 s for 100k
    assert table["send: DKIM on / off rate"].endswith("met")
    assert "88.4 MB, flat" in table["send --rss-check: peak RSS at 200k MB, flat"]
    assert table["signup: p99 ms"].endswith("not run")


def test_import_bench_times_sqlite_utils_on_the_same_file():
    m = import_bench.run(300)
    assert (m["imported"], m["subscribers"], m["confirmations"]) == (300, 300, 300)
    assert m["sqlite_utils_s"] > 0 and m["ratio"] == m["import_s"] / m["sqlite_utils_s"]
