"""Run the benchmark scripts in order and print one summary table (``make bench``).

    .venv/bin/python bench/summary.py [--scale 0.1] [--only send,scale]

Each script's own output is shown as it runs.  A script that ends with one
JSON line (``{"bench": ...}``) gives its figures to the table; for the others
the table shows their last line.  Every figure is measured within one run of
its script, as a ratio or against its target; the machine's load is not
controlled, so say how loaded it was when you quote them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def scripts(scale: float) -> list[tuple[str, list[str]]]:
    return [
        ("render", []),
        ("mime", []),
        ("import", []),
        ("reconcile", []),
        ("send", []),
        ("send", ["--dkim", "--runs", "5", "--connections", "--n", "20000", "--json"]),
        ("signup", []),
        ("scale", ["--scale", str(scale), "--json"]),
        ("admin_search", []),
        ("extractors", []),
    ]


def run(name: str, args: list[str]) -> tuple[int, list[str], float]:
    print(f"== bench/{name}.py {' '.join(args)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / f"{name}.py"), *args],
        stdout=subprocess.PIPE, text=True, bufsize=1,
    )  # fmt: skip
    lines = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line.rstrip("\n"))
    return proc.wait(), lines, time.perf_counter() - t0


def figures(lines: list[str]) -> dict | None:
    for line in reversed(lines):
        if line.startswith("{") and '"bench"' in line:
            return json.loads(line)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=0.1, help="bench/scale.py --scale (1.0 = 1M)")
    ap.add_argument("--only", default="", help="comma-separated script names to run")
    args = ap.parse_args()
    only = {x for x in args.only.split(",") if x}
    rows = []
    failed = False
    for name, extra in scripts(args.scale):
        if only and name not in only:
            continue
        code, lines, took = run(name, extra)
        failed |= code != 0
        found = figures(lines)
        if found is None:
            last = next((x for x in reversed(lines) if x.strip()), "")
            rows.append((name, "result", last.strip()[:100]))
        else:
            found.pop("bench", None)
            rows += [(name, key, json.dumps(value)) for key, value in found.items()]
        rows.append((name, "exit / seconds", f"{code} / {took:.0f}"))
    print(f"\n{'script':<10} {'figure':<26} value")
    for name, key, value in rows:
        print(f"{name:<10} {key:<26} {value}")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
