"""Import N CSV rows (default 100,000) into a fresh database, against ``sqlite-utils insert --csv``.

    .venv/bin/python bench/import.py [--rows 100000] [--pre-confirmed] [--profile] [--json]

Measures the whole `import_csv` call: streaming the file, validating every
address with email-validator, batched inserts of subscribers, consent rows,
events and queued confirmation emails (or, ``--pre-confirmed``, their
streams), in one transaction.  In the same run, ``sqlite-utils insert --csv``
loads the same file into a fresh database (a plain table, no indexes, no
checks): the ratio of the two wall times is the figure (issue 15: <= 2x).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from funnel.db import connect  # noqa: E402
from funnel.settings import test_settings  # noqa: E402
from subscribers.io import import_csv  # noqa: E402

ZONES = ("Europe/London", "America/New_York", "Australia/Sydney", "")


def write_csv(path: Path, rows: int) -> None:
    """*rows* readers, in no particular order of address or hash (as a real export)."""
    with path.open("w", encoding="utf-8") as fh:
        fh.write("email,name,timezone,source\n")
        for i in range(rows):
            fh.write(f"reader{i}@example{i % 97}.com,Reader {i},{ZONES[i % 4]},bench\n")


def sqlite_utils_insert(folder: Path, csv_path: Path) -> float:
    """Wall seconds of the sqlite-utils CLI loading the same file (same venv)."""
    cli = Path(sys.executable).parent / "sqlite-utils"
    t0 = time.perf_counter()
    subprocess.run([str(cli), "insert", str(folder / "plain.db"), "people", str(csv_path), "--csv"],
                   check=True)  # fmt: skip
    return time.perf_counter() - t0


def run(rows: int, *, pre_confirmed: bool = False, profile: bool = False, baseline: bool = True) -> dict:
    """Import *rows* rows into a fresh database (and, with *baseline*, time sqlite-utils too)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        settings = test_settings(folder)
        csv_path = folder / "people.csv"
        write_csv(csv_path, rows)
        db = connect(settings.db, migrate=True)
        prof = cProfile.Profile() if profile else None
        os.sync()  # each timed part starts with no earlier writes still going to disk
        c0, t0 = time.process_time(), time.perf_counter()
        if prof:
            prof.enable()
        report = import_csv(db, settings, csv_path, datetime.now(UTC), pre_confirmed=pre_confirmed,
                            consent_note="bench: a consented list" if pre_confirmed else "")
        if prof:
            prof.disable()
        took, cpu = time.perf_counter() - t0, time.process_time() - c0
        n = db.execute("SELECT COUNT(*) FROM subscribers").fetchone()[0]
        q = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        db.close()
        os.sync()
        plain = sqlite_utils_insert(folder, csv_path) if baseline else None
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    return {"rows": rows, "pre_confirmed": pre_confirmed, "imported": report.imported,
            "subscribers": n, "confirmations": q, "import_s": took, "import_cpu_s": cpu,
            "sqlite_utils_s": plain, "ratio": took / plain if plain else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--pre-confirmed", action="store_true", help="import as active, with streams")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of the import")
    ap.add_argument("--no-baseline", action="store_true", help="skip the sqlite-utils run")
    ap.add_argument("--json", action="store_true", help="end with one JSON line")
    args = ap.parse_args()
    m = run(args.rows, pre_confirmed=args.pre_confirmed, profile=args.profile,
            baseline=not args.no_baseline)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    line = (f"imported {m['imported']:,} rows ({'pre-confirmed' if m['pre_confirmed'] else 'pending'}) "
            f"in {m['import_s']:.2f} s, {m['import_cpu_s']:.2f} s CPU "
            f"({m['imported'] / m['import_s']:,.0f} rows/s, {m['import_s'] / m['rows'] * 1e6:.0f} µs/row); "
            f"{m['subscribers']:,} subscribers, {m['confirmations']:,} confirmations queued; peak RSS {rss:.0f} MB")
    print(line)
    if m["sqlite_utils_s"]:
        print(f"sqlite-utils insert --csv, same file: {m['sqlite_utils_s']:.2f} s; "
              f"ratio {m['ratio']:.2f}x (target <= 2x: {'met' if m['ratio'] <= 2 else 'MISSED'})")
    if args.json:
        print(json.dumps({"bench": "import", "peak_rss_mb": round(rss),
                          **{k: round(v, 3) if isinstance(v, float) else v for k, v in m.items()}}))


if __name__ == "__main__":
    main()
