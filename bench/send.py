"""Benchmark: a broadcast end to end into Postfix's smtp-sink, against smtp-source's ceiling.

    .venv/bin/python bench/send.py [--n 50000] [--sample 2000] [--batch 500]
    .venv/bin/python bench/send.py --rss-check      # peak RSS at 10k vs 200k (subprocesses)
    .venv/bin/python bench/send.py --dkim --runs 5 --connections --n 20000 --json

Needs Postfix's ``smtp-sink`` and ``smtp-source`` (Debian: ``apt-get install -y
postfix``; the binaries land in /usr/sbin).  Without them it says how to get
them and exits 0.

All figures come from ONE run on this machine:

1. ``smtp-sink`` listens on a free loopback port;
2. ``smtp-source`` measures the sink's ceiling with our real message bytes,
   over one session and over several (``-d``: one connection, reused);
3. N active subscribers get a broadcast the real way (``broadcasts.create``,
   ``schedule``, ``queue`` -> ``outbox.enqueue_many``), and ``send_due``
   sends it: due query -> render -> MIME -> SMTP -> ledger;
4. the naive pipeline on a sample (a new ``EmailMessage`` via
   ``mime.compose_stdlib``, the template compiled per message, a new SMTP
   connection per message, one claim and one commit per message);
5. a CPU breakdown per stage of step 3, each stage on its own thread's clock
   (SMTP runs on the sender's wire thread while the main thread builds the
   next messages);
6. click rewriting (campaigns/links.py) off and on: two N-recipient
   broadcasts sent in alternating slices of N/10 (the order swapped each
   round), so both see the same load.

Targets: >= 40% of the one-session ceiling, >= 10x the naive pipeline, peak
RSS < 150 MB and flat from 10k to 200k recipients, and with click rewriting
on >= 90% of the rate without it.  ``--runs 5``: >= 50% of each run's
one-session ceiling in every run.  ``--dkim``: the rate with RSA-SHA256
signing >= 80% of the rate without, in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from campaigns import broadcasts, messages, mime, render, sender, smtp  # noqa: E402
from funnel import outbox  # noqa: E402
from funnel.db import connect, iso, transaction  # noqa: E402
from funnel.settings import test_settings  # noqa: E402
from subscribers.lifecycle import email_hash  # noqa: E402

BODY = """## Three small habits for a calmer back

Most back pain settles with time, and the way you move in the meantime makes
a real difference. This week we share three habits our physiotherapists
suggest to nearly everyone who walks through the door.

**Move a little, often.** Sitting still for hours stiffens the joints and
tires the muscles that hold you upright. Stand up every half hour, walk to
the window, roll your shoulders. Small and often beats long and rare.

**Walk every day.** A brisk ten-minute walk warms the tissues around the
spine and lifts your mood. Add a few minutes each week until thirty minutes
feels easy. Flat ground is fine; good shoes help.

**Breathe while you stretch.** Hold each gentle stretch for five slow
breaths. If a stretch hurts, ease off: mild tension is the goal, never pain.

> Consistency matters more than intensity.

