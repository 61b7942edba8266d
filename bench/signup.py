"""Load-test the signup form: N concurrent clients POST signups to `funnel serve` for S seconds.

    .venv/bin/python bench/signup.py [--seconds 30] [--clients 32] [--threads 32] [--runs 5]

The script starts `funnel serve` (waitress) as a subprocess on a free
loopback port with a temp database, then drives it from this, second, process:
each client first GETs the form like a browser (CSRF cookie + signed form
token), waits out `min_form_seconds` once, then posts signups over a kept-alive
connection until time is up.  About 10% of posts repeat an address already
accepted (by any client), which must not queue a second confirmation.

It prints requests/s and p50/p99/max latency, then checks the database: every
accepted signup is stored, and each address has exactly one confirmation
queued.  Exit status 1 if any check fails (the speed targets, >= 300 signups/s
with p99 < 200 ms on a 2-core machine, are reported, not enforced).

The per-IP rate limit is lifted for the run (FUNNEL_SIGNUP_RATE_PER_MINUTE),
since every client comes from 127.0.0.1.  Note that each answer is held to
at least web.common.SIGNUP_FLOOR_SECONDS so timing can't tell known addresses apart;
that floor is part of the measured latency.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import secrets
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from subscribers.lifecycle import email_hash  # noqa: E402

CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')
MIN_FORM_SECONDS = 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process *pid* (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(tmp: str, port: int, threads: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNNEL_")}
    env.update(
        {
            "FUNNEL_DB": str(Path(tmp) / "bench.db"),
            "FUNNEL_SECRET_KEYS": secrets.token_urlsafe(32),
            "FUNNEL_BASE_URL": f"http://127.0.0.1:{port}",
            "FUNNEL_CONFIG": str(Path(tmp) / "absent.toml"),
            "FUNNEL_SIGNUP_RATE_PER_MINUTE": str(10**9),
            "FUNNEL_MIN_FORM_SECONDS": str(MIN_FORM_SECONDS),
            # No worker runs beside this site: /healthz should not wait for one.
            "FUNNEL_HEALTHZ_WORKER_SECONDS": "0",
            # Dev mode only so that `funnel serve`'s preflight accepts the loopback
            # base URL and the absent relay; the signup path is the same.
            "FUNNEL_DEV": "1",
        }
    )
    log = open(Path(tmp) / "serve.log", "w")  # never an unread pipe: a full one blocks the server
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--port", str(port), "--threads", str(threads)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"funnel serve exited early:\n{(Path(tmp) / 'serve.log').read_text()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                conn.close()
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("funnel serve did not start within 30 s")


class Shared:
    def __init__(self):
        self.lock = threading.Lock()
        self.accepted: list[str] = []
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.errors: list[str] = []


def client(
    i: int, port: int, ready: threading.Barrier, seconds: float, repeat: float, shared: Shared
) -> None:
    rng = random.Random(i)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/")
    r = conn.getresponse()
    html = r.read().decode()
    cookie = r.getheader("Set-Cookie").split(";", 1)[0]
    token = CSRF_RE.search(html).group(1)
    time.sleep(MIN_FORM_SECONDS + 0.2)  # a person takes longer than this to fill the form
    ready.wait()
    deadline = time.perf_counter() + seconds
    n = 0
    latencies, accepted, statuses = [], [], {}
    while time.perf_counter() < deadline:
        with shared.lock:
            pool = shared.accepted
            email = rng.choice(pool) if pool and rng.random() < repeat else None
        if email is None:
            email = f"c{i}n{n}@bench{n % 50}.example"
            n += 1
        body = urlencode(
            {
                "csrf": token,
                "email": email,
                "name": f"Reader {i}",
                "consent": "yes",
                "tz": "Europe/London",
                "website": "",
            }
        )
        t0 = time.perf_counter()
        try:
            conn.request(
                "POST",
                "/subscribe",
                body=body,
                headers={"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie},
            )
            resp = conn.getresponse()
            resp.read()
        except OSError as exc:
            with shared.lock:
                shared.errors.append(f"client {i}: {exc}")
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            continue
        latencies.append(time.perf_counter() - t0)
        statuses[resp.status] = statuses.get(resp.status, 0) + 1
        if resp.status == 303 and resp.getheader("Location", "").endswith("/check-your-inbox"):
            accepted.append(email)
            if len(accepted) % 8 == 0:
                with shared.lock:
                    shared.accepted.extend(accepted[-8:])
    conn.close()
    with shared.lock:
        shared.latencies.extend(latencies)
        shared.accepted.extend(accepted[len(accepted) - len(accepted) % 8 :])
        for k, v in statuses.items():
            shared.statuses[k] = shared.statuses.get(k, 0) + v


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def run_once(args) -> dict:
    """One run against a fresh server and database; prints its figures, returns them."""
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        proc = start_server(tmp, port, args.threads)
        try:
            shared = Shared()
            ready = threading.Barrier(args.clients + 1)
            workers = [
                threading.Thread(
                    target=client, args=(i, port, ready, args.seconds, args.repeat, shared)
                )
                for i in range(args.clients)
            ]
            for w in workers:
                w.start()
            ready.wait()
            started = time.perf_counter()
            server_cpu0, client_cpu0 = cpu_seconds(proc.pid), time.process_time()
            for w in workers:
                w.join()
            elapsed = time.perf_counter() - started
            server_cpu = cpu_seconds(proc.pid) - server_cpu0
            client_cpu = time.process_time() - client_cpu0
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        load = os.getloadavg()[0]
        lat = shared.latencies
        total = len(lat)
        rps = total / elapsed
        # Where the time goes: the clients are a closed loop, so the mean latency is
        # clients / rate (Little's law); the rate is what CPU the server gets.
        print(
            f"CPU per signup: server {server_cpu / total * 1000:.2f} ms, this client process "
            f"{client_cpu / total * 1000:.2f} ms; the server used {server_cpu / elapsed:.0%} "
            f"of a core, the clients {client_cpu / elapsed:.0%} (2 cores, shared); "
            f"clients / rate = {args.clients / rps * 1000:.0f} ms"
        )
        p50, p99, worst = pct(lat, 50) * 1000, pct(lat, 99) * 1000, max(lat) * 1000
        print(
            f"{total} signups in {elapsed:.1f} s from {args.clients} clients "
            f"({args.threads} waitress threads): {rps:,.0f} signups/s; "
            f"latency p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms; load average {load:.2f}"
        )
        print(
            f"  statuses: {dict(sorted(shared.statuses.items()))}; "
            f"mean {statistics.mean(lat) * 1000:.1f} ms"
        )
        lost, wrong, stored, unique = check_database(Path(tmp) / "bench.db", shared.accepted)
        repeats = len(shared.accepted) - len(unique)
        print(
            f"  {len(unique)} distinct addresses accepted ({repeats} repeat posts); "
            f"{len(stored)} subscribers stored; lost {len(lost)}; "
            f"addresses without exactly one confirmation queued: {len(wrong)}"
        )
        target = rps >= 300 and p99 < 200
        print(f"  target >= 300 signups/s with p99 < 200 ms: {'met' if target else 'MISSED'}")
        for err in shared.errors[:5]:
            print(f"  error: {err}")
        failed = bool(
            lost
            or wrong
            or shared.errors
            or set(shared.statuses) - {303}
            or len(stored) != len(unique)
        )
        return {"bench": "signup", "signups_per_s": round(rps, 1), "p50_ms": round(p50, 1),
                "p99_ms": round(p99, 1), "max_ms": round(worst, 1), "lost": len(lost),
                "not_one_confirmation": len(wrong), "load": round(load, 2),
                "server_cpu_ms": round(server_cpu / total * 1000, 2),
                "client_cpu_ms": round(client_cpu / total * 1000, 2),
                "target_met": target, "failed": failed}  # fmt: skip


def check_database(path: Path, accepted: list[str]):
    """(lost addresses, hashes without exactly one confirmation, stored hashes, distinct accepted)."""
    unique = set(accepted)
    db = sqlite3.connect(str(path))
    stored = {h for (h,) in db.execute("SELECT email_hash FROM subscribers")}
    lost = [e for e in unique if email_hash(e) not in stored]
    confirmations = dict(
        db.execute(
            "SELECT s.email_hash, COUNT(o.id) FROM subscribers s LEFT JOIN outbox o "
            "ON o.subscriber_id = s.id AND o.kind = 'confirm' GROUP BY s.id"
        )
    )
    wrong = {h: n for h, n in confirmations.items() if n != 1}
    db.close()
    return lost, wrong, stored, unique


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--threads", type=int, default=32, help="waitress threads")
    ap.add_argument("--repeat", type=float, default=0.1, help="share of posts reusing an address")
    ap.add_argument("--runs", type=int, default=1, help="consecutive runs, each on a fresh server")
    args = ap.parse_args()

    results = []
    for n in range(args.runs):
        if args.runs > 1:
            print(f"--- run {n + 1} of {args.runs}")
        results.append(run_once(args))
        print(json.dumps(results[-1]))
    if args.runs > 1:
        print("run  signups/s  p50 ms  p99 ms  max ms  lost  not-one-confirmation  load  target")
        for n, r in enumerate(results, 1):
            print(
                f"{n:>3}  {r['signups_per_s']:>9,.0f}  {r['p50_ms']:>6.1f}  {r['p99_ms']:>6.1f}  "
                f"{r['max_ms']:>6.1f}  {r['lost']:>4}  {r['not_one_confirmation']:>20}  "
                f"{r['load']:>4.2f}  {'met' if r['target_met'] else 'MISSED'}"
            )
        met = sum(r["target_met"] for r in results)
        print(f"target met in {met} of {len(results)} runs")
        print(json.dumps({"bench": "signup", "runs": len(results), "target_met_runs": met,
                          "min_signups_per_s": min(r["signups_per_s"] for r in results),
                          "max_p99_ms": max(r["p99_ms"] for r in results),
                          "lost": sum(r["lost"] for r in results),
                          "not_one_confirmation": sum(r["not_one_confirmation"] for r in results)}))  # fmt: skip
    if any(r["failed"] for r in results):
        print("FAILED: see above")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
