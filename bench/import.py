"""Import N CSV rows (default 100,000) into a fresh database and report the time.

    .venv/bin/python bench/import.py [--rows 100000]

Measures the whole `import_csv` call: streaming the file, validating every
address with email-validator, batched inserts of subscribers, consent rows,
events and queued confirmation emails, in one transaction.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from funnel.db import connect  # noqa: E402
from funnel.settings import test_settings  # noqa: E402
from subscribers.io import import_csv  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = test_settings(tmp)
        csv_path = Path(tmp) / "people.csv"
        zones = ["Europe/London", "America/New_York", "Australia/Sydney", ""]
        with csv_path.open("w", encoding="utf-8") as fh:
            fh.write("email,name,timezone,source\n")
            for i in range(args.rows):
                fh.write(f"reader{i}@example{i % 97}.com,Reader {i},{zones[i % 4]},bench\n")
        db = connect(settings.db, migrate=True)
        t0 = time.perf_counter()
        report = import_csv(db, settings, csv_path, datetime.now(UTC))
        elapsed = time.perf_counter() - t0
        n = db.execute("SELECT COUNT(*) FROM subscribers").fetchone()[0]
        q = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"imported {report.imported} rows in {elapsed:.2f} s "
              f"({report.imported / elapsed:,.0f} rows/s); {n} subscribers, {q} confirmations queued; "
              f"peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()