If pain travels down a leg, comes with numbness, or keeps you awake at
night, please [book an assessment](https://clinic.example/appointments)
rather than pushing through.

See you next week,
The clinic team
"""

STAGES = ("claim", "build (builder, tokens, lookups)", "render (Jinja)", "MIME", "SMTP", "mark")


# ----------------------------------------------------------------- tools
def find_postfix_tools() -> tuple[str, str] | None:
    found = []
    for name in ("smtp-sink", "smtp-source"):
        path = shutil.which(name) or (
            f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None
        )
        if not path:
            return None
        found.append(path)
    return found[0], found[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_sink(sink_bin: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [sink_bin]
    if os.geteuid() == 0:
        cmd += ["-u", "nobody"]  # smtp-sink refuses to run as root without it
    proc = subprocess.Popen(cmd + [f"127.0.0.1:{port}", "1000"], stderr=subprocess.PIPE)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise SystemExit(f"smtp-sink did not start on port {port}")


def source_ceiling(source_bin: str, port: int, message: bytes, count: int, sessions: int) -> float:
    """Messages/s smtp-source pushes into the sink with our bytes (one reused connection each)."""
    with tempfile.NamedTemporaryFile("wb", suffix=".eml", delete=False) as fh:
        # smtp-source appends CRLF to every line and dot-stuffs itself.
        fh.write(message.replace(b"\r\n", b"\n"))
        path = fh.name
    try:
        t0 = time.perf_counter()
        subprocess.run(
            [source_bin, "-d", "-s", str(sessions), "-m", str(count), "-F", path,
             "-f", "bounce+1@clinic.example", "-t", "reader@example.com", f"127.0.0.1:{port}"],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        return count / (time.perf_counter() - t0)
    finally:
        os.unlink(path)


# ----------------------------------------------------------------- data
def make_broadcast(folder: Path, n: int, port: int, batch: int, now: datetime,
                   click_tracking: bool = True):
    """A database with n active subscribers and one broadcast queued to all of them."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = test_settings(folder, smtp_urls=(f"smtp://127.0.0.1:{port}",), batch_size=batch,
                             click_tracking=click_tracking)
    db = connect(settings.db, migrate=True)
    stamp = iso(now)
    with transaction(db):
        db.conn.executemany(
            "INSERT INTO subscribers (id, email, email_hash, name, timezone, status, created_at, "
            "updated_at, confirmed_at) VALUES (?, ?, ?, ?, 'Europe/London', 'active', ?, ?, ?)",
            (
                (i, f"reader{i}@example.com", email_hash(f"reader{i}@example.com"), f"Reader {i}",
                 stamp, stamp, stamp)
                for i in range(1, n + 1)
            ),
        )  # fmt: skip
        db.conn.executemany(
            "INSERT INTO subscriptions (subscriber_id, stream, status, updated_at) "
            "VALUES (?, 'broadcasts', 'subscribed', ?)",
            ((i, stamp) for i in range(1, n + 1)),
        )
    cid = broadcasts.create(
        db, settings, now, subject="Three small habits for a calmer back",
        preheader="Five minutes a day that your spine will thank you for.", body_md=BODY,
        ctas=[{"kind": "appointment", "text": "Book an assessment"}],
    )  # fmt: skip
    broadcasts.schedule_campaign(db, settings, cid, now, send_now=True)
    queued = broadcasts.queue(db, settings, cid, now)
    assert queued == n, (queued, n)
    return settings, db


def sample_message(db, settings, now: datetime) -> bytes:
    row = outbox._row(
        db.execute(f"SELECT {outbox._ROW_COLUMNS} FROM outbox ORDER BY id LIMIT 1").fetchone()
    )
    return messages.build(db, settings, row, now).data


# ----------------------------------------------------------------- instrumentation
class Stages:
    """CPU and wall time per stage, by wrapping the functions send_due calls.

    A stage's CPU is its own thread's (``thread_time``): SMTP (with DKIM's
    private-key operation) runs on the sender's wire thread while the main
    thread builds the next message, so process time would count both.
    """

    def __init__(self):
        self.cpu = defaultdict(float)
        self.wall = defaultdict(float)
        self.undo: list = []

    def wrap(self, owner, name: str, stage: str) -> None:
        original = getattr(owner, name)
        cpu, wall = self.cpu, self.wall
        pt, pc = time.thread_time, time.perf_counter

        def timed(*args, **kwargs):
            c0, w0 = pt(), pc()
            try:
                return original(*args, **kwargs)
            finally:
                cpu[stage] += pt() - c0
                wall[stage] += pc() - w0

        setattr(owner, name, timed)
        self.undo.append((owner, name, original))

    def __enter__(self):
        self.wrap(outbox, "claim", "claim")
        self.wrap(messages, "build", "build")
        self.wrap(messages, "render_for", "render (Jinja)")
        self.wrap(mime, "compose_signable", "MIME")
        self.wrap(smtp.RelayPool, "send", "SMTP")
        self.wrap(sender, "_record", "mark")
        return self

    def __exit__(self, *exc):
        for owner, name, original in reversed(self.undo):
            setattr(owner, name, original)

    def table(self, total_cpu: float, n: int) -> list[str]:
        cpu = dict(self.cpu)
        wall = dict(self.wall)
        inner = ("render (Jinja)", "MIME")
        cpu["build (builder, tokens, lookups)"] = cpu.pop("build", 0) - sum(
            cpu.get(k, 0) for k in inner
        )
        wall["build (builder, tokens, lookups)"] = wall.pop("build", 0) - sum(
            wall.get(k, 0) for k in inner
        )
        lines = [f"  {'stage':<34}{'CPU µs/msg':>11}{'CPU %':>8}{'wall µs/msg':>13}"]
        for stage in STAGES:
            c = cpu.get(stage, 0.0)
            lines.append(
                f"  {stage:<34}{c / n * 1e6:>11.1f}{c / total_cpu * 100:>7.1f}%"
                f"{wall.get(stage, 0.0) / n * 1e6:>13.1f}"
            )
        rest = total_cpu - sum(cpu.get(s, 0.0) for s in STAGES)
        lines.append(
            f"  {'loop overhead':<34}{rest / n * 1e6:>11.1f}{rest / total_cpu * 100:>7.1f}%"
        )
        return lines


