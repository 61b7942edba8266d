"""`funnel serve` as a real process, driven over real sockets.

Each test starts ``python -m cli serve`` on a free loopback port with a temp
database and FUNNEL_* settings, and talks HTTP to it (http.client, raw
sockets, or a real nginx in front).  The server runs on the real clock; a
stale worker heartbeat is a fixed date long past, written before the server
starts, so no test sleeps a minute.
"""

from __future__ import annotations

import http.client
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

import pytest
from conftest import free_port

from funnel import health
from funnel.db import connect

REPO = Path(__file__).resolve().parents[1]
CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')
NOFILE = 4096


def _raise_nofile(n: int = NOFILE) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n if hard == resource.RLIM_INFINITY else min(n, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class Served:
    """A running `funnel serve` subprocess; ``request`` is one HTTP exchange."""

    def __init__(self, env: dict[str, str], log: Path):
        self.port = free_port()
        self.log = log
        self._out = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--port", str(self.port), "--threads", "8"],
            cwd=REPO,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            preexec_fn=_raise_nofile,  # the child gets 4096 descriptors too
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"funnel serve exited early:\n{self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"funnel serve did not listen within 30 s:\n{self.output()}")

    def output(self) -> str:
        self._out.flush()
        return self.log.read_text()

    def request(self, method, path, body=None, headers=None, *, port=None, source=None, timeout=10):
        conn = http.client.HTTPConnection(
            "127.0.0.1",
            port or self.port,
            timeout=timeout,
            source_address=(source, 0) if source else None,
        )
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read().decode("utf-8", "replace")
        finally:
            conn.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return self.proc.returncode


@pytest.fixture
def serve_env(cli_env, settings):
    connect(settings.db, migrate=True).close()
    return {**os.environ, **cli_env, "FUNNEL_MIN_FORM_SECONDS": "0"}


@pytest.fixture
def start(serve_env, tmp_path):
    started: list[Served] = []

    def run(**extra: str) -> Served:
        env = {**serve_env, **{f"FUNNEL_{k.upper()}": str(v) for k, v in extra.items()}}
        served = Served(env, tmp_path / f"serve-{len(started)}.log")
        started.append(served)
        return served

    yield run
    for served in started:
        served.stop()


def funnel_send(env: dict[str, str]) -> None:
    """Run cron's `funnel send` once: it stamps the worker heartbeat."""
    r = subprocess.run(
        [sys.executable, "-m", "cli", "send", "-q"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr


def signup(served: Served, email: str, *, forwarded_for=None, port=None, source=None) -> int:
    """GET / for the cookie and form token, then POST /subscribe; returns the status."""
    status, headers, body = served.request("GET", "/", port=port, source=source)
    assert status == 200, body
    cookie = headers["Set-Cookie"].split(";", 1)[0]
    token = CSRF_RE.search(body).group(1)
    form = {"csrf": token, "email": email, "name": "", "tz": "", "consent": "yes", "website": ""}
    headers = {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}
    if forwarded_for:
        headers["X-Forwarded-For"] = forwarded_for
    status, _, _ = served.request(
        "POST", "/subscribe", urlencode(form), headers, port=port, source=source
    )
    return status


def consent_ips(db_path: str) -> dict[str, int]:
    db = connect(db_path)
    try:
        rows = db.execute("SELECT ip, COUNT(*) FROM consent GROUP BY ip").fetchall()
    finally:
        db.close()
    return dict(rows)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_an_idle_server_sleeps_instead_of_spinning(start):
    # waitress truncates its loop timeout to an int: 0.2 once became 0, and the
    # I/O loop then polled without waiting, burning a core with nobody connected.
    served = start()
    assert served.request("GET", "/healthz")[0] in (200, 503)
    time.sleep(0.5)
    before = _cpu_seconds(served.proc.pid)
    time.sleep(2.0)
    assert _cpu_seconds(served.proc.pid) - before < 0.2


# ----------------------------------------------------------------- survival
@pytest.mark.slow
def test_1100_idle_connections_do_not_kill_the_site(start, serve_env, settings):
    _raise_nofile()
    funnel_send(serve_env)  # a fresh worker heartbeat, so healthz can say "ok"
    served = start()
    assert served.request("GET", "/healthz")[0] == 200
    idle = []
    try:
        for _ in range(1100):
            idle.append(socket.create_connection(("127.0.0.1", served.port), timeout=5))
        # waitress accepts them all: its process holds more descriptors than
        # select() can watch (FD_SETSIZE = 1024), and lives.
        fds = Path(f"/proc/{served.proc.pid}/fd")
        deadline = time.monotonic() + 10
        while len(list(fds.iterdir())) <= 1100 and time.monotonic() < deadline:
            time.sleep(0.05)
        held = len(list(fds.iterdir()))
        print(f"funnel serve holds {held} descriptors")
        assert held > 1100
        assert served.proc.poll() is None
    finally:
        for sock in idle:
            sock.close()
    began = time.monotonic()
    status, headers, body = served.request("GET", "/healthz", timeout=5)
    took = time.monotonic() - began
    print(f"/healthz after 1,100 idle connections: {status} in {took * 1000:.0f} ms")
    assert (status, body) == (200, "ok\n")
    assert headers["Content-Type"].startswith("text/plain")
    assert served.proc.poll() is None, served.output()
    assert "filedescriptor out of range" not in served.output()


def test_healthz_says_503_when_the_worker_is_stale_and_200_after_a_send(
    start, serve_env, settings
):
    db = connect(settings.db)
    health.beat(db, "worker", datetime(2020, 1, 1, tzinfo=UTC))  # long before any real "now"
    db.close()
    served = start()
    status, _, body = served.request("GET", "/healthz")
    assert status == 503
    assert body.startswith("worker: last tick ") and "funnel worker" in body
    funnel_send(serve_env)
    assert served.request("GET", "/healthz")[:3:2] == (200, "ok\n")


def test_healthz_says_503_when_no_worker_ever_ticked(start):
    status, _, body = start().request("GET", "/healthz")
    assert status == 503 and body.startswith("worker: has never ticked")


def test_healthz_can_leave_the_worker_out(start):
    served = start(healthz_worker_seconds=0)
    assert served.request("GET", "/healthz")[:3:2] == (200, "ok\n")


def _tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "funnel-test", str(path)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        if os.environ.get("CI") == "true" and os.geteuid() == 0:
            pytest.fail(f"cannot mount a tmpfs: {r.stderr.strip()}")
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip() or r.returncode})")


def test_healthz_says_503_when_the_disk_is_full(start, serve_env, tmp_path):
    disk = tmp_path / "disk"
    _tmpfs(disk, "8m")
    try:
        db_path = str(disk / "funnel.db")
        env = {**serve_env, "FUNNEL_DB": db_path, "FUNNEL_HEALTHZ_MIN_FREE_MB": "2"}
        connect(db_path, migrate=True).close()
        funnel_send(env)
        served = start(db=db_path, healthz_min_free_mb=2)
        assert served.request("GET", "/healthz")[:3:2] == (200, "ok\n")
        filler = disk / "filler"
        with filler.open("wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        status, _, body = served.request("GET", "/healthz")
        assert status == 503 and body.startswith("disk: "), body
        filler.unlink()
        assert served.request("GET", "/healthz")[:3:2] == (200, "ok\n")
        served.stop()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_healthz_problem_when_the_database_takes_no_write(settings, tmp_path):
    connect(settings.db, migrate=True).close()
    import sqlite3

    import sqlite_utils

    ro = sqlite_utils.Database(sqlite3.connect(f"file:{settings.db}?mode=ro", uri=True))
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    found = health.problems(ro, settings.replace(healthz_worker_seconds=0), now)
    assert len(found) == 1 and found[0].startswith("database: not writable (")
    assert "read-only" in found[0]


class _PoisonedChannel:
    """A channel whose poll registration raises: the waitress loop itself dies."""

    accepting = False

    def readable(self):
        raise RuntimeError("poisoned channel")

    def close(self):
        pass


def test_a_dead_server_thread_ends_funnel_serve_with_status_1(cli_env, monkeypatch):
    from click.testing import CliRunner

    import cli
    import web.serve

    real = web.serve.WebServer._create

    def poisoned(waitress, app, s, host, port, threads):
        server = real(waitress, app, s, host, port, threads)
        server._map[-1] = _PoisonedChannel()
        return server

    monkeypatch.setattr(web.serve.WebServer, "_create", staticmethod(poisoned))
    began = time.monotonic()
    r = CliRunner().invoke(cli.main, ["serve", "--port", "0"])
    assert r.exit_code == 1, r.output
    last = r.output.strip().splitlines()[-1]
    assert last == (
        "Error: web server thread stopped (RuntimeError: poisoned channel); "
        "exiting so the service manager restarts funnel"
    )
    print(f"funnel serve (loop poisoned at start) exited 1 after {time.monotonic() - began:.1f} s")


# ----------------------------------------------------------------- trusted proxies
def test_trusted_proxy_the_forwarded_address_is_the_reader(start, settings):
    served = start(trusted_proxies=1)
    codes = [signup(served, f"a{i}@example.com", forwarded_for="198.51.100.7") for i in range(31)]
    assert codes == [303] * 30 + [429]
    assert signup(served, "b@example.com", forwarded_for="198.51.100.8") == 303
    assert consent_ips(settings.db) == {"198.51.100.7": 30, "198.51.100.8": 1}


def test_without_trusted_proxies_the_header_is_ignored(start, settings):
    served = start(trusted_proxies=0)
    codes = [signup(served, f"a{i}@example.com", forwarded_for="198.51.100.7") for i in range(31)]
    assert codes == [303] * 30 + [429]
    # Another "forwarded" address is still the same client: 127.0.0.1.
    assert signup(served, "b@example.com", forwarded_for="198.51.100.8") == 429
    assert consent_ips(settings.db) == {"127.0.0.1": 30}


NGINX_CONF = """
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 128; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
        }}
    }}
}}
"""


def _nginx() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is not installed (CI installs it in .ci/run)")
        pytest.skip("nginx is not installed")
    return found


@pytest.mark.slow
def test_behind_real_nginx_each_reader_is_limited_alone(start, settings, tmp_path):
    nginx = _nginx()
    served = start(trusted_proxies=1)
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, upstream=served.port))
    proc = subprocess.Popen(
        [nginx, "-c", str(conf), "-p", str(prefix), "-e", str(prefix / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, (prefix / "error.log").read_text()
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.05)
        # Reader A connects from 127.0.0.2 and forges X-Forwarded-For on every
        # post; nginx appends the real address and funnel trusts only that hop.
        codes = [
            signup(
                served,
                f"a{i}@example.com",
                forwarded_for=f"203.0.113.{i}",
                port=port,
                source="127.0.0.2",
            )
            for i in range(31)
        ]
        assert codes == [303] * 30 + [429]
        assert signup(served, "b@example.com", port=port, source="127.0.0.3") == 303
        assert consent_ips(settings.db) == {"127.0.0.2": 30, "127.0.0.3": 1}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