# ----------------------------------------------------------------- runs
def run_ours(settings, db, n: int, stages: bool = True) -> dict:
    """send_due over the whole broadcast; returns throughput and timings."""
    clock = lambda: datetime.now(UTC)  # noqa: E731
    relay = smtp.Relay(settings.relays[0])
    instrument = Stages() if stages else None
    c0, w0 = time.process_time(), time.perf_counter()
    if instrument:
        with instrument:
            summary = sender.send_due(db, settings, clock, relay=relay)
    else:
        summary = sender.send_due(db, settings, clock, relay=relay)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    relay.close()
    if summary.sent != n:
        raise SystemExit(f"expected {n} sent, got: {summary.line()} {summary.errors[:3]}")
    return {
        "rate": n / wall,
        "wall": wall,
        "cpu": cpu,
        "stages": instrument,
        "connections": relay.connections,
    }


class _OneShotRelay(smtp.Relay):
    """Naive: a new SMTP connection (and smtplib's own data path) for every message."""

    def send(self, envelope_from, recipient, data):
        try:
            return super().send(envelope_from, recipient, data)
        finally:
            self.close()


def run_naive(settings, db, n: int) -> float:
    clock = lambda: datetime.now(UTC)  # noqa: E731
    naive_settings = settings.replace(batch_size=1)  # one claim + one commit per message

    def compiled_every_time(*args):
        render.clear_cache()
        return original_compiled.__wrapped__(*args)

    def stdlib(**kwargs):
        return mime.compose_stdlib(**kwargs), None

    original_compiled = messages._compiled
    original_compose, original_part = mime.compose_signable, messages._part
    messages._compiled = compiled_every_time
    mime.compose_signable = stdlib
    messages._part = lambda text, splice: text  # the whole text, no pre-encoded segments
    try:
        t0 = time.perf_counter()
        summary = sender.send_due(
            db, naive_settings, clock, relay=_OneShotRelay(settings.relays[0], raw=False)
        )
        wall = time.perf_counter() - t0
    finally:
        messages._compiled = original_compiled
        mime.compose_signable, messages._part = original_compose, original_part
    if summary.sent != n:
        raise SystemExit(f"naive: expected {n} sent, got {summary.line()} {summary.errors[:3]}")
    return n / wall


def smtplib_loops(port: int, message: bytes, count: int) -> tuple[float, float]:
    """Prebuilt messages over one connection: plain smtplib vs our raw transaction path."""
    from funnel.settings import parse_smtp_url

    rates = []
    for raw in (False, True):
        relay = smtp.Relay(parse_smtp_url(f"smtp://127.0.0.1:{port}"), raw=raw)
        relay.connect()
        t0 = time.perf_counter()
        for _ in range(count):
            relay.send("bounce+1@clinic.example", "reader@example.com", message)
        rates.append(count / (time.perf_counter() - t0))
        relay.close()
    return rates[0], rates[1]


def click_pass(port: int, n: int, batch: int, now: datetime, work: Path) -> dict:
    """Click rewriting off and on: the same broadcast to two databases, sent in alternating
    slices (the order swapped each round, so a busy moment of a shared machine hits both)."""
    clock = lambda: datetime.now(UTC)  # noqa: E731
    runs = {}
    for on in (False, True):
        settings, db = make_broadcast(work / f"clicks-{on}", n, port, batch, now, click_tracking=on)
        data = sample_message(db, settings, now).replace(b"=\r\n", b"").replace(b"=\n", b"")
        assert (b"/c/" in data) == on, "click rewriting is not what the pass expects"
        runs[on] = (settings, db, smtp.Relay(settings.relays[0]))
    wall = {False: 0.0, True: 0.0}
    cpu = {False: 0.0, True: 0.0}
    sent = {False: 0, True: 0}
    chunk = max(n // 10, 1)
    order = [False, True]
    while min(sent.values()) < n:
        for on in order:
            settings, db, relay = runs[on]
            w0, c0 = time.perf_counter(), time.process_time()
            sent[on] += sender.send_due(db, settings, clock, relay=relay, limit=chunk).sent
            wall[on] += time.perf_counter() - w0
            cpu[on] += time.process_time() - c0
        order.reverse()
    for _settings, db, relay in runs.values():
        relay.close()
        db.close()
    return {
        "chunk": chunk,
        "rate": {on: n / wall[on] for on in wall},
        "cpu_us": {on: cpu[on] / n * 1e6 for on in cpu},
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------- modes
def rss_only(phase: str, n: int, port: int, batch: int, folder: Path) -> None:
    """Child of --rss-check: set up (or send) a broadcast to n; print JSON with the peak RSS.

    Setup and sending run in separate processes so the sender's own peak is
    measured, not the one left behind by creating the subscribers.
    """
    now = datetime.now(UTC)
    if phase == "setup":
        _, db = make_broadcast(folder, n, port, batch, now)
        db.close()
        print(json.dumps({"peak_rss_mb": peak_rss_mb()}))
        return
    import tracemalloc

    settings = test_settings(folder, smtp_urls=(f"smtp://127.0.0.1:{port}",), batch_size=batch)
    db = connect(settings.db)
    cache = db.execute("PRAGMA cache_size").fetchone()[0]
    cache_mb = -cache / 1024 if cache < 0 else cache * 4096 / 2**20
    tracemalloc.start()
    result = run_ours(settings, db, n, stages=False)
    heap = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    db.close()
    print(
        json.dumps(
            {"rate": result["rate"], "peak_rss_mb": peak_rss_mb(), "heap_mb": heap,
             "cache_mb": cache_mb}
        )
    )  # fmt: skip


def rss_check(port: int, batch: int) -> None:
    rows = []
    for n in (10_000, 200_000):
        folder = Path(tempfile.mkdtemp(prefix="funnel-bench-rss-"))
        try:
            row = {"n": n}
            for phase in ("setup", "send"):
                out = subprocess.run(
                    [sys.executable, __file__, "--rss-only", phase, "--n", str(n),
                     "--port", str(port), "--batch", str(batch), "--folder", str(folder)],
                    check=True, capture_output=True, text=True,
                ).stdout  # fmt: skip
                row[phase] = json.loads(out.strip().splitlines()[-1])
            rows.append(row)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    print("peak RSS (ru_maxrss), each phase in its own process:")
    for r in rows:
        print(
            f"  {r['n']:>8,} recipients: send_due {r['send']['peak_rss_mb']:6.1f} MB RSS, "
            f"Python heap peak {r['send']['heap_mb']:5.1f} MB; creating them + queueing "
            f"{r['setup']['peak_rss_mb']:6.1f} MB"
        )
    small, big = rows[0]["send"], rows[1]["send"]
    growth = big["peak_rss_mb"] - small["peak_rss_mb"]
    heap_growth = big["heap_mb"] - small["heap_mb"]
    # SQLite's page cache (PRAGMA cache_size, funnel/db.py) fills up to its cap on a
    # database bigger than the cap; beyond that nothing grows with the recipients.
    flat = heap_growth < 2 and growth < big["cache_mb"] + 5
    ok = big["peak_rss_mb"] < 150 and flat
    print(
        f"  sender: 20x the recipients adds {growth:+.1f} MB RSS (SQLite's page cache filling "
        f"towards its {big['cache_mb']:.0f} MB cap) and {heap_growth:+.1f} MB of Python heap: "
        f"{'flat' if flat else 'NOT flat'}; target < 150 MB and flat: {'met' if ok else 'MISSED'}"
    )


# ----------------------------------------------------------------- DKIM off vs on
def dkim_keys(folder: Path) -> tuple[Path, Path]:
    """A fresh RSA-2048 key and an Ed25519 key, as PEM files."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    plain, pem = serialization.NoEncryption(), serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    paths = folder / "dkim-rsa.pem", folder / "dkim-ed25519.pem"
    keys = rsa.generate_private_key(public_exponent=65537, key_size=2048), (
        ed25519.Ed25519PrivateKey.generate()
    )
    for path, key in zip(paths, keys, strict=True):
        path.write_bytes(key.private_bytes(pem, pkcs8, plain))
    return paths


def dkim_pass(port: int, n: int, batch: int, rounds: int = 3) -> dict:
    """The same broadcast sent with DKIM off, RSA on, and RSA + Ed25519 on, in one run.

    The three are interleaved over *rounds* rounds of n/rounds recipients each,
    and each keeps its best round, so load from other processes on a shared
    machine hits all three alike.  The target is on the rate.  CPU per message
    is printed twice: the whole sender's (this process and its signing child
    process), and the main thread's alone.  From ``OFFLOAD_AT`` rows a batch the
    private-key operations run in the signer's child process
    (campaigns/dkim.py, ``DkimSigner.offload``), on the second core, while the
    main thread builds the next messages; for each batch the sending threads keep
    to one CPU and the child to the others (``DkimSigner.keep_apart``).  The bench
    settings carry no key, so ``signer=None`` is off.
    """
    from campaigns.dkim import DkimSigner

    now = datetime.now(UTC)
    work = Path(tempfile.mkdtemp(prefix="funnel-bench-dkim-"))
    each = max(500, n // rounds)
    rates: dict[str, float] = {}
    cpu: dict[str, float] = {}
    main: dict[str, float] = {}  # this (the main) thread's CPU per message
    try:
        rsa_key, ed_key = dkim_keys(work)
        signers = {
            "off": None,
            "rsa-sha256": DkimSigner("bench", "clinic.example", rsa_key),
            "rsa + ed25519": DkimSigner("bench", "clinic.example", rsa_key, ed_key),
        }
        for r in range(rounds):
            for label, signer in signers.items():
                folder = work / f"{label.replace(' ', '')}-{r}"
                settings, db = make_broadcast(folder, each, port, batch, now)
                clock = lambda: datetime.now(UTC)  # noqa: E731
                relay = smtp.Relay(settings.relays[0])
                if signer is not None:
                    signer.offload()  # started before the clock runs, as a worker's is
                c0, t0, m0 = time.process_time(), time.perf_counter(), time.thread_time()
                k0 = _child_cpu(signer)
                summary = sender.send_due(db, settings, clock, relay=relay, signer=signer)
                wall, used = time.perf_counter() - t0, time.process_time() - c0
                used += _child_cpu(signer) - k0
                own = time.thread_time() - m0
                relay.close()
                db.close()
                shutil.rmtree(folder, ignore_errors=True)
                assert summary.sent == each, summary.line()
                rates[label] = max(rates.get(label, 0.0), each / wall)
                cpu[label] = min(cpu.get(label, float("inf")), used / each)
                main[label] = min(main.get(label, float("inf")), own / each)
    finally:
        for signer in signers.values():
            if signer is not None:
                signer.close()
        shutil.rmtree(work, ignore_errors=True)
    print(f"DKIM off vs on, {rounds} interleaved rounds of {each:,} recipients, one connection, "
          "best round each:")  # fmt: skip
    for label, rate in rates.items():
        share = rate / rates["off"]
        target = "" if label == "off" else (
            f"; rate {share:.0%} of off (target >= 80%: {'met' if share >= 0.8 else 'MISSED'}), "
            f"main-thread CPU share {main['off'] / main[label]:.0%}"
        )
        print(
            f"  {label:<14}{rate:8,.0f} msg/s, {cpu[label] * 1e6:6.0f} µs CPU/msg "
            f"({main[label] * 1e6:4.0f} on the main thread){target}"
        )
    return {"dkim_off": rates["off"], "dkim_rsa": rates["rsa-sha256"],
            "dkim_both": rates["rsa + ed25519"],
            "dkim_rate_share": rates["rsa-sha256"] / rates["off"],
            "dkim_on_cpu_share": cpu["off"] / cpu["rsa-sha256"],
            "dkim_main_cpu_share": main["off"] / main["rsa-sha256"],
            "dkim_cpu_us": {k: round(v * 1e6) for k, v in cpu.items()},
            "dkim_main_cpu_us": {k: round(v * 1e6) for k, v in main.items()}}  # fmt: skip


def _child_cpu(signer) -> float:
    """CPU seconds used so far by *signer*'s signing child process (0 without one)."""
    helper = getattr(signer, "_helper", None)
    if helper is None or helper.dead:
        return 0.0
    fields = Path(f"/proc/{helper._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


# ----------------------------------------------------------------- series and connections
def worker_pass(settings, n: int, connections: int) -> float:
    """Msg/s of the real worker loop (``run_worker``) with *connections* senders, until
    the queued broadcast is all sent."""
    import multiprocessing
    import threading

    from campaigns.worker import run_worker

    db = connect(settings.db)
    stop = threading.Event()

    def watch() -> None:
        # No query until run_worker has forked its senders: a fork while this thread
        # is inside SQLite can leave the child waiting forever on a lock it copied.
        while len(multiprocessing.active_children()) < connections - 1 and not stop.is_set():
            time.sleep(0.005)
        # An index probe, not a count: a pass over the outbox every 20 ms took CPU (and
        # SQLite time) from the worker it measures, in this very process.
        while not stop.is_set():
            if not db.execute(
                "SELECT EXISTS (SELECT 1 FROM outbox INDEXED BY outbox_claim "
                "WHERE status IN ('queued', 'retry')) OR EXISTS (SELECT 1 FROM outbox "
                "INDEXED BY outbox_sending WHERE status = 'sending')"
            ).fetchone()[0]:
                stop.set()
            stop.wait(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    t0 = time.perf_counter()
    watcher.start()
    run_worker(settings, stop, clock=lambda: datetime.now(UTC), interval=0.02,
               connections=connections)  # fmt: skip
    wall = time.perf_counter() - t0
    watcher.join()
    sent = db.execute("SELECT COUNT(*) FROM outbox WHERE status = 'sent'").fetchone()[0]
    db.close()
    if sent != n:
        raise SystemExit(f"worker with {connections} connection(s): {sent} of {n} sent")
    return n / wall


def series_pass(source_bin: str, port: int, n: int, batch: int, runs: int,
                connections: int = 1) -> list[dict]:
    """*runs* consecutive runs, each: smtp-source's 1-session ceiling, then our worker
    with *connections* connections."""
    now = datetime.now(UTC)
    out = []
    for i in range(runs):
        work = Path(tempfile.mkdtemp(prefix="funnel-bench-series-"))
        try:
            settings, db = make_broadcast(work, n, port, batch, now)
            message = sample_message(db, settings, now)
            db.close()
            ceiling = source_ceiling(source_bin, port, message, max(10_000, n), 1)
            rate = worker_pass(settings, n, connections)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        out.append({"run": i + 1, "rate": rate, "ceiling": ceiling, "share": rate / ceiling})
        print(
            f"  run {i + 1}: {rate:7,.0f} msg/s / ceiling {ceiling:7,.0f} msg/s = "
            f"{rate / ceiling:.0%}", flush=True,
        )  # fmt: skip
    worst = min(r["share"] for r in out)
    print(f"  worst run {worst:.0%} (target >= 50% in every run: {'met' if worst >= 0.5 else 'MISSED'})")
    return out


def dkim_connections_pass(port: int, n: int, batch: int, connections: int) -> dict:
    """`funnel worker --connections K` with DKIM off, then on (RSA), in one run.

    Each connection is its own process with its own wire thread, so with two
    or more the signing and the building are spread over the cores.
    """
    now = datetime.now(UTC)
    work = Path(tempfile.mkdtemp(prefix="funnel-bench-dkimk-"))
    rates = {}
    try:
        rsa_key, _ = dkim_keys(work)
        for label in ("off", "rsa-sha256"):
            settings, db = make_broadcast(work / label, n, port, batch, now)
            db.close()
            if label != "off":
                settings = settings.replace(dkim_key_file=str(rsa_key), dkim_selector="bench",
                                            dkim_domain="clinic.example")  # fmt: skip
            rates[label] = worker_pass(settings, n, connections)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    share = rates["rsa-sha256"] / rates["off"]
    print(f"DKIM off vs on, {n:,} recipients each, `funnel worker --connections {connections}`:")
    print(f"  off        {rates['off']:8,.0f} msg/s")
    print(f"  rsa-sha256 {rates['rsa-sha256']:8,.0f} msg/s = {share:.0%} of off "
          f"(target >= 80%: {'met' if share >= 0.8 else 'MISSED'})")  # fmt: skip
    return {"dkim_connections": connections, "dkim_connections_share": round(share, 3)}


def connections_pass(source_bin: str, port: int, n: int, batch: int) -> list[dict]:
    """The worker with 1, 2 and 4 connections against ``smtp-source -s N``, in one run."""
    now = datetime.now(UTC)
    out = []
    for k in (1, 2, 4):
        work = Path(tempfile.mkdtemp(prefix="funnel-bench-conn-"))
        try:
            settings, db = make_broadcast(work, n, port, batch, now)
            message = sample_message(db, settings, now)
            db.close()
            ceiling = source_ceiling(source_bin, port, message, max(10_000, n), k)
            rate = worker_pass(settings, n, k)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        out.append({"connections": k, "rate": rate, "ceiling": ceiling})
    base = out[0]["rate"]
    for r in out:
        print(
            f"  {r['connections']} connection(s): {r['rate']:7,.0f} msg/s ({r['rate'] / base:.2f}x "
            f"of 1) vs smtp-source -s {r['connections']} {r['ceiling']:7,.0f} msg/s = "
            f"{r['rate'] / r['ceiling']:.0%}"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help="broadcast recipients (default 50k)")
    parser.add_argument("--sample", type=int, default=2_000, help="naive pipeline sample size")
    parser.add_argument("--batch", type=int, default=500, help="claim batch size")
    parser.add_argument(
        "--sessions", type=int, default=4, help="smtp-source sessions for the N-session ceiling"
    )
    parser.add_argument(
        "--rss-check", action="store_true", help="peak RSS at 10k vs 200k recipients"
    )
    parser.add_argument("--dkim", action="store_true", help="only: DKIM off vs on, one run")
    parser.add_argument(
        "--runs", type=int, default=0, help="only: N consecutive runs of the worker vs the ceiling"
    )
    parser.add_argument(
        "--series-connections", type=int, default=1, metavar="K",
        help="the --runs series with `funnel worker --connections K` (default 1)",
    )
    parser.add_argument(
        "--connections", action="store_true", help="only: 1, 2, 4 connections vs smtp-source -s N"
    )
    parser.add_argument(
        "--dkim-connections", type=int, default=0, metavar="K",
        help="only: DKIM off vs on through `funnel worker --connections K`",
    )
    parser.add_argument("--json", action="store_true", help="end with one JSON line of ratios")
    parser.add_argument("--rss-only", choices=("setup", "send"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    tools = find_postfix_tools()
    if tools is None:
        print(
            "bench/send.py: skipped: needs Postfix's smtp-sink and smtp-source. Install them with\n"
            "  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y postfix\n"
            "(Debian/Ubuntu; the binaries are in /usr/sbin, the postfix service itself is not needed)."
        )
        return
    if args.rss_only:
        rss_only(args.rss_only, args.n, args.port, args.batch, args.folder)
        return
    sink, port = start_sink(tools[0])
    try:
        if args.rss_check:
            rss_check(port, args.batch)
            return
        if args.dkim or args.runs or args.connections or args.dkim_connections:
            extra_passes(tools[1], port, args)
            return
        bench(tools[1], port, args)
    finally:
        sink.terminate()
        sink.wait()


def extra_passes(source_bin: str, port: int, args) -> None:
    """The issue-15 passes: DKIM off vs on, the N-run series, the connection scaling."""
    summary: dict = {}
    if args.dkim:
        summary.update(dkim_pass(port, args.n, args.batch))
    if args.dkim_connections:
        summary.update(dkim_connections_pass(port, args.n, args.batch, args.dkim_connections))
    if args.runs:
        k = args.series_connections
        print(f"{args.runs} consecutive runs, {args.n:,} recipients, `funnel worker --connections {k}`, "
              f"against the 1-session ceiling:")
        runs = series_pass(source_bin, port, args.n, args.batch, args.runs, k)
        summary["send_series_connections"] = k
        summary["send_share_worst"] = min(r["share"] for r in runs)
        summary["send_shares"] = [round(r["share"], 3) for r in runs]
    if args.connections:
        print(f"connections, {args.n:,} recipients each, `funnel worker --connections N`:")
        scaling = connections_pass(source_bin, port, args.n, args.batch)
        summary["send_scaling"] = {r["connections"]: round(r["rate"] / scaling[0]["rate"], 2)
                                   for r in scaling}  # fmt: skip
        summary["send_connection_shares"] = {r["connections"]: round(r["rate"] / r["ceiling"], 3)
                                             for r in scaling}  # fmt: skip
    if args.json:
        print(json.dumps({"bench": "send", **summary}))


def bench(source_bin: str, port: int, args) -> None:
    now = datetime.now(UTC)
    work = Path(tempfile.mkdtemp(prefix="funnel-bench-send-"))
    try:
        t0 = time.perf_counter()
        settings, db = make_broadcast(work / "main", args.n, port, args.batch, now)
        setup = time.perf_counter() - t0
        message = sample_message(db, settings, now)
        count = max(10_000, min(args.n, 30_000))
        one = source_ceiling(source_bin, port, message, count, 1)
        many = source_ceiling(source_bin, port, message, count, args.sessions)
        plain, raw = smtplib_loops(port, message, min(count, 10_000))

        ours = run_ours(settings, db, args.n)
        db.close()
        naive_settings, naive_db = make_broadcast(
            work / "naive", args.sample, port, args.batch, now
        )
        naive = run_naive(naive_settings, naive_db, args.sample)
        naive_db.close()
        clicks = click_pass(port, args.n, args.batch, now, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ratio = ours["rate"] / one
    speedup = ours["rate"] / naive
    print(
        f"broadcast to {args.n:,} subscribers, {len(message):,}-byte messages "
        f"(setup: {setup:.1f} s to create subscribers and queue)"
    )
    print("ceiling (Postfix smtp-source -> smtp-sink, our message bytes):")
    print(f"  1 session:  {one:8,.0f} msg/s")
    print(f"  {args.sessions} sessions: {many:8,.0f} msg/s")
    print("prebuilt messages over one connection (transport only):")
    print(f"  smtplib mail/rcpt/data: {plain:8,.0f} msg/s ({plain / one:.0%} of 1 session)")
    print(f"  our raw transaction:    {raw:8,.0f} msg/s ({raw / one:.0%} of 1 session)")
    print("our pipeline, end to end (due query -> render -> MIME -> SMTP -> ledger):")
    print(
        f"  {ours['rate']:8,.0f} msg/s over {ours['connections']} connection(s), batch {args.batch}; "
        f"{ratio:.0%} of the 1-session ceiling (target >= 40%: {'met' if ratio >= 0.4 else 'MISSED'})"
    )
    print(
        f"naive pipeline on {args.sample:,} (compose_stdlib, template compiled per message, "
        f"new connection and commit per message):"
    )
    print(
        f"  {naive:8,.0f} msg/s; ours is {speedup:.1f}x faster "
        f"(target >= 10x: {'met' if speedup >= 10 else 'MISSED'})"
    )
    print(
        f"CPU per stage ({ours['cpu']:.1f} s CPU in {ours['wall']:.1f} s wall; the sink's CPU is "
        "not ours):"
    )
    for line in ours["stages"].table(ours["cpu"], args.n):
        print(line)
    rate, cpu_us = clicks["rate"], clicks["cpu_us"]
    keep = rate[True] / rate[False]
    print(f"click rewriting, {args.n:,} recipients each, alternating slices of {clicks['chunk']:,}:")
    print(f"  off: {rate[False]:8,.0f} msg/s ({cpu_us[False]:.0f} µs CPU per message)")
    print(
        f"  on:  {rate[True]:8,.0f} msg/s ({cpu_us[True]:.0f} µs CPU per message) = {keep:.0%} "
        f"of off (target >= 90%: {'met' if keep >= 0.9 else 'MISSED'})"
    )
    print(f"peak RSS of this process: {peak_rss_mb():.0f} MB (run --rss-check for 10k vs 200k)")


if __name__ == "__main__":
    main()
